"""What a password costs the server: each hash is a quarter of a second of CPU, so
it is made with no transaction open (no row lock waits on it), and the writes that
make one count against a rate of their own, per client and per account."""

import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from django.db import connection
from rest_framework.test import APIClient

from tests.helpers import FailingUserUpdates, grant_user_permissions
from users import services
from users.models import User

# Whether a transaction was open each time RecordingHasher hashed.
hashed_in_transaction: list[bool] = []


class RecordingHasher(MD5PasswordHasher):
    """A real hasher (Django's MD5, the test settings' own), noting whether a
    transaction was open when it hashed."""

    algorithm = "recording_md5"

    def encode(self, password, salt):
        hashed_in_transaction.append(connection.in_atomic_block)
        return super().encode(password, salt)


@pytest.fixture
def recording_hasher(settings):
    settings.PASSWORD_HASHERS = ["tests.api.test_password_cost.RecordingHasher"]
    hashed_in_transaction.clear()
    return hashed_in_transaction


class TestHashBeforeTheLock:
    """The hash is made before the write's transaction opens, so a slow hash never
    holds the row lock (failed on the previous main: an update hashed under
    ``select_for_update``)."""

    def test_an_api_update_hashes_with_no_transaction_open(
        self, transactional_db, recording_hasher, staff_client, make_user
    ):
        target = make_user(username="target", email="target@example.com")
        response = staff_client.patch(
            f"/api/user/{target.id}", {"password": "a-New-passphrase-8"}, format="json"
        )

        assert response.status_code == 200, response.content
        assert recording_hasher == [False]
        assert User.objects.get(pk=target.id).check_password("a-New-passphrase-8")

    def test_an_api_create_hashes_with_no_transaction_open(
        self, transactional_db, recording_hasher, staff_client
    ):
        response = staff_client.post(
            "/api/user",
            {"username": "new", "email": "new@example.com", "password": "a-New-passphrase-8"},
            format="json",
        )

        assert response.status_code == 201, response.content
        assert recording_hasher == [False]

    def test_the_admin_password_change_hashes_with_no_transaction_open(
        self, transactional_db, recording_hasher, admin_client, make_user
    ):
        target = make_user(username="target", email="target@example.com")
        recording_hasher.clear()  # admin_client's own superuser was made with a password
        response = admin_client.post(
            f"/admin/users/user/{target.id}/password/",
            {"password1": "a-New-passphrase-8", "password2": "a-New-passphrase-8"},
        )

        assert response.status_code == 302
        assert recording_hasher == [False]

    def test_an_update_retried_for_a_conflict_hashes_once(
        self, transactional_db, recording_hasher, staff_client, make_user
    ):
        """The database rolled the write back twice (a deadlock): the transaction
        runs again, the hash made before it is used again (failed on the previous
        main: three hashes)."""
        target = make_user(username="target", email="target@example.com")
        recording_hasher.clear()
        failures = FailingUserUpdates(1213, times=services.WRITE_ATTEMPTS - 1)

        with connection.execute_wrapper(failures):
            response = staff_client.patch(
                f"/api/user/{target.id}", {"password": "a-New-passphrase-8"}, format="json"
            )

        assert response.status_code == 200, response.content
        assert failures.raised == services.WRITE_ATTEMPTS - 1
        assert recording_hasher == [False]

    def test_an_update_the_actor_may_not_make_costs_no_hash(
        self, transactional_db, recording_hasher, staff_client, make_user
    ):
        """Only a superuser changes a superuser: the refusal comes before the hash."""
        boss = make_user(username="boss", email="boss@example.com", is_superuser=True)
        response = staff_client.patch(
            f"/api/user/{boss.id}", {"password": "a-New-passphrase-8"}, format="json"
        )

        assert response.status_code == 403
        assert recording_hasher == []


class TestPasswordHashRate:
    """Writes that hash count against ``password_hash`` as well as the client's rate
    (failed on the previous main: a password write cost 1, like a cached read)."""

    def test_password_writes_exhaust_their_budget_where_reads_do_not(
        self, rates, staff_client, make_user
    ):
        rates(password_hash="3/min")
        target = make_user(username="target", email="target@example.com")
        url = f"/api/user/{target.id}"

        reads = [staff_client.get(url).status_code for _ in range(5)]
        writes = [
            staff_client.patch(url, {"password": f"a-New-passphrase-{n}"}, format="json")
            for n in range(5)
        ]

        assert reads == [200] * 5
        assert [w.status_code for w in writes] == [200, 200, 200, 429, 429]
        assert 0 < int(writes[-1]["Retry-After"]) <= 60
        assert staff_client.patch(url, {"first_name": "Ann"}, format="json").status_code == 200

    def test_clients_share_an_accounts_budget(self, rates, staff_client, make_user):
        """Two staff tokens, each within its own rate, cannot together hash one
        account's password past its rate."""
        rates(password_hash="2/min")
        target = make_user(username="target", email="target@example.com")
        other = grant_user_permissions(
            make_user(username="staff2", email="staff2@example.com", is_staff=True)
        )
        other_client = APIClient()
        other_client.force_authenticate(other)
        url = f"/api/user/{target.id}"

        statuses = [
            client.patch(url, {"password": f"a-New-passphrase-{n}"}, format="json").status_code
            for n, client in enumerate([staff_client, other_client, staff_client, other_client])
        ]

        assert statuses == [200, 200, 429, 429]

    def test_clients_refused_the_write_spend_no_accounts_budget(
        self, rates, anonymous_client, reader_client, staff_client, make_user
    ):
        """An anonymous client, or one without the permission, is refused before
        its write counts against the account: neither can stop the account's
        password from being changed (failed on the previous main: the refused
        writes counted, the third was a 429 already, and so was the staff's)."""
        rates(password_hash="2/min")
        target = make_user(username="target", email="target@example.com")
        url = f"/api/user/{target.id}"

        refused = [
            client.patch(url, {"password": f"a-New-passphrase-{n}"}, format="json").status_code
            for n, client in enumerate([anonymous_client, reader_client] * 2)
        ]
        malformed = anonymous_client.patch(url, "{", content_type="application/json")
        changed = staff_client.patch(url, {"password": "a-New-passphrase-9"}, format="json")

        assert refused == [401, 403, 401, 403]
        assert malformed.status_code == 401
        assert changed.status_code == 200, changed.content

    def test_creates_with_a_password_count_per_client(self, rates, staff_client):
        rates(password_hash="2/min")
        statuses = [
            staff_client.post(
                "/api/user",
                {"username": f"u{n}", "email": f"u{n}@example.com", "password": "a-Long-pass-9"},
                format="json",
            ).status_code
            for n in range(3)
        ]
        without = staff_client.post(
            "/api/user", {"username": "nopw", "email": "nopw@example.com"}, format="json"
        )

        assert statuses == [201, 201, 429]
        assert without.status_code == 201

    def test_the_admin_password_change_counts_per_account(self, rates, admin_client, make_user):
        rates(password_hash="2/min")
        target = make_user(username="target", email="target@example.com")
        statuses = [
            admin_client.post(
                f"/admin/users/user/{target.id}/password/",
                {"password1": f"a-New-passphrase-{n}", "password2": f"a-New-passphrase-{n}"},
            ).status_code
            for n in range(3)
        ]

        assert statuses == [302, 302, 429]

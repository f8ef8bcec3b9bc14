"""Input an attacker chooses: cursors, Unicode look-alikes, passwords with spaces,
deeply nested JSON, and lookups smuggled into the admin's URL."""

import io
import threading
import time
from unittest import mock

import pytest
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import RequestFactory
from rest_framework.authtoken.models import Token

from tests.helpers import blocked_user_inserts, token_client
from users import identity, services
from users.models import LOOKALIKE_MESSAGE, SKELETON_FIELDS, User, kept_apart


def _create(staff_client, username: str, email: str, **fields):
    body = {"username": username, "email": email, **fields}
    return staff_client.post("/api/user", body, format="json")


# A name, and one that looks like it (users.identity): each refused beside the other.
LOOK_ALIKES = [
    ("admin", "adm\u0131n"),  # LATIN SMALL LETTER DOTLESS I
    ("admin", "\u0251dmin"),  # LATIN SMALL LETTER ALPHA
    ("Admin", "adm\u0131n"),  # whichever case the other name is stored in
    ("ADMIN", "\u0251dmin"),
    ("admin", "\u00e1dm\u0131n"),  # an accent too, which the collation ignores
    ("paypal", "paypa1"),  # DIGIT ONE
    ("paypal", "paypaI"),  # LATIN CAPITAL LETTER I
    ("Ivan", "lvan"),
    ("admIn", "admln"),
    ("root", "r00t"),  # DIGIT ZERO
    ("ace", "\u0430\u0441\u0435"),  # written wholly in Cyrillic
    ("kate", "\u039a\u0391\u03a4\u0395"),  # GREEK CAPITALS: "KATE", which is "kate"
    ("tom", "\u0422\u041e\u041c"),  # CYRILLIC CAPITALS: "TOM"
    ("Mike", "\u039c\u0399\u039a\u0395"),  # GREEK CAPITALS: "MIKE"
]


class TestCursor:
    @pytest.mark.parametrize(
        "cursor",
        ["cD1hYmM=", "cD0xJnI9MQ==", "cD0tMQ==", "cD05OTk5OTk5OTk5OTk5OTk5OTk5OTk5OQ==",
         "!!!", "cj14", "cD0=", "bz0xJnA9MQ=="],
    )  # fmt: skip
    def test_any_cursor_is_a_200_or_a_json_4xx(self, reader_client, cursor):
        response = reader_client.get(f"/api/user?cursor={cursor}")

        assert response.status_code == 200 or 400 <= response.status_code < 500
        assert response["Content-Type"] == "application/json"
        assert response.json()


class TestUnicodeIdentity:
    def test_the_api_stores_a_username_as_the_login_form_reads_it(self, staff_client, db):
        created = _create(
            staff_client, "x\U0001d400", "bold@example.com", password="a-Long-passphrase-7"
        )

        assert created.status_code == 201, created.content
        assert created.json()["username"] == "xA"
        request = RequestFactory().post("/api-auth/login/")
        assert authenticate(request, username="x\U0001d400", password="a-Long-passphrase-7")

    def test_a_login_as_a_look_alike_does_not_open_another_account(self, staff_client, db):
        first = _create(staff_client, "xA", "plain@example.com", password="a-Long-passphrase-7")
        assert first.status_code == 201
        refused = _create(staff_client, "x\U0001d400", "bold@example.com")

        assert refused.status_code == 400
        assert "username" in refused.json()

    def test_characters_outside_the_basic_plane_are_told_apart(self, staff_client, db):
        first = _create(staff_client, "名\U00020000", "a@example.com")
        second = _create(staff_client, "名\U00020001", "b@example.com")
        gothic = _create(staff_client, "\U00010330\U00010331", "c@example.com")
        other_gothic = _create(staff_client, "\U00010331\U00010330", "d@example.com")

        assert [r.status_code for r in (first, second, gothic, other_gothic)] == [201] * 4, [
            r.content for r in (first, second, gothic, other_gothic)
        ]

    @pytest.mark.parametrize(
        "look_alike",
        # Cyrillic a, Cyrillic e, Greek capital alpha, Cyrillic i in Latin names
        ["\u0430lice", "alic\u0435", "\u0391lice", "al\u0456ce"],
    )
    def test_a_name_mixing_scripts_is_refused(self, staff_client, db, look_alike):
        assert _create(staff_client, "alice", "alice@example.com").status_code == 201
        response = _create(staff_client, look_alike, "other@example.com")

        assert response.status_code == 400
        assert "username" in response.json()

    @pytest.mark.parametrize(
        "name", ["Zoë", "名前", "Ελένη", "Пётр", "ひらがなカタカナ漢字", "user_01"]
    )
    def test_a_name_in_one_script_is_accepted(self, staff_client, db, name):
        assert _create(staff_client, name, "n@example.com").status_code == 201

    def test_an_idn_domain_and_its_punycode_are_one_address(self, staff_client, db):
        first = _create(staff_client, "u1", "user@bücher.example")
        second = _create(staff_client, "u2", "user@xn--bcher-kva.example")
        upper = _create(staff_client, "u3", "user@BÜCHER.example")

        assert first.status_code == 201
        assert first.json()["email"] == "user@bücher.example"
        assert second.status_code == 400 and "email" in second.json()
        assert upper.status_code == 400 and "email" in upper.json()

    @pytest.mark.parametrize(
        ("existing", "look_alike"), LOOK_ALIKES + [(b, a) for a, b in LOOK_ALIKES]
    )
    def test_a_name_that_looks_like_another_is_refused(
        self, staff_client, db, existing, look_alike
    ):
        assert _create(staff_client, existing, "first@example.com").status_code == 201
        response = _create(staff_client, look_alike, "second@example.com")

        assert response.status_code == 400
        assert response.json() == {"username": [LOOKALIKE_MESSAGE]}

    @pytest.mark.parametrize(("existing", "other"), [("admin", "admln"), ("ali", "all")])
    def test_names_that_do_not_look_alike_are_accepted(self, staff_client, db, existing, other):
        """Small i and small l are not confusable; refusing these would take treating i
        and l as one letter (users.identity)."""
        assert _create(staff_client, existing, "first@example.com").status_code == 201
        assert _create(staff_client, other, "second@example.com").status_code == 201

    def test_an_accented_spelling_is_still_the_same_name(self, staff_client, db):
        assert _create(staff_client, "admin", "first@example.com").status_code == 201
        response = _create(staff_client, "\u00e1dmin", "second@example.com")

        assert response.json() == {"username": ["A user with that username already exists."]}

    def test_a_name_mixing_scripts_is_refused_as_such(self, staff_client, db):
        response = _create(staff_client, "\u0430dmin", "first@example.com")

        assert response.json()["username"] == [identity.SingleScriptValidator.message]

    def test_a_rename_to_a_look_alike_is_refused(self, staff_client, db):
        assert _create(staff_client, "admin", "first@example.com").status_code == 201
        other = _create(staff_client, "other", "second@example.com").json()
        response = staff_client.patch(
            f"/api/user/{other['id']}", {"username": "\u0251dmin"}, format="json"
        )

        assert response.status_code == 400
        assert response.json() == {"username": [LOOKALIKE_MESSAGE]}
        assert User.objects.get(pk=other["id"]).username == "other"

    @pytest.mark.parametrize("spelling", ["ADMIN", "adm\u0131n", "Adm\u0131n"])
    def test_a_user_may_take_a_look_alike_of_its_own_name(self, staff_client, db, spelling):
        created = _create(staff_client, "admin", "first@example.com").json()
        response = staff_client.patch(
            f"/api/user/{created['id']}", {"username": spelling}, format="json"
        )

        assert response.status_code == 200, response.content
        assert User.objects.get(pk=created["id"]).username == spelling

    def test_createsuperuser_refuses_a_look_alike(self, transactional_db, make_user):
        make_user(username="admin", email="admin@example.com")
        with (
            mock.patch.dict("os.environ", {"DJANGO_SUPERUSER_PASSWORD": "a-Long-passphrase-7"}),
            pytest.raises(CommandError, match=LOOKALIKE_MESSAGE),
        ):
            call_command(
                "createsuperuser", "--no-input", "--username", "adm\u0131n",
                "--email", "boss@example.com", stdout=io.StringIO(),
            )  # fmt: skip

        assert not User.objects.filter(email="boss@example.com").exists()

    def test_of_two_concurrent_look_alikes_the_database_refuses_the_second(
        self, transactional_db, staff
    ):
        """The loser's check runs while the winner's row is uncommitted and sees
        nothing; its INSERT waits on the winner's key in a skeleton index, and fails
        once the winner commits: a 400 on the username, and one user."""
        client = token_client(staff)
        winner_inserted, release_winner = threading.Event(), threading.Event()

        def winner():
            try:
                with transaction.atomic():
                    services.user_create(actor=None, username="admin", email="a@example.com")
                    winner_inserted.set()
                    release_winner.wait(timeout=60)
            finally:
                connection.close()

        results = []

        def loser():
            try:
                response = _create(client, "adm\u0131n", "b@example.com")
                results.append((response.status_code, response.json()))
            finally:
                connection.close()

        threads = [threading.Thread(target=winner), threading.Thread(target=loser)]
        threads[0].start()
        assert winner_inserted.wait(timeout=60)
        threads[1].start()
        deadline = time.monotonic() + 60
        while blocked_user_inserts() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        waited = blocked_user_inserts()
        release_winner.set()
        for thread in threads:
            thread.join(timeout=60)

        assert waited == 1, "the look-alike's INSERT should wait on the winner's key"
        assert results == [(400, {"username": [LOOKALIKE_MESSAGE]})]
        assert list(User.objects.exclude(pk=staff.pk).values_list("username", flat=True)) == [
            "admin"
        ]

    def test_the_migration_keeps_users_whose_names_already_look_alike(self, transactional_db):
        """The first of each group (the lowest id) keeps its keys and still blocks new
        look-alikes; the others' keys are made unique by their ids, and stay so when
        they are saved."""
        executor = MigrationExecutor(connection)
        before = [("users", "0004_binlog_position")]
        executor.migrate(before)
        old_user = executor.loader.project_state(before).apps.get_model("users", "User")
        names = ["admin", "adm\u0131n", "\u0251dmin", "Ivan", "lvan", "bob"]
        ids = {
            name: old_user.objects.create(username=name, email=f"{n}@example.com").pk
            for n, name in enumerate(names)
        }
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes("users"))

        def apart(key: str, name: str) -> str:
            return kept_apart(key, ids[name])

        assert {
            user.username: (user.username_skeleton, user.username_folded_skeleton)
            for user in User.objects.all()
        } == {
            "admin": ("adrnin", "adrnin"),
            "adm\u0131n": (apart("adrnin", "adm\u0131n"), apart("adrnin", "adm\u0131n")),
            "\u0251dmin": (apart("adrnin", "\u0251dmin"), apart("adrnin", "\u0251dmin")),
            "Ivan": ("lvan", "ivan"),
            "lvan": (apart("lvan", "lvan"), "lvan"),
            "bob": ("bob", "bob"),
        }
        # The third key (migration 0006), of the upper-cased names: "ADMIN" thrice.
        assert User.objects.get(username="adm\u0131n").username_upper_skeleton == apart(
            "ADMlN", "adm\u0131n"
        )
        kept = ids["adm\u0131n"]
        services.user_update(
            actor=None, user_id=kept, data={"username": "adm\u0131n", "first_name": "Kept"}
        )
        User.objects.get(pk=kept).validate_unique()  # as the admin's change form does
        assert User.objects.values_list(*SKELETON_FIELDS).get(pk=kept) == (
            apart("adrnin", "adm\u0131n"), apart("adrnin", "adm\u0131n"),
            apart("ADMlN", "adm\u0131n"),
        )  # fmt: skip
        with pytest.raises(ValidationError) as refused:
            services.user_create(actor=None, username="\u0251dm\u0131n", email="new@example.com")
        assert refused.value.message_dict == {"username": [LOOKALIKE_MESSAGE]}

    def test_a_long_name_with_a_longer_skeleton_is_stored(self, staff_client, db):
        """A Hangul syllable's skeleton has up to seven characters: the key is cut to
        what a unique index holds, never a 500."""
        name = "\ucc04" * 150
        assert len(identity.skeleton(name)) > identity.SKELETON_LENGTH

        assert _create(staff_client, name, "long@example.com").status_code == 201

    def test_the_skeleton_is_unicodes(self):
        """Mathematical letters, a y with a loop and a script l read "paypal"; the
        same as ICU's ``SpoofChecker.getSkeleton`` gives."""
        assert identity.skeleton("\U0001d52d\U0001d4b6\u1eff\U0001d561\U0001d552\u2113") == (
            "paypal"
        )
        assert identity.skeleton("m\u00e1") == "rna\u0301"

    def test_the_admin_and_createsuperuser_normalize_the_same_way(self, db):
        user = User.objects.create_user(
            username="y\U0001d400", email="someone@XN--BCHER-KVA.example"
        )
        assert (user.username, user.email) == ("yA", "someone@bücher.example")


class TestPasswords:
    def test_spaces_around_a_password_are_kept(self, staff_client, db):
        password = "  spaced-Passphrase-9  "
        created = _create(staff_client, "spacey", "spacey@example.com", password=password)

        assert created.status_code == 201
        user = User.objects.get(username="spacey")
        assert user.check_password(password)
        assert not user.check_password(password.strip())

    def test_a_new_password_revokes_the_users_token(
        self, transactional_db, staff_client, make_user
    ):
        user = make_user(username="holder", email="holder@example.com")
        api = token_client(user)
        assert api.get(f"/api/user/{user.id}").status_code == 200

        response = staff_client.patch(
            f"/api/user/{user.id}", {"password": "a-New-passphrase-31"}, format="json"
        )

        assert response.status_code == 200
        assert api.get(f"/api/user/{user.id}").status_code == 401
        assert not Token.objects.filter(user=user).exists()

    def test_a_rehash_when_the_password_is_checked_keeps_the_token(self, db, make_user, settings):
        """Django rehashes a correct password whose hasher is no longer the preferred one
        (a new default after an upgrade) when it checks it, and saves the new hash:
        that is no change of password, and the first login after it revokes nothing."""
        settings.PASSWORD_HASHERS = [
            "django.contrib.auth.hashers.MD5PasswordHasher",
            "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        ]
        user = make_user(username="holder", email="holder@example.com")
        old_hasher = PBKDF2PasswordHasher()
        old_hash = old_hasher.encode("an-Old-passphrase-7", old_hasher.salt(), iterations=1_000)
        User.objects.filter(pk=user.pk).update(password=old_hash)
        Token.objects.get_or_create(user=user)

        assert User.objects.get(pk=user.pk).check_password("an-Old-passphrase-7")

        assert User.objects.get(pk=user.pk).password.startswith("md5$")
        assert Token.objects.filter(user=user).exists()

    def test_other_changes_keep_the_token(self, transactional_db, staff_client, make_user):
        user = make_user(username="holder", email="holder@example.com")
        api = token_client(user)
        staff_client.patch(f"/api/user/{user.id}", {"first_name": "New"}, format="json")

        assert api.get(f"/api/user/{user.id}").status_code == 200


class TestBodies:
    @pytest.mark.parametrize("depth", [2_000, 20_000])
    def test_deeply_nested_json_is_a_400(self, staff_client, depth, caplog):
        body = "[" * depth + "]" * depth
        response = staff_client.post("/api/user", body, content_type="application/json")

        assert response.status_code == 400
        assert response.json()["detail"]
        assert not any(record.exc_info for record in caplog.records)

    def test_a_deep_object_is_a_400_too(self, staff_client):
        body = '{"a":' * 5000 + "1" + "}" * 5000
        response = staff_client.post("/api/user", body, content_type="application/json")

        assert response.status_code == 400


class TestAdminLookups:
    @pytest.fixture
    def root_client(self, client, make_user):
        root = make_user(
            username="root", email="root@example.com", is_staff=True, is_superuser=True
        )
        client.force_login(root)
        return client

    @pytest.mark.parametrize(
        "query",
        ["username__regex=(", "password__startswith=pbkdf2", "email__iregex=[",
         "auth_token__key__startswith=a", "id__in=a,b"],
    )  # fmt: skip
    def test_lookups_outside_the_filters_are_refused(self, root_client, query):
        response = root_client.get(f"/admin/users/user/?{query}")

        assert response.status_code == 400 or (
            response.status_code == 302 and "e=1" in response["Location"]
        ), response.status_code

    def test_the_filters_still_work(self, root_client, make_user):
        make_user(username="gone", email="gone@example.com", is_active=False)
        response = root_client.get("/admin/users/user/?is_active__exact=0")

        assert response.status_code == 200
        assert b"gone" in response.content

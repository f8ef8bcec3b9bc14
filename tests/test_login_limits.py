"""Password guessing at the two login forms: failed logins are limited per account and
per client address, counted in Redis, refused before any password is hashed, and
an operator can lift a lockout."""

import io

import pytest
from django.conf import settings
from django.contrib.auth.hashers import MD5PasswordHasher
from django.core.management import call_command
from django.test import Client

from users import metrics

PASSWORD = "a-Long-passphrase-7"
LOGIN_PAGES = ["/admin/login/", "/api-auth/login/"]


@pytest.fixture
def limits(settings):
    settings.AXES_FAILURE_LIMIT = 3


@pytest.fixture
def root(make_user):
    user = make_user(username="root", email="root@example.com", is_staff=True, is_superuser=True)
    user.set_password(PASSWORD)
    user.save()
    return user


def _login(page: str, username: str, password: str, address: str = "10.0.0.1"):
    return Client(REMOTE_ADDR=address).post(page, {"username": username, "password": password})


def _logged_in(response) -> bool:
    return response.status_code == 302 and "sessionid" in response.cookies


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_an_account_is_locked_after_the_limit_from_any_address(limits, root, page):
    for n in range(3):
        assert not _logged_in(_login(page, "root", "wrong", address=f"10.0.1.{n}"))

    locked = _login(page, "root", PASSWORD, address="10.0.2.1")

    assert locked.status_code == 429
    assert b"too many" in locked.content.lower() or b"locked" in locked.content.lower()


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_an_address_is_locked_after_the_limit_whatever_the_names(limits, root, page):
    for name in ("alice", "bob", "carol"):
        _login(page, name, "wrong", address="10.0.3.1")

    assert _login(page, "root", PASSWORD, address="10.0.3.1").status_code == 429
    assert _logged_in(_login(page, "root", PASSWORD, address="10.0.3.2"))


def test_other_spellings_of_a_name_count_as_that_name(limits, root):
    for n, spelling in enumerate(["ROOT", "Root", "\uff52oot"]):  # FULLWIDTH r: r under NFKC
        _login("/admin/login/", spelling, "wrong", address=f"10.0.4.{n}")

    assert _login("/admin/login/", "root", PASSWORD, address="10.0.4.200").status_code == 429


def test_a_locked_attempt_hashes_no_password(limits, root, monkeypatch):
    for _ in range(3):
        _login("/admin/login/", "root", "wrong")
    verified = []
    verify = MD5PasswordHasher.verify
    monkeypatch.setattr(
        MD5PasswordHasher, "verify", lambda self, *a: verified.append(1) or verify(self, *a)
    )

    assert _login("/admin/login/", "root", PASSWORD).status_code == 429
    assert verified == []


def test_the_counts_live_in_redis(limits, root, redis_client):
    _login("/admin/login/", "root", "wrong")

    keys = list(redis_client.scan_iter(match=f"{settings.TEST_RUN_PREFIX}*axes*"))
    assert keys


def test_an_operator_lifts_a_lockout(limits, root):
    for _ in range(3):
        _login("/admin/login/", "Root", "wrong")
    assert _login("/admin/login/", "root", PASSWORD, address="10.0.9.9").status_code == 429

    out = io.StringIO()
    call_command("unlock_login", "--username", "ROOT", "--address", "10.0.0.1", stdout=out)

    assert "root" in out.getvalue()
    assert _logged_in(_login("/admin/login/", "root", PASSWORD))


def test_failures_and_lockouts_are_counted_in_the_metrics(limits, root):
    def sample(name: str) -> float:
        return metrics.REGISTRY.get_sample_value(name) or 0.0

    failures, lockouts = (
        sample("usersvc_login_failures_total"),
        sample("usersvc_login_lockouts_total"),
    )
    for _ in range(4):
        _login("/admin/login/", "root", "wrong")

    assert sample("usersvc_login_failures_total") - failures >= 3
    assert sample("usersvc_login_lockouts_total") - lockouts >= 1

"""Password guessing and password hashing at the two login forms: failed logins lock
an account and a client address, attempts of any outcome are limited by a rate,
all of it counted in Redis (in each process's memory while Redis does not
answer), refused before any password is hashed; operators list and lift lockouts.

Each class holds one way around the limits that worked before (the points of
issue 19 and 22 in its docstring), on both login forms where the form matters.
"""

import concurrent.futures
import io
import re
import threading
import time

import pytest
from django.conf import settings
from django.contrib.auth.hashers import MD5PasswordHasher
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections
from django.test import Client
from redis.exceptions import OutOfMemoryError

from tests.helpers import (
    command_environment,
    grant_user_permissions,
    manage_py,
    one_server_caches,
    redis_nodes_holding,
)
from tests.servers import RedisServer
from users import metrics
from users.cache import keys
from users.logins import limits as login_limits
from users.logins import lockouts as login_lockouts
from users.logins import memory as login_memory
from users.logins.accounts import account_key
from users.logins.addresses import client_address
from users.models import User

PASSWORD = "a-Long-passphrase-7"
LOGIN_PAGES = ["/admin/login/", "/api-auth/login/"]
LOCKOUTS_PAGE = "/admin/users/user/login-lockouts/"


@pytest.fixture(autouse=True)
def _fresh_process_counters(monkeypatch):
    """What a test counts in process memory (Redis away) stays in that test."""
    monkeypatch.setattr(login_memory, "process_counters", login_memory.ProcessCounters())


@pytest.fixture
def limits(settings):
    """Three failures lock; the rates high enough that only their own tests meet them."""
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_LOCKOUT_MINUTES = 15
    settings.LOGIN_RATE_ACCOUNT = "1000/min"
    settings.LOGIN_RATE_ADDRESS = "1000/min"
    settings.CLIENT_IPV6_PREFIX = 64
    return settings


def _make(make_user, username: str, **fields):
    """A user who may log in at both forms (the admin's takes staff only)."""
    fields.setdefault("is_staff", True)
    user = make_user(username=username, email=f"{username}@example.com", **fields)
    user.set_password(PASSWORD)
    user.save()
    return user


@pytest.fixture
def root(make_user):
    return _make(make_user, "root", is_staff=True, is_superuser=True)


@pytest.fixture
def admin(make_user):
    return _make(make_user, "admin", is_staff=True, is_superuser=True)


def _login(page: str, username: str, password: str, address: str = "10.0.0.1", **headers):
    return Client(REMOTE_ADDR=address, **headers).post(
        page, {"username": username, "password": password}
    )


def _logged_in(response) -> bool:
    return response.status_code == 302 and "sessionid" in response.cookies


def _refused(response) -> bool:
    """A 429 with a page that says why and when to come back."""
    return (
        response.status_code == 429
        and int(response["Retry-After"]) > 0
        and b"too many" in response.content.lower()
    )


@pytest.fixture
def hashes(monkeypatch) -> list:
    """Every password hash verified (the test settings hash with MD5)."""
    verified = []
    verify = MD5PasswordHasher.verify
    monkeypatch.setattr(
        MD5PasswordHasher, "verify", lambda self, *a: verified.append(1) or verify(self, *a)
    )
    return verified


class TestFailures:
    @pytest.mark.parametrize("page", LOGIN_PAGES)
    def test_an_account_is_locked_after_the_limit_from_any_address(self, limits, root, page):
        for n in range(3):
            assert not _logged_in(_login(page, "root", "wrong", address=f"10.0.1.{n}"))

        assert _refused(_login(page, "root", PASSWORD, address="10.0.2.1"))

    @pytest.mark.parametrize("page", LOGIN_PAGES)
    def test_an_address_is_locked_after_the_limit_whatever_the_names(self, limits, root, page):
        for name in ("alice", "bob", "carol"):
            _login(page, name, "wrong", address="10.0.3.1")

        assert _refused(_login(page, "root", PASSWORD, address="10.0.3.1"))
        assert _logged_in(_login(page, "root", PASSWORD, address="10.0.3.2"))

    def test_a_locked_attempt_hashes_no_password(self, limits, root, hashes):
        for _ in range(3):
            _login("/admin/login/", "root", "wrong")
        hashes.clear()

        assert _refused(_login("/admin/login/", "root", PASSWORD))
        assert hashes == []

    def test_what_an_attempt_costs(
        self, limits, root, redis_round_trips, django_assert_num_queries
    ):
        """Before the hash: a query (the name's weight) and two round trips, the
        address's counters then the account's; after it, one round trip (one per
        node holding the account's and the address's failures, on a cluster). An
        address over its limits costs one round trip and no query."""
        account_key("root")  # the column's collation, read once per process
        redis_round_trips.reset()
        with django_assert_num_queries(1):
            attempt = login_limits.attempt_check(name="root", address="10.0.17.1")
        assert redis_round_trips.count == 2
        login_limits.attempt_failed(attempt)
        failures = [
            keys.login_key(keys.LoginCounter.ACCOUNT_FAILURES, attempt.account),
            keys.login_key(keys.LoginCounter.ADDRESS_FAILURES, attempt.address),
        ]
        assert redis_round_trips.count == 2 + redis_nodes_holding(failures)
        redis_round_trips.reset()
        login_limits.attempt_succeeded(attempt)
        assert redis_round_trips.count == 1

        for _ in range(2):
            login_limits.attempt_failed(attempt)
        redis_round_trips.reset()
        with django_assert_num_queries(0):
            refused = login_limits.attempt_check(name="someone", address="10.0.17.1")
        assert refused.refusal == login_limits.Refusal("locked", 15 * 60)
        assert redis_round_trips.count == 1

    def test_failures_and_lockouts_are_counted_in_the_metrics(self, limits, root):
        def sample(name: str) -> float:
            return metrics.REGISTRY.get_sample_value(name) or 0.0

        failures, lockouts = (
            sample("usersvc_login_failures_total"),
            sample("usersvc_login_lockouts_total"),
        )
        for _ in range(4):
            _login("/admin/login/", "root", "wrong")

        assert sample("usersvc_login_failures_total") - failures == 3
        assert sample("usersvc_login_lockouts_total") - lockouts == 1


# Spellings MariaDB's uca1400_ai_ci (and MySQL's 0900_ai_ci) take for "admin":
# case, accents, combining marks, default-ignorable code points (zero width space,
# soft hyphen), fullwidth forms, and trailing spaces behind an ignorable one.
SPELLINGS = [
    "ADMIN",
    "\u00e2dmin",
    "ad\u200bmin",
    "admin\u0301",
    "ad\u00admin",
    "\uff41\uff44\uff4d\uff49\uff4e",
    "admin \u200b",
]


class TestSpellings:
    """Issue 19, point 2: with ``admin`` locked, ``âdmin`` + the right password logged in."""

    @pytest.mark.parametrize("page", LOGIN_PAGES)
    @pytest.mark.parametrize("spelling", SPELLINGS, ids=ascii)
    def test_a_spelling_the_database_equates_is_locked_with_the_account(
        self, limits, admin, page, spelling
    ):
        for n in range(3):
            _login(page, "admin", "wrong", address=f"10.0.4.{n}")

        assert _refused(_login(page, spelling, PASSWORD, address="10.0.4.200"))

    @pytest.mark.parametrize("spelling", SPELLINGS, ids=ascii)
    def test_failures_under_a_spelling_lock_the_account(self, limits, admin, spelling):
        for n in range(3):
            _login("/admin/login/", spelling, "wrong", address=f"10.0.5.{n}")

        assert _refused(_login("/admin/login/", "admin", PASSWORD, address="10.0.5.200"))

    @pytest.mark.parametrize("spelling", [*SPELLINGS, "admin   ", "Admin\u200b \u00ad "], ids=ascii)
    def test_the_database_and_the_account_key_take_a_spelling_alike(self, admin, spelling):
        assert User.objects.get(username=spelling) == admin
        assert account_key(spelling) == account_key("admin")

    @pytest.mark.parametrize("other", ["adm\u0131n", "\u0251dmin", "admin2", "admi"], ids=ascii)
    def test_names_the_database_tells_apart_have_keys_of_their_own(self, admin, other):
        assert not User.objects.filter(username=other).exists()
        assert account_key(other) != account_key("admin")

    def test_a_look_alike_the_database_tells_apart_is_another_account(self, limits, admin):
        for n in range(3):
            _login("/admin/login/", "adm\u0131n", "wrong", address=f"10.0.6.{n}")  # dotless i

        assert _logged_in(_login("/admin/login/", "admin", PASSWORD, address="10.0.6.200"))


class TestSuccesses:
    """Issue 19, point 3: a success reset the address's failures (fail 9, log in as
    yourself, repeat), so one address guessed without end."""

    @pytest.mark.parametrize("page", LOGIN_PAGES)
    def test_logging_in_as_oneself_does_not_reset_the_address(self, limits, root, make_user, page):
        _make(make_user, "visitor")
        for _ in range(2):
            _login(page, "root", "wrong", address="10.0.7.1")
        assert _logged_in(_login(page, "visitor", PASSWORD, address="10.0.7.1"))
        _login(page, "root", "wrong", address="10.0.7.1")

        assert _refused(_login(page, "visitor", PASSWORD, address="10.0.7.1"))

    def test_a_success_clears_the_accounts_own_failures(self, limits, root):
        for n in range(2):
            _login("/admin/login/", "root", "wrong", address=f"10.0.8.{n}")
        assert _logged_in(_login("/admin/login/", "root", PASSWORD, address="10.0.8.100"))
        for n in range(2):
            _login("/admin/login/", "root", "wrong", address=f"10.0.8.{n + 10}")

        assert _logged_in(_login("/admin/login/", "root", PASSWORD, address="10.0.8.101"))


class TestKeySpaces:
    """Issue 19, point 4: ten failures as the user ``127.0.0.6`` locked every login
    from the address 127.0.0.6."""

    @pytest.mark.parametrize("page", LOGIN_PAGES)
    def test_a_name_that_is_an_address_locks_no_address(self, limits, root, page):
        for n in range(3):
            _login(page, "10.0.9.9", "wrong", address=f"10.0.9.{n}")

        assert _logged_in(_login(page, "root", PASSWORD, address="10.0.9.9"))

    def test_counters_are_hashes_in_four_families_under_the_prefix(self, limits, db, redis_client):
        _login("/admin/login/", "someone", "wrong", address="10.0.9.1")

        found = redis_client.scan_iter(match=f"{settings.TEST_RUN_PREFIX}*")
        keys = sorted(key.decode() for key in found)
        families = sorted(key.split(":")[3] for key in keys)
        assert families == [
            "account-attempts", "account-failures", "address-attempts", "address-failures"
        ]  # fmt: skip
        assert all(key.split(":")[2] == "login" for key in keys)
        # Plain hashes, never a pickle: nothing read back is deserialized but text.
        assert {redis_client.type(key) for key in keys} == {b"hash"}


class TestAttempts:
    """Issue 19, point 5: successful logins were unlimited, each a password hash;
    eight connections logging in as themselves starved everyone else."""

    @pytest.mark.parametrize("page", LOGIN_PAGES)
    def test_logins_to_one_account_are_limited_by_a_rate(self, limits, root, hashes, page):
        limits.LOGIN_RATE_ACCOUNT = "3/min"
        for n in range(3):
            assert _logged_in(_login(page, "root", PASSWORD, address=f"10.0.10.{n}"))
        hashes.clear()

        refused = _login(page, "root", PASSWORD, address="10.0.10.200")

        assert _refused(refused)
        assert 0 < int(refused["Retry-After"]) <= 60
        assert hashes == []

    @pytest.mark.parametrize("page", LOGIN_PAGES)
    def test_logins_from_one_address_are_limited_by_a_rate(self, limits, make_user, hashes, page):
        limits.LOGIN_RATE_ADDRESS = "3/min"
        for n in range(3):
            _make(make_user, f"member{n}")
            assert _logged_in(_login(page, f"member{n}", PASSWORD, address="10.0.11.1"))
        _make(make_user, "member3")
        hashes.clear()

        assert _refused(_login(page, "member3", PASSWORD, address="10.0.11.1"))
        assert hashes == []
        assert _logged_in(_login(page, "member3", PASSWORD, address="10.0.11.2"))

    def test_guesses_sent_at_once_are_bounded_by_the_rate(self, limits, transactional_db, hashes):
        """Failures are counted after the hash, so guesses sent together all pass the
        failure check; the attempts counted before it are what bounds them. (The
        failure limit above the rate: on a loaded machine some guesses finish before
        others start, and three failures would lock the account first.)"""
        limits.LOGIN_RATE_ACCOUNT = "5/min"
        limits.LOGIN_FAILURE_LIMIT = 100
        user = User.objects.create(username="root", email="root@example.com", is_staff=True)
        user.set_password(PASSWORD)
        user.save()
        together = threading.Barrier(20)

        def guess(n: int):
            together.wait(timeout=60)
            try:
                return _login("/admin/login/", "root", f"guess-{n}", address=f"10.0.18.{n}")
            finally:
                connections.close_all()

        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(guess, range(20)))

        assert len(hashes) == 5
        assert sorted(answer.status_code for answer in answers) == [200] * 5 + [429] * 15

    def test_an_address_over_its_rate_adds_no_counters(self, limits, db, redis_client):
        """Names an address makes up cost Redis a key each only within its rate."""
        limits.LOGIN_RATE_ADDRESS = "3/min"
        for n in range(20):
            _login("/admin/login/", f"made-up-{n}", "wrong", address="10.0.12.1")

        accounts = list(redis_client.scan_iter(match=f"{settings.TEST_RUN_PREFIX}*account-*"))
        assert len(accounts) == 3 * 2  # failures and attempts of the first three names


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("LOGIN_RATE_ACCOUNT", "ten/min", "LOGIN_RATE_ACCOUNT is 'ten/min'; use N/s, N/min"),
        ("LOGIN_RATE_ADDRESS", "0/min", "LOGIN_RATE_ADDRESS is '0/min'; use N/s, N/min"),
        ("LOGIN_FAILURE_LIMIT", 0, "LOGIN_FAILURE_LIMIT is 0; use a whole number of 1 or more"),
        ("CLIENT_IPV6_PREFIX", 129, "CLIENT_IPV6_PREFIX is 129; use 1 to 128"),
    ],
)
def test_a_bad_setting_stops_the_start(settings, setting, value, message):
    setattr(settings, setting, value)

    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        login_limits.check_settings()


def _serve_logins_from(server: RedisServer, settings) -> None:
    server.start()
    caches = one_server_caches(server.url)
    caches["default"]["OPTIONS"].update(SOCKET_CONNECT_TIMEOUT=0.25, SOCKET_TIMEOUT=0.25)
    settings.CACHES = caches


def _own_redis(tmp_path, settings, maxmemory: str):
    """A redis-server of the test's own, full at ``maxmemory`` (noeviction, Redis's
    default policy)."""
    server = RedisServer(
        tmp_path, options=["--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"]
    )
    _serve_logins_from(server, settings)
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path, limits):
    yield from _own_redis(tmp_path, limits, "1mb")


@pytest.fixture
def roomier_redis(tmp_path, limits):
    """Room for some counters before it fills up."""
    yield from _own_redis(tmp_path, limits, "4mb")


def _fill_up(server: RedisServer) -> None:
    client = server.client()
    for index in range(100_000):
        try:
            client.set(f"filler:{index}", b"x" * 4096)
        except OutOfMemoryError:
            return
    raise AssertionError("Redis never ran out of memory")


BREAKS = {"paused": RedisServer.pause, "stopped": RedisServer.stop, "full": _fill_up}


class TestWithoutRedis:
    """Issue 19, point 12: the login pages answered 500 while Redis was paused, down
    or full. They answer as usual, and each process counts in its own memory."""

    @pytest.mark.parametrize("page", LOGIN_PAGES)
    @pytest.mark.parametrize("broken", BREAKS)
    def test_logins_work_and_stay_limited(self, own_redis, root, make_user, page, broken):
        _make(make_user, "visitor")
        BREAKS[broken](own_redis)

        for n in range(3):
            failed = _login(page, "root", "wrong", address=f"10.0.13.{n}")
            assert failed.status_code == 200 and not _logged_in(failed)
        assert _refused(_login(page, "root", PASSWORD, address="10.0.13.100"))
        assert _logged_in(_login(page, "visitor", PASSWORD, address="10.0.13.101"))

    def test_failures_redis_holds_still_count_once_it_is_full(self, roomier_redis, root):
        for n in range(2):
            _login("/admin/login/", "root", "wrong", address=f"10.0.14.{n}")
        failures = [key for key in roomier_redis.client().scan_iter() if b"account-failures" in key]
        assert [roomier_redis.client().hget(key, "count") for key in failures] == [b"2"]
        _fill_up(roomier_redis)
        _login("/admin/login/", "root", "wrong", address="10.0.14.2")

        assert _refused(_login("/admin/login/", "root", PASSWORD, address="10.0.14.100"))


class TestIPv6:
    """Issue 19, point 16: per-address limits counted whole IPv6 addresses, of which a
    client usually holds 2^64."""

    @pytest.mark.parametrize(
        ("peer", "counted_as"),
        [
            ("203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("fe80::1%eth0", "fe80::/64"),
        ],
    )
    def test_what_an_address_counts_as(self, limits, rf, peer, counted_as):
        assert client_address(rf.get("/", REMOTE_ADDR=peer)) == counted_as

    def test_what_is_no_address_counts_by_a_digest(self, limits, rf):
        counted_as = client_address(rf.get("/", REMOTE_ADDR="not{an}address"))

        assert counted_as.startswith("unparsed-") and "{" not in counted_as

    @pytest.mark.parametrize("page", LOGIN_PAGES)
    def test_an_ipv6_address_counts_with_its_64(self, limits, root, page):
        for n in range(1, 4):
            _login(page, f"guess{n}", "wrong", address=f"2001:db8:0:1::{n}")

        assert _refused(_login(page, "root", PASSWORD, address="2001:db8:0:1:ffff::1"))
        assert _logged_in(_login(page, "root", PASSWORD, address="2001:db8:0:2::1"))

    def test_the_prefix_is_configurable(self, limits, root):
        limits.CLIENT_IPV6_PREFIX = 128
        for n in range(1, 4):
            _login("/admin/login/", f"guess{n}", "wrong", address=f"2001:db8:0:1::{n}")

        assert _logged_in(_login("/admin/login/", "root", PASSWORD, address="2001:db8:0:1::4"))

    def test_addresses_come_from_the_proxy_as_for_the_api(self, limits, root):
        limits.REST_FRAMEWORK = {**limits.REST_FRAMEWORK, "NUM_PROXIES": 1}
        for n in range(1, 4):
            _login(
                "/admin/login/", f"guess{n}", "wrong", address="10.0.0.254",
                HTTP_X_FORWARDED_FOR=f"198.51.100.7, 2001:db8:0:3::{n}",
            )  # fmt: skip

        assert _refused(
            _login(
                "/admin/login/", "root", PASSWORD, address="10.0.0.254",
                HTTP_X_FORWARDED_FOR="2001:db8:0:3::99",
            )
        )  # fmt: skip
        assert _logged_in(
            _login(
                "/admin/login/", "root", PASSWORD, address="10.0.0.254",
                HTTP_X_FORWARDED_FOR="2001:db8:0:4::1",
            )
        )  # fmt: skip

    def test_the_api_throttles_count_by_the_64_too(self, settings, transactional_db):
        rest = {**settings.REST_FRAMEWORK}
        rest["DEFAULT_THROTTLE_RATES"] = {**rest["DEFAULT_THROTTLE_RATES"], "auth_failure": "2/min"}
        settings.REST_FRAMEWORK = rest
        statuses = [
            Client(REMOTE_ADDR=f"2001:db8:0:5::{n}", HTTP_AUTHORIZATION=f"Token {n:040x}")
            .get("/api/user")
            .status_code
            for n in range(1, 4)
        ]

        assert statuses == [401, 401, 429]


class TestOperators:
    """Issue 22, point 5: nobody could see who was locked out, and unlocking said it
    succeeded while the address stayed locked."""

    def _lock(self, page: str = "/admin/login/") -> None:
        for n in range(3):
            _login(page, "R\u200boot", "wrong", address=f"10.0.15.{n}")
        for name in ("x", "y", "z"):
            _login(page, name, "wrong", address="2001:db8:0:6::1")

    def test_list_shows_each_lockout_with_its_times(self, limits, root):
        self._lock()
        out = io.StringIO()

        call_command("unlock_login", "--list", stdout=out)

        lines = out.getvalue().splitlines()
        account = next(line for line in lines if line.startswith("account"))
        address = next(line for line in lines if line.startswith("address"))
        assert "'R\\u200boot'" in account and " 3 failures" in account
        assert "2001:db8:0:6::/64" in address and " 3 failures" in address
        for line in (account, address):
            assert " since " in line and " until " in line

    def test_listing_reads_an_index_not_the_whole_database(self, limits, root, redis_round_trips):
        """Two round trips (per node holding the keys, on a cluster): the index of
        the minutes a lockout can have begun in, then the counters it names."""
        self._lock()
        redis_round_trips.reset()

        listed = login_lockouts.lockouts()

        minute = int(time.time() // 60)
        index = [keys.login_lockouts_key(minute - back) for back in range(2 * 15 + 2)]
        counted = [
            keys.login_key(keys.LoginCounter(f"{row.kind}-failures"), row.subject) for row in listed
        ]
        assert len(listed) == 2
        assert redis_round_trips.count == redis_nodes_holding(index) + redis_nodes_holding(counted)

    def test_unlocking_an_account_under_another_spelling(self, limits, root):
        self._lock()
        out = io.StringIO()

        call_command("unlock_login", "--username", "ROOT", stdout=out)

        assert "account 'R\\u200boot': 3 failures" in out.getvalue()
        assert _logged_in(_login("/admin/login/", "root", PASSWORD, address="10.0.15.100"))

    def test_unlocking_an_address_clears_its_64(self, limits, root, make_user):
        _make(make_user, "visitor")
        self._lock()
        out = io.StringIO()

        call_command("unlock_login", "--address", "2001:db8:0:6::abcd", stdout=out)

        assert "address 2001:db8:0:6::/64: 3 failures" in out.getvalue()
        assert _logged_in(_login("/admin/login/", "visitor", PASSWORD, address="2001:db8:0:6::2"))
        listed = io.StringIO()
        call_command("unlock_login", "--list", stdout=listed)
        assert "2001:db8" not in listed.getvalue()

    def test_unlocking_what_is_not_locked_says_so(self, limits, db):
        out = io.StringIO()

        call_command("unlock_login", "--username", "nobody", "--address", "10.0.16.1", stdout=out)
        call_command("unlock_login", "--list", stdout=out)

        assert out.getvalue().splitlines() == [
            "Nothing to remove for account 'nobody'.",
            "Nothing to remove for address 10.0.16.1.",
            "No lockouts.",
        ]

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ([], "name an account (--username), an address (--address), or --list"),
            (["--address", "10.0.0.300"], "argument --address: '10.0.0.300' is not an IP address"),
            (["--list", "--address", "10.0.0.1"], "--list takes no --username or --address"),
        ],
    )
    def test_bad_arguments_exit_2(self, arguments, message, db):
        result = manage_py(command_environment(), "unlock_login", *arguments, timeout=60)

        assert result.returncode == 2
        assert result.stderr == f"manage.py unlock_login: error: {message} (see --help)\n"

    def test_the_admin_lists_lockouts_and_unlocks_one(self, limits, root, make_user):
        _make(make_user, "visitor")
        self._lock()
        client = Client(enforce_csrf_checks=True)
        client.force_login(root)

        page = client.get(LOCKOUTS_PAGE)
        assert page.status_code == 200
        text = page.content.decode()
        assert "R\\u200boot" in text and "2001:db8:0:6::/64" in text
        assert client.post(LOCKOUTS_PAGE, {"kind": "address"}).status_code == 403  # no CSRF
        row = next(r for r in page.context["lockouts"] if r.kind == "address")
        token = page.context["csrf_token"]
        unlocked = client.post(
            LOCKOUTS_PAGE, {"kind": row.kind, "subject": row.subject, "csrfmiddlewaretoken": token}
        )

        assert unlocked.status_code == 302
        after = client.get(LOCKOUTS_PAGE)
        assert "Unlocked address 2001:db8:0:6::/64 (3 failures; 3 attempts removed)" in (
            after.content.decode()
        )
        assert [row.kind for row in after.context["lockouts"]] == ["account"]
        assert _logged_in(_login("/admin/login/", "visitor", PASSWORD, address="2001:db8:0:6::2"))

    def test_the_user_list_links_to_the_page(self, limits, root, client):
        client.force_login(root)

        assert LOCKOUTS_PAGE in client.get("/admin/users/user/").content.decode()

    def test_staff_need_change_user(self, limits, make_user, client):
        staff = make_user(username="helper", email="helper@example.com", is_staff=True)
        client.force_login(staff)
        assert client.get(LOCKOUTS_PAGE).status_code == 403

        grant_user_permissions(staff, "change_user")
        assert client.get(LOCKOUTS_PAGE).status_code == 200


class TestPasswordChange:
    """The admin's password change checks the old password: a guess like a login's,
    counted against the same limits (failed on the previous main: a session could
    guess its account's password there without end)."""

    def test_guesses_of_the_old_password_lock_the_account(self, limits, root):
        session = Client(REMOTE_ADDR="10.0.30.1")
        session.force_login(root)

        def change(old: str):
            return session.post(
                "/admin/password_change/",
                {"old_password": old, "new_password1": "a-New-passphrase-31",
                 "new_password2": "a-New-passphrase-31"},
            )  # fmt: skip

        for _ in range(3):
            assert change("wrong").status_code == 200  # the form again, with its error
        refused = change(PASSWORD)

        assert refused.status_code == 200
        assert "Too many attempts" in refused.content.decode()
        root.refresh_from_db()
        assert root.check_password(PASSWORD)
        # And the login forms count the same failures.
        assert _refused(_login("/admin/login/", "root", PASSWORD, address="10.0.31.1"))

    def test_the_right_old_password_changes_it(self, limits, root):
        session = Client(REMOTE_ADDR="10.0.32.1")
        session.force_login(root)

        response = session.post(
            "/admin/password_change/",
            {"old_password": PASSWORD, "new_password1": "a-New-passphrase-31",
             "new_password2": "a-New-passphrase-31"},
        )  # fmt: skip

        assert response.status_code == 302
        root.refresh_from_db()
        assert root.check_password("a-New-passphrase-31")

"""The admin edits users through services, so the cache follows its edits; its user
list shows each user's cache state, and its actions and overview page manage the cache."""

import datetime
import os
import re
import time

import pytest
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework.authtoken.models import Token

from tests.helpers import (
    absent_marker,
    cached_entry,
    grant_user_permissions,
    one_server_caches,
    redis_nodes_holding,
)
from tests.servers import RedisServer
from users import entries, lookups, reads, tokens
from users.admin import cache as admin_cache
from users.binlog import server as binlog_server
from users.cache import flush, keys, kinds
from users.maintenance import overview, user_state, warm
from users.models import LOOKALIKE_MESSAGE, BinlogPosition, CacheInvalidation, User


@pytest.fixture
def admin_client(client, make_user):
    admin = make_user(username="root", email="root@example.com", is_staff=True, is_superuser=True)
    client.force_login(admin)
    return client


@pytest.fixture
def cached_user(make_user) -> User:
    user = make_user(username="cached", email="cached@example.com", first_name="Old")
    reads.user_get(user_id=user.id)
    return user


def _change_form(user: User, **overrides) -> dict:
    form = {
        "username": user.username,
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "is_active": "on",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
    }
    form.update(overrides)
    return form


def test_admin_edit_updates_the_cache(
    admin_client, cached_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/admin/users/user/{cached_user.id}/change/",
            _change_form(cached_user, first_name="Edited"),
        )
    assert response.status_code == 302, response.content[:2000]

    assert reads.user_get(user_id=cached_user.id).value["first_name"] == "Edited"
    assert User.objects.get(pk=cached_user.id).version > cached_user.version


def test_admin_add_writes_the_cache(admin_client, redis_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/users/user/add/",
            {
                "username": "added",
                "email": "added@example.com",
                "password1": "a-Long-passphrase-7",
                "password2": "a-Long-passphrase-7",
            },
        )
    assert response.status_code == 302, response.content[:2000]
    user = User.objects.get(username="added")
    assert cached_entry(redis_client, user.id)["email"] == "added@example.com"


def test_admin_add_refuses_a_name_that_looks_like_another(admin_client):
    response = admin_client.post(
        "/admin/users/user/add/",
        {
            "username": "r00t",  # beside "root", the admin_client's own name
            "email": "added@example.com",
            "password1": "a-Long-passphrase-7",
            "password2": "a-Long-passphrase-7",
        },
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"username": [LOOKALIKE_MESSAGE]}
    assert not User.objects.filter(email="added@example.com").exists()


def test_admin_change_refuses_a_name_that_looks_like_another(admin_client, cached_user):
    response = admin_client.post(
        f"/admin/users/user/{cached_user.id}/change/",
        _change_form(cached_user, username="ro0t"),
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"username": [LOOKALIKE_MESSAGE]}
    assert User.objects.get(pk=cached_user.id).username == "cached"


def test_admin_may_change_the_case_of_a_name(admin_client, cached_user):
    response = admin_client.post(
        f"/admin/users/user/{cached_user.id}/change/", _change_form(cached_user, username="CACHED")
    )

    assert response.status_code == 302, response.content[:2000]
    assert User.objects.get(pk=cached_user.id).username == "CACHED"


def test_admin_delete_clears_the_cache(
    admin_client, cached_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/users/user/{cached_user.id}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert reads.user_get(user_id=cached_user.id).value is None


def test_admin_bulk_delete_clears_the_cache(
    admin_client, cached_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/users/user/",
            {"action": "delete_selected", "_selected_action": [cached_user.id], "post": "yes"},
        )
    assert response.status_code == 302
    assert reads.user_get(user_id=cached_user.id).value is None


def test_admin_password_change_goes_through_the_service(
    admin_client, cached_user, redis_client, django_capture_on_commit_callbacks
):
    """A new password bumps the row's version and updated_at, which the entry carries."""
    before = reads.user_get(user_id=cached_user.id).value
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/admin/users/user/{cached_user.id}/password/",
            {"password1": "a-New-passphrase-8", "password2": "a-New-passphrase-8"},
        )
    assert response.status_code == 302, response.content[:2000]

    after = reads.user_get(user_id=cached_user.id)
    assert after.source is reads.Source.MISS
    assert after.value["updated_at"] > before["updated_at"]
    assert User.objects.get(pk=cached_user.id).check_password("a-New-passphrase-8")


# The change page's cache section, and its Warm and Evict buttons.


def _cache_token(user: User) -> str:
    """A token of ``user``, its lookup cached as authentication caches it, without
    the lease that read keeps until it expires (what an eviction removes does not
    depend on the clock)."""
    key = Token.objects.create(user=user).key
    read = tokens.token_cached(key=key, prefetch=(), rate=None)
    assert tokens.token_loaded(read).principal.id == user.id
    get_redis_connection("default").delete(keys.lease_key(keys.token_key(tokens.token_mac(key))))
    return key


def _user_cache(response) -> dict:
    """The change page's entries (``user_state.EntryState``) by kind."""
    return {entry.kind: entry for entry in response.context["user_cache"].entries}


def test_change_page_shows_each_entry_decoded_and_against_mysql(
    admin_client, cached_user, redis_client
):
    """The user's own entry, its username's and e-mail's, its token's: the registry's
    kinds, each opened by its codec and compared with what MySQL holds now."""
    lookups.user_by(field="username", value="cached")
    _cache_token(cached_user)
    # Changed around the service (no follower here): the entry is stale.
    User.objects.filter(pk=cached_user.pk).update(first_name="New")

    response = admin_client.get(f"/admin/users/user/{cached_user.id}/change/")

    assert response.status_code == 200
    entries_by_kind = _user_cache(response)
    assert set(entries_by_kind) == {"user", "username", "email", "token"}
    user_entry = entries_by_kind["user"]
    assert user_entry.state == "cached" and user_entry.differing == ["first_name"]
    assert re.fullmatch(r"5\d min left", user_entry.ttl_left), user_entry.ttl_left
    assert re.fullmatch(r"in 5\d min", user_entry.expiry_left), user_entry.expiry_left
    fields = {field.column: field for field in user_entry.fields}
    assert (fields["first_name"].value, fields["first_name"].mysql) == ("Old", "New")
    assert (fields["email"].value, fields["email"].mysql) == ("cached@example.com", None)
    assert fields["is_active"].value == "True"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", fields["date_joined"].value)
    assert entries_by_kind["username"].state == "cached"
    assert [(f.column, f.value, f.mysql) for f in entries_by_kind["username"].fields] == [
        ("id", str(cached_user.id), None)
    ]
    assert entries_by_kind["email"].state == "not cached"
    token = entries_by_kind["token"]
    assert token.state == "cached" and token.differing == []
    assert {f.column: f.value for f in token.fields}["username"] == "cached"
    html = response.content.decode()
    assert "differs in first_name" in html
    assert 'id="cache-warm"' in html and 'id="cache-evict"' in html


def test_change_page_names_the_near_cache_of_the_process_that_answered(
    admin_client, cached_user, redis_client
):
    """The test's client runs the view in this process, whose near cache holds what
    its own read stored; an entry changed in Redis behind it is dropped by tracking."""
    response = admin_client.get(f"/admin/users/user/{cached_user.id}/change/")
    assert _user_cache(response)["user"].held_here is True
    assert f"process {os.getpid()} on " in response.content.decode()

    redis_client.hset(keys.user_key(cached_user.id), entries.NAME_OF["first_name"], "Edited")

    def held() -> bool | None:
        page = admin_client.get(f"/admin/users/user/{cached_user.id}/change/")
        return _user_cache(page)["user"].held_here

    deadline = time.monotonic() + 10
    while held() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert held() is False


def _entry_of(user: User) -> dict[str, str]:
    return {**entries.encode(user), kinds.EXPIRES: str(int(time.time()) + 600)}


@pytest.mark.parametrize(
    ("corrupt", "why"),
    [
        pytest.param(
            lambda r, key, entry: r.set(key, "x"), "a Redis string, not a hash", id="not a hash"
        ),
        pytest.param(
            lambda r, key, entry: r.hdel(key, kinds.EXPIRES), "no expiry field (z)", id="no expiry"
        ),
        pytest.param(
            lambda r, key, entry: r.hset(key, kinds.EXPIRES, "soon"),
            "its expiry (z) is not a time: 'soon'",
            id="expiry not a time",
        ),
        pytest.param(
            lambda r, key, entry: (r.hdel(key, "e"), r.hset(key, "q", "1")),
            "fields missing: email; unexpected: q",
            id="fields",
        ),
        pytest.param(
            lambda r, key, entry: r.hset(key, entries.NAME_OF["is_active"], "yes"),
            "a value is not in the form this service writes",
            id="a value",
        ),
        pytest.param(
            lambda r, key, entry: r.hset(key, kinds.EXPIRES, str(int(time.time()) - 5)),
            "its own expiry has passed, though Redis still holds it",
            id="expired",
        ),
        pytest.param(
            lambda r, key, entry: (
                r.delete(key),
                r.hset(key, mapping={kinds.ABSENT: "2", "z": entry["z"]}),
            ),
            "an absence marker holding '2', not '1'",
            id="absence",
        ),
    ],
)
def test_change_page_says_why_an_entry_is_refused(
    admin_client, make_user, redis_client, corrupt, why
):
    user = make_user(username="mangled", email="mangled@example.com")
    key = keys.user_key(user.id)
    entry = _entry_of(user)
    redis_client.hset(key, mapping=entry)
    redis_client.expire(key, 600)
    corrupt(redis_client, key, entry)

    response = admin_client.get(f"/admin/users/user/{user.id}/change/")

    user_entry = _user_cache(response)["user"]
    assert (user_entry.state, user_entry.problem) == ("refused", why)
    assert f"refused: {why}" in response.content.decode().replace("&#x27;", "'")


def test_change_page_says_a_forged_token_entry_fails_its_signature(
    admin_client, cached_user, redis_client
):
    key = _cache_token(cached_user)
    token_key = keys.token_key(tokens.token_mac(key))
    redis_client.hset(token_key, tokens.STAFF, "1")

    response = admin_client.get(f"/admin/users/user/{cached_user.id}/change/")

    token = _user_cache(response)["token"]
    assert token.state == "refused"
    assert token.problem.startswith("its signature does not match")
    assert {f.column: f.value for f in token.fields}["is_staff"] == "True"


def test_change_page_tells_a_stale_absence_and_a_name_given_to_another(
    admin_client, cached_user, make_user, redis_client
):
    """A user cached as absent while MySQL has the row; its e-mail's entry naming
    another user (a rename around the service)."""
    other = make_user(username="other", email="other@example.com")
    assert lookups.user_by(field="email", value="cached@example.com").value is not None
    email_key = lookups.NAME_KINDS["email"].key("cached@example.com")
    redis_client.hset(email_key, lookups.NAME_ID, str(other.id))
    user_key = keys.user_key(cached_user.id)
    redis_client.delete(user_key)
    redis_client.hset(user_key, mapping=absent_marker())
    redis_client.expire(user_key, 60)

    response = admin_client.get(f"/admin/users/user/{cached_user.id}/change/")

    by_kind = _user_cache(response)
    assert by_kind["user"].state == "absent"
    assert by_kind["user"].mysql == "MySQL has this row: the absence is stale"
    assert by_kind["email"].state == "cached" and by_kind["email"].differing == ["id"]
    assert [(f.value, f.mysql) for f in by_kind["email"].fields] == [
        (str(other.id), str(cached_user.id))
    ]
    html = response.content.decode()
    assert "MySQL has this row: the absence is stale" in html and "differs in id" in html


def test_change_page_costs_one_redis_round_trip_and_a_query_per_kind(
    cached_user, redis_round_trips, django_assert_num_queries
):
    _cache_token(cached_user)
    lookups.user_by(field="username", value="cached")
    redis_round_trips.reset()

    # The row, its tokens (the registry's idents), then each kind's load.
    with django_assert_num_queries(6):
        state = user_state.user_cache_state(user_id=cached_user.id)

    assert redis_round_trips.count == redis_nodes_holding([e.key for e in state.entries])


def test_change_page_without_redis(admin_client, cached_user, settings):
    settings.CACHES = one_server_caches("redis://127.0.0.1:1/0")
    response = admin_client.get(f"/admin/users/user/{cached_user.id}/change/")
    assert response.status_code == 200
    assert 'id="cache-unavailable">Redis is unavailable: ConnectionError' in (
        response.content.decode()
    )


def _press(client, user: User, button: str):
    return client.post(f"/admin/users/user/{user.id}/cache/{button}/", follow=True)


def test_warm_and_evict_buttons(admin_client, cached_user, redis_client):
    _cache_token(cached_user)
    User.objects.filter(pk=cached_user.pk).update(first_name="New")

    warmed = _press(admin_client, cached_user, "warm")

    assert warmed.redirect_chain == [(f"/admin/users/user/{cached_user.id}/change/#cache", 302)]
    assert "Cached 1 of 1 user (cached)." in warmed.content.decode()
    assert cached_entry(redis_client, cached_user.id)["first_name"] == "New"
    assert _user_cache(warmed)["user"].differing == []

    evicted = _press(admin_client, cached_user, "evict")

    # The user's entry and its token's.
    assert "Evicted 1 user (cached): 2 keys removed." in evicted.content.decode()
    assert {entry.state for entry in _user_cache(evicted).values()} == {"not cached"}


def test_buttons_report_an_unavailable_redis(admin_client, cached_user, settings):
    settings.CACHES = one_server_caches("redis://127.0.0.1:1/0")
    response = _press(admin_client, cached_user, "evict")
    assert "Redis is unavailable: ConnectionError" in response.content.decode()


def test_buttons_need_what_the_lists_actions_need(client, make_user, redis_client):
    """Staff who may view users but not change them see the entries, no button, and
    a POST is refused; with change_user, the buttons work on any user, as the
    list's actions do (they change no user)."""
    target = make_user(username="target", email="target@example.com", is_superuser=True)
    viewer = grant_user_permissions(
        make_user(username="viewer", email="viewer@example.com", is_staff=True), "view_user"
    )
    client.force_login(viewer)

    page = client.get(f"/admin/users/user/{target.id}/change/")
    assert page.status_code == 200 and "user_cache" in page.context
    assert 'id="cache-warm"' not in page.content.decode()
    assert 'id="cache-evict"' not in page.content.decode()
    assert _press(client, target, "warm").status_code == 403
    assert not redis_client.exists(keys.user_key(target.id))

    grant_user_permissions(viewer, "change_user")
    viewer = User.objects.get(pk=viewer.pk)  # a fresh permission cache
    client.force_login(viewer)
    assert (
        'id="cache-warm"' in client.get(f"/admin/users/user/{target.id}/change/").content.decode()
    )
    assert "Cached 1 of 1 user (target)." in _press(client, target, "warm").content.decode()
    assert redis_client.exists(keys.user_key(target.id))


def test_buttons_take_a_post_with_its_csrf_token_for_an_existing_user(admin_client, cached_user):
    from django.test import Client

    url = f"/admin/users/user/{cached_user.id}/cache/warm/"
    assert admin_client.get(url).status_code == 405
    assert admin_client.post("/admin/users/user/999999/cache/warm/").status_code == 404

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(User.objects.get(username="root"))
    assert strict.post(url).status_code == 403


# The user list: search, filters, the cache column and the cache actions.


@pytest.fixture
def many_users(make_user) -> list[User]:
    return [make_user(username=f"many{n}", email=f"many{n}@example.com") for n in range(30)]


def _cache_column(response) -> dict[int, str]:
    """Each listed user's cache cell, by id."""
    html = response.content.decode()
    rows = re.findall(
        r'<input type="checkbox" name="_selected_action" value="(\d+)".*?'
        r'<td class="field-cache_state">(.*?)</td>',
        html,
        re.DOTALL,
    )
    return {int(user_id): cell for user_id, cell in rows}


def test_list_shows_cache_state_from_one_round_trip_for_the_page(
    admin_client, many_users, redis_client, redis_round_trips
):
    warm.cache_warm(user_ids=[user.id for user in many_users[:3]])
    absent_key = keys.user_key(many_users[3].id)
    redis_client.hset(absent_key, mapping=absent_marker())
    redis_client.pexpire(absent_key, 20_000)
    redis_round_trips.count = 0

    response = admin_client.get("/admin/users/user/")

    assert response.status_code == 200
    page_keys = [keys.user_key(pk) for pk in User.objects.values_list("id", flat=True)]
    assert redis_round_trips.count == redis_nodes_holding(page_keys)  # 1 on one server
    column = _cache_column(response)
    assert len(column) == 31  # the 30 and the admin
    for user in many_users[:3]:
        assert re.fullmatch(r"cached, 5\d min left", column[user.id]), column[user.id]
    assert re.fullmatch(r"absent, (1\d|20) s left", column[many_users[3].id])
    assert column[many_users[4].id] == "not cached"


def test_list_says_so_when_redis_is_unavailable(admin_client, many_users, settings):
    settings.CACHES = one_server_caches("redis://127.0.0.1:1/0")
    response = admin_client.get("/admin/users/user/")
    assert response.status_code == 200
    assert set(_cache_column(response).values()) == {"Redis unavailable"}


def test_search_by_username_or_email_and_filters(admin_client, many_users, make_user):
    make_user(username="grace", email="hopper@navy.example", is_staff=True)

    by_email = admin_client.get("/admin/users/user/", {"q": "hopper@navy"})
    by_name = admin_client.get("/admin/users/user/", {"q": "many1"})
    staff_only = admin_client.get("/admin/users/user/", {"is_staff__exact": "1"})

    assert [u.username for u in by_email.context["cl"].result_list] == ["grace"]
    assert len(by_name.context["cl"].result_list) == 11  # many1, many10..many19
    assert {u.username for u in staff_only.context["cl"].result_list} == {"root", "grace"}


def test_detail_view_shows_the_user(admin_client, cached_user):
    response = admin_client.get(f"/admin/users/user/{cached_user.id}/change/")
    assert response.status_code == 200
    assert b"cached@example.com" in response.content


def test_warm_and_evict_actions(admin_client, many_users, redis_client):
    selected = [user.id for user in many_users[:2]]

    warmed = admin_client.post(
        "/admin/users/user/", {"action": "warm_cache", "_selected_action": selected}, follow=True
    )
    assert "Cached 2 of 2 users." in warmed.content.decode()
    assert all(redis_client.exists(keys.user_key(user_id)) for user_id in selected)
    assert not redis_client.exists(keys.user_key(many_users[2].id))

    evicted = admin_client.post(
        "/admin/users/user/",
        {"action": "evict_from_cache", "_selected_action": selected},
        follow=True,
    )
    assert "Evicted 2 users: 2 keys removed." in evicted.content.decode()
    assert not any(redis_client.exists(keys.user_key(user_id)) for user_id in selected)


def test_actions_report_an_unavailable_redis(admin_client, many_users, settings):
    settings.CACHES = one_server_caches("redis://127.0.0.1:1/0")
    response = admin_client.post(
        "/admin/users/user/",
        {"action": "warm_cache", "_selected_action": [many_users[0].id]},
        follow=True,
    )
    assert "Redis is unavailable: ConnectionError" in response.content.decode()


def _select(admin_client, action: str, **selection):
    """Runs an action of the user list on a selection: ``ids``, or ``across`` (the
    "Select all" link, which the browser sends with the page's boxes ticked) with
    the list's ``filters``."""
    data = {"action": action, "index": "0", "_selected_action": selection.get("ids", [])}
    if selection.get("across"):
        data["select_across"] = "1"
        data["_selected_action"] = list(User.objects.values_list("pk", flat=True)[:100])
    query = "&".join(f"{name}={value}" for name, value in selection.get("filters", {}).items())
    return admin_client.post(f"/admin/users/user/?{query}", data, follow=True).content.decode()


def _run_instead(html: str) -> str:
    [command] = re.findall(r"Run instead: (python manage\.py [^<]*)", html)
    return command


def test_a_selection_over_the_limit_is_sent_to_the_command(admin_client, redis_client):
    """ "Select all" over more users than an action handles in a request: nothing is
    warmed or evicted, and the message says what to run."""
    User.objects.bulk_create(
        User(username=f"bulk{n}", email=f"bulk{n}@example.com")
        for n in range(admin_cache.CACHE_ACTION_MAX)
    )  # and the admin: one more than the limit
    everyone = User.objects.count()
    cached = User.objects.get(username="root").id
    reads.user_get(user_id=cached)

    warmed = _select(admin_client, "warm_cache", across=True)
    evicted = _select(admin_client, "evict_from_cache", across=True)

    assert f"Warming {everyone} users is more than the admin does in a request" in warmed
    assert _run_instead(warmed) == "python manage.py warm_user_cache --all"
    assert _run_instead(evicted) == "python manage.py flush_user_cache --all"
    user_entries = redis_client.scan_iter(match=keys.family_pattern("user"), count=1000)
    assert [key.decode() for key in user_entries] == [keys.user_key(cached)]


def test_a_large_selection_of_some_users_names_their_ids(
    admin_client, many_users, redis_client, monkeypatch
):
    monkeypatch.setattr(admin_cache, "CACHE_ACTION_MAX", 10)
    selected = sorted(user.id for user in many_users[:12])

    html = _select(admin_client, "warm_cache", ids=selected)

    assert _run_instead(html) == "python manage.py warm_user_cache --ids " + " ".join(
        map(str, selected)
    )
    assert not any(redis_client.exists(keys.user_key(user_id)) for user_id in selected)


def test_a_larger_filtered_selection_is_sent_to_all(admin_client, many_users, monkeypatch):
    monkeypatch.setattr(admin_cache, "CACHE_ACTION_MAX", 10)
    monkeypatch.setattr(admin_cache, "_IDS_IN_COMMAND_MAX", 20)

    html = _select(admin_client, "warm_cache", across=True, filters={"is_staff__exact": "0"})

    assert _run_instead(html) == (
        "python manage.py warm_user_cache --all (every user, not only these 30)"
    )


# The cache overview page.


@pytest.fixture
def own_redis(tmp_path, settings) -> RedisServer:
    """A redis-server of the test's own, holding only what the test puts there."""
    server = RedisServer(tmp_path)
    server.start()
    settings.CACHES = one_server_caches(server.url)
    yield server
    server.stop()


def _key_counts(html: str) -> dict[str, str]:
    return dict(re.findall(r'<th scope="row">([^<]+)</th><td class="key-count">([^<]+)</td>', html))


def test_cache_overview(admin_client, many_users, own_redis):
    warm.cache_warm(user_ids=[user.id for user in many_users[:5]])
    reads.user_get(user_id=many_users[0].id)
    own_redis.client().set("another-application:key", "1")

    response = admin_client.get("/admin/users/user/cache/")

    html = response.content.decode()
    assert response.status_code == 200
    assert re.search(r'id="redis-reachable">yes \([\d.]+ ms ping\)', html)
    info = own_redis.client().info()
    assert info["redis_version"] in html
    assert info["used_memory_human"][:2] in html
    # All the keys fit in the sample: counted, not estimated.
    assert _key_counts(html)["User entries"] == "5"
    assert 'id="keys-estimated"' not in html
    assert re.search(r'id="service-hit-ratio">\d+ %', html)


def _fill(server: RedisServer, names, chunk: int = 10_000) -> None:
    client = server.client()
    names = list(names)
    for start in range(0, len(names), chunk):
        client.mset(dict.fromkeys(names[start : start + chunk], "1"))


def test_cache_overview_estimates_a_large_database_in_a_fixed_number_of_redis_calls(
    admin_client, own_redis, redis_round_trips
):
    """Each view costs PING, INFO, INFO keyspace and SAMPLE_PAGES SCAN pages, whether
    Redis holds 100,000 keys or twice as many; the estimate of this project's keys
    is within a few percent (10 % allowed)."""
    _fill(own_redis, (keys.user_key(user_id) for user_id in range(60_000)))
    _fill(own_redis, (f"another-application:{n}" for n in range(40_000)))
    overview.cache_overview()  # the connection's handshake, once
    calls = []
    for more in (0, 100_000):
        _fill(own_redis, (f"yet-another:{n}" for n in range(more)))
        redis_round_trips.reset()
        estimated = overview.cache_overview()
        calls.append(redis_round_trips.count)

        assert not estimated.keys_exact
        assert estimated.keys_in_database == 100_000 + more
        assert 54_000 <= estimated.keys["user"] <= 66_000
        assert estimated.keys["token"] == estimated.keys["leases"] == 0
    assert calls == [3 + flush.ESTIMATE_PAGES] * 2

    html = admin_client.get("/admin/users/user/cache/").content.decode()
    assert re.fullmatch(r"about \d{2},\d{3}", _key_counts(html)["User entries"])
    assert re.search(r'id="keys-estimated">Estimated from [\d,]+ of the\s+200,000 keys', html)


def test_cache_overview_without_redis(admin_client, settings):
    settings.CACHES = one_server_caches("redis://127.0.0.1:1/0")
    response = admin_client.get("/admin/users/user/cache/")
    assert response.status_code == 200
    assert 'id="redis-reachable">no: ConnectionError' in response.content.decode()


def test_cache_overview_needs_view_permission(client, make_user):
    client.force_login(make_user(username="plain-staff", email="ps@example.com", is_staff=True))
    assert client.get("/admin/users/user/cache/").status_code == 403


def test_changelist_links_to_the_overview(admin_client):
    assert b'href="/admin/users/user/cache/"' in admin_client.get("/admin/users/user/").content


def _waiting_invalidations(count: int, age: datetime.timedelta) -> None:
    """Outbox rows a write left when Redis missed its invalidation, ``age`` ago, and
    no other (a test's own writes leave theirs: their commit never comes)."""
    CacheInvalidation.objects.all().delete()
    for _ in range(count):
        CacheInvalidation.objects.create(keys=[keys.user_key(0)])
    CacheInvalidation.objects.update(created_at=timezone.now() - age)


def test_cache_overview_shows_the_outbox_backlog_as_metrics_do(admin_client):
    _waiting_invalidations(0, datetime.timedelta(0))
    empty = admin_client.get("/admin/users/user/cache/").content.decode()
    _waiting_invalidations(3, datetime.timedelta(minutes=7, seconds=5))

    html = admin_client.get("/admin/users/user/cache/").content.decode()
    scraped = admin_client.get("/metrics").content.decode()

    assert 'id="outbox-backlog">0 rows<' in empty and 'id="outbox-oldest">none waits<' in empty
    assert 'id="outbox-backlog">3 rows<' in html and 'id="outbox-oldest">7 min old<' in html
    assert re.search(r"^usersvc_outbox_backlog 3\.0$", scraped, re.MULTILINE)
    assert re.search(r"^usersvc_outbox_oldest_age_seconds 42\d\.", scraped, re.MULTILINE)


def _follower_saved(seconds_behind: float | None, ago: datetime.timedelta) -> None:
    binlog_server.store_position(
        "server-uuid", binlog_server.Position("binlog.000042", 1234), seconds_behind=seconds_behind
    )
    BinlogPosition.objects.update(updated_at=timezone.now() - ago)


def _follower_rows(html: str) -> dict[str, str]:
    return {
        name: " ".join(text.split())
        for name, text in re.findall(r'id="follower-(\w+)">(.*?)</td>', html, re.DOTALL)
    }


@pytest.mark.parametrize(
    ("saved", "state", "lag"),
    [
        pytest.param(None, "never run here: no follower has saved a position", None, id="none"),
        pytest.param(
            (2.54, datetime.timedelta(seconds=3)),
            "running",
            "2.5 s, as saved 3 s ago",
            id="running",
        ),
        pytest.param(
            (0.0, datetime.timedelta(minutes=2)),
            "not running, or unable to save to MySQL: no save for 2 min, where a running "
            "follower saves every 10 s",
            "0.0 s, as saved 2 min ago (stale)",
            id="silent",
        ),
        pytest.param(
            (None, datetime.timedelta(minutes=5)), "stopped, 5 min ago", "-", id="stopped"
        ),
    ],
)
def test_cache_overview_shows_the_followers_lag_from_its_saved_row(admin_client, saved, state, lag):
    if saved is not None:
        _follower_saved(*saved)

    rows = _follower_rows(admin_client.get("/admin/users/user/cache/").content.decode())

    assert rows["state"].startswith(state), rows
    if lag is None:
        assert set(rows) == {"state"}
    else:
        assert rows["lag"] == lag
        assert rows["position"].startswith("<code>binlog.000042:1234</code>, saved ")


def test_cache_overview_without_redis_still_shows_what_mysql_holds(admin_client, settings):
    _waiting_invalidations(1, datetime.timedelta(seconds=30))
    _follower_saved(1.0, datetime.timedelta(seconds=1))
    settings.CACHES = one_server_caches("redis://127.0.0.1:1/0")

    html = admin_client.get("/admin/users/user/cache/").content.decode()

    assert 'id="redis-reachable">no: ConnectionError' in html
    assert 'id="outbox-backlog">1 row<' in html
    assert _follower_rows(html)["state"] == "running"

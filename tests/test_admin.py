"""The admin edits users through services, so the cache follows its edits; its user
list shows each user's cache state, and its actions and overview page manage the cache."""

import re

import pytest

from tests.conftest import absent_marker, cached_entry, one_server_caches, redis_nodes_holding
from tests.servers import RedisServer
from users import admin as user_admin
from users import reads
from users.cache import keys
from users.maintenance import overview, warm
from users.models import LOOKALIKE_MESSAGE, User


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
        for n in range(user_admin.CACHE_ACTION_MAX)
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
    monkeypatch.setattr(user_admin, "CACHE_ACTION_MAX", 10)
    selected = sorted(user.id for user in many_users[:12])

    html = _select(admin_client, "warm_cache", ids=selected)

    assert _run_instead(html) == "python manage.py warm_user_cache --ids " + " ".join(
        map(str, selected)
    )
    assert not any(redis_client.exists(keys.user_key(user_id)) for user_id in selected)


def test_a_larger_filtered_selection_is_sent_to_all(admin_client, many_users, monkeypatch):
    monkeypatch.setattr(user_admin, "CACHE_ACTION_MAX", 10)
    monkeypatch.setattr(user_admin, "_IDS_IN_COMMAND_MAX", 20)

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
    assert calls == [3 + overview.SAMPLE_PAGES] * 2

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

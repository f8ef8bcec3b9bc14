"""The benchmark-only endpoint: absent unless enabled, and as guarded as the API when it
is; and the bench's peers, which answer what the bench asks them."""

import json
import os
import subprocess
import sys
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

from users import reads
from users.entries import PUBLIC_FIELDS
from users.models import User


def test_floor_is_not_mounted_by_default(reader_client):
    assert reader_client.get("/bench/floor").status_code == 404


@pytest.mark.urls("bench.urls")
class TestFrameworkFloor:
    def test_answers_a_cached_token_with_no_sql(self, reader_client, django_assert_num_queries):
        reader_client.get("/floor")

        with django_assert_num_queries(0):
            response = reader_client.get("/floor")

        assert response.status_code == 200
        assert tuple(response.json()) == PUBLIC_FIELDS

    def test_refuses_an_anonymous_caller(self, anonymous_client):
        assert anonymous_client.get("/floor").status_code == 401


# The peers of ./scripts/bench (bench/peers): each settings module answers its paths.
# They run in a process of their own, as under gunicorn, on the test database and
# under this run's key prefix. cacheops and cachalot are in requirements/bench.lock
# only: where they are not installed, their peers are skipped.
_PEER_REQUESTS = """
import json, sys
import django
django.setup()
from django.test import Client
client = Client(SERVER_NAME="127.0.0.1")
answers = []
for method, path, body in json.loads(sys.argv[1]):
    response = getattr(client, method)(path, body, content_type="application/json")
    answers.append([response.status_code, response.json()])
print(json.dumps(answers))
"""
_PEERS = {
    "bench.peers.settings": (None, ("constant", "hgetall", "cache")),
    "bench.peers.settings_cacheops": ("cacheops", ("cacheops", "users")),
    "bench.peers.settings_cachalot": ("cachalot", ("cachalot", "users")),
}


def _peer_answers(settings_module: str, requests: list) -> list:
    database = connection.settings_dict
    database_url = (
        f"mysql://{quote(database['USER'] or 'root')}:{quote(database['PASSWORD'] or '')}"
        f"@{database['HOST'] or '127.0.0.1'}:{database['PORT'] or 3306}/{database['NAME']}"
    )
    completed = subprocess.run(
        [sys.executable, "-c", _PEER_REQUESTS, json.dumps(requests)],
        cwd=settings.BASE_DIR,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings_module,
            "DATABASE_URL": database_url,
            "REDIS_URL": settings.CACHES["default"]["LOCATION"],
            "CACHE_KEY_PREFIX": settings.TEST_RUN_PREFIX,
            "SECRET_KEY": "test-only-not-a-secret",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("settings_module", list(_PEERS))
def test_the_peers_answer_their_paths(transactional_db, redis_topology, settings_module):
    library, paths = _PEERS[settings_module]
    if library:
        pytest.importorskip(library, reason="a bench-only dependency (requirements/bench.lock)")
    if redis_topology is not None:
        pytest.skip("the peers use one Redis server, as the bench starts it")
    user = User.objects.create_user(username="peer-read", email="peer-read@example.com")
    # The service caches the user, whose hash the HGETALL peer reads.
    assert reads.user_get(user_id=user.pk).source is reads.Source.MISS
    requests = []
    for path in paths:
        if path == "constant":
            requests.append(["get", "/constant", None])
        elif path == "users":
            created = {"username": "peer-new", "email": "peer-new@example.com"}
            requests.append(["post", "/users", created])
            requests.append(["patch", f"/users/{user.pk}", {"first_name": "Peer"}])
        else:
            # Twice: the first fills the peer's cache, the second reads it.
            requests += [["get", f"/{path}/{user.pk}", None]] * 2
            requests.append(["get", f"/{path}/{user.pk + 1000}", None])

    answers = _peer_answers(settings_module, requests)

    for (method, path, _body), (status, answer) in zip(requests, answers, strict=True):
        if path == "/constant":
            assert (status, tuple(answer)) == (200, PUBLIC_FIELDS)
        elif method == "post":
            assert status == 201 and answer["username"] == "peer-new"
            assert User.objects.filter(username="peer-new").exists()
        elif method == "patch":
            assert status == 200 and answer["first_name"] == "Peer"
        elif path.endswith(f"/{user.pk}"):
            assert status == 200
            assert tuple(answer) == PUBLIC_FIELDS and answer["username"] == "peer-read"
        else:
            assert status == 404

"""nginx in front of gunicorn (deploy/nginx): requests that arrive slowly wait in
nginx, not in gunicorn's threads (slowloris).

Debian's nginx; skipped where it is not installed, except in CI (``CI`` set),
where ``.ci/run`` installs it and a missing nginx is a failure.
"""

import contextlib
import http.client
import os
import socket
import time
from collections.abc import Iterator

import pytest
from django.conf import settings

from tests.helpers import database_url, redis_environment
from tests.servers import NGINX, NginxServer, WebService
from users.models import User

pytestmark = pytest.mark.slow

# Connections that sent a request line and one header, then nothing: far more
# than gunicorn's threads here (2 workers x 4).
HALF_SENT = 64


@pytest.fixture
def nginx_installed() -> None:
    if not os.access(NGINX, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the proxy test, but {NGINX} is missing")
        pytest.skip("no nginx: apt-get install nginx (CI installs it)")


@contextlib.contextmanager
def half_sent_requests(port: int) -> Iterator[list[socket.socket]]:
    """HALF_SENT connections to ``port``, each stalled in the middle of its header."""
    connections = []
    try:
        for _ in range(HALF_SENT):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            connections.append(connection)
        yield connections
    finally:
        for connection in connections:
            connection.close()


def timed_get(port: int, path: str, token: str = "", timeout: float = 5) -> tuple[int, float]:
    """(status, seconds) of one GET; status 0 when no answer came within ``timeout``."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    except TimeoutError:
        return 0, time.monotonic() - started
    finally:
        connection.close()


def still_waiting(connection: socket.socket) -> bool:
    """Open, and nothing answered yet."""
    connection.setblocking(False)
    try:
        connection.recv(1)  # an answer, or b"" for a closed connection
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def test_half_sent_requests_wait_in_nginx_not_in_gunicorn(
    tmp_path, nginx_installed, transactional_db
):
    user = User.objects.create(username="reader", email="reader@example.com")
    web = WebService(
        tmp_path,
        database_url=database_url(),
        **redis_environment(),
        CACHE_KEY_PREFIX=settings.TEST_RUN_PREFIX,
        # Behind one proxy the client's address is the last X-Forwarded-For entry.
        NUM_PROXIES="1",
    )
    web.prepare()
    web.start()
    nginx = NginxServer(tmp_path, upstream=f"127.0.0.1:{web.port}")
    try:
        nginx.start()
        # The control: straight at gunicorn, the stalled requests take every thread.
        with half_sent_requests(web.port):
            direct = timed_get(web.port, "/healthz", timeout=3)
        # Through nginx, the same stalled requests, and other clients meanwhile.
        with half_sent_requests(nginx.port) as stalled:
            answers = []
            for _ in range(5):
                answers.append(timed_get(nginx.port, "/healthz"))
                answers.append(timed_get(nginx.port, f"/api/user/{user.id}", web.token))
            held = sum(still_waiting(connection) for connection in stalled)
            # ... until nginx drops them at its deadline for a header (10 s).
            deadline = time.monotonic() + 30
            while any(map(still_waiting, stalled)) and time.monotonic() < deadline:
                time.sleep(0.2)
            dropped = sum(not still_waiting(connection) for connection in stalled)
    finally:
        nginx.stop()
        web.stop()

    assert direct[0] == 0, "without nginx, the stalled requests should block gunicorn"
    assert [status for status, _ in answers] == [200] * 10
    assert max(seconds for _, seconds in answers) < 1.0, answers
    assert held == HALF_SENT
    assert dropped == HALF_SENT

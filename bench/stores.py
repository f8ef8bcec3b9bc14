"""A MariaDB and a Redis of the bench's own, on spare loopback ports, for one run.

The shared servers on the default ports also serve development and other
engineers' test suites, whose traffic would land in what the bench reads from
its stores: Redis's ``INFO commandstats`` (commands per request) and ``INFO
memory`` (bytes per cached user), MySQL's general log (SELECTs per row), and
MySQL's connection limit, which the bench's nine servers would crowd. So a run
starts its own pair, as Debian's packages install them (a Redis without
persistence, as ``scripts/setup.sh`` starts one; a MariaDB with its defaults),
in a temporary folder, and stops them at the end, whatever ends it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import MySQLdb
import redis

from .server import free_loopback_port

_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 30
# Enough for every gunicorn the bench starts (workers x (threads + 1) each), the
# bulk commands and the driver, with room to spare; MariaDB's default is 151.
_MAX_CONNECTIONS = 1000


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        (path for path in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(path, os.X_OK)),
        None,
    )
    if found is None:
        raise RuntimeError(f"{name} not found: install it (Debian's mariadb-server, redis-server)")
    return found


def _wait(ready, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start in time:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def private_stores(folder: Path) -> Iterator[tuple[str, str]]:
    """Starts a mariadbd and a redis-server with their data in ``folder``; yields the
    ``DATABASE_URL`` (no database selected) and ``REDIS_URL`` that reach them."""
    user = pwd.getpwuid(os.getuid()).pw_name
    datadir = folder / "mariadb-data"
    subprocess.run(
        [
            _binary("mariadb-install-db"), "--no-defaults", f"--datadir={datadir}",
            "--auth-root-authentication-method=normal", "--skip-test-db", f"--user={user}",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    mysql_port, redis_port = free_loopback_port(), free_loopback_port()
    mysql_log, redis_log = folder / "mariadb.log", folder / "redis.log"
    with contextlib.ExitStack() as stack:
        mariadb = subprocess.Popen(
            [
                _binary("mariadbd"), "--no-defaults", f"--datadir={datadir}",
                f"--port={mysql_port}", "--bind-address=127.0.0.1",
                f"--socket={folder / 'mariadb.sock'}", f"--pid-file={folder / 'mariadb.pid'}",
                f"--user={user}", "--skip-log-bin", f"--max-connections={_MAX_CONNECTIONS}",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                f"--log-error={mysql_log}",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        stack.callback(_stop, mariadb)
        with redis_log.open("wb") as log:
            server = subprocess.Popen(
                [
                    _binary("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(folder),
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        stack.callback(_stop, server)
        _wait(
            lambda: MySQLdb.connect(host="127.0.0.1", port=mysql_port, user="root").close() is None,
            "mariadbd",
            mariadb,
            mysql_log,
        )
        _wait(
            lambda: redis.Redis(port=redis_port, socket_timeout=1).ping(),
            "redis-server",
            server,
            redis_log,
        )
        yield f"mysql://root@127.0.0.1:{mysql_port}/", f"redis://127.0.0.1:{redis_port}/0"

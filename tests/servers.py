"""Real server processes that a test starts, pauses, stops and restarts.

Each server runs on a free loopback port with its data in a temporary folder,
so a test can break it without touching the shared MariaDB and Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import MySQLdb
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout}s")
        time.sleep(0.05)


class ServerProcess:
    """A child process with pause (SIGSTOP), resume, stop and restart."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        _wait(self.is_ready, f"{self.name} on port {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)


class RedisServer(ServerProcess):
    """``redis-server``: its data survives pause/resume, and also stop/start when
    ``persistent`` (an append-only file synced on every write)."""

    name = "redis"

    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        super().__init__(workdir)
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--dir", str(self.workdir),
            *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
              else ["--appendonly", "no"]),
        ]  # fmt: skip

    def is_ready(self) -> bool:
        return redis.Redis(port=self.port, socket_timeout=0.5).ping()


class MariaDBServer(ServerProcess):
    """A ``mariadbd`` with its own data folder; root has no password."""

    name = "mariadb"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.datadir = workdir / "mariadb-data"
        if not self.datadir.exists():
            subprocess.run(
                [
                    "mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                    "--auth-root-authentication-method=normal", "--skip-test-db",
                    f"--user={_current_user()}",
                ],
                check=True, capture_output=True,
            )  # fmt: skip

    def command(self) -> list[str]:
        return [
            shutil.which("mariadbd") or "/usr/sbin/mariadbd",
            "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={self.workdir / 'mariadb.sock'}",
            f"--pid-file={self.workdir / 'mariadb.pid'}", f"--user={_current_user()}",
            "--skip-log-bin", "--innodb-buffer-pool-size=64M",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        MySQLdb.connect(host="127.0.0.1", port=self.port, user="root").close()
        return True

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


class WebService(ServerProcess):
    """The service itself under gunicorn with the production settings, migrated,
    with a staff user whose token ``token`` authenticates requests."""

    name = "web"

    def __init__(self, workdir: Path, *, database_url: str, redis_url: str, **env: str) -> None:
        super().__init__(workdir)
        root = Path(__file__).resolve().parent.parent
        self.root = root
        self.python = str(Path(os.environ.get("VIRTUAL_ENV", root / ".venv")) / "bin" / "python")
        if not Path(self.python).exists():
            self.python = shutil.which("python3") or "python3"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.production",
            "SECRET_KEY": "web-service-test-only",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": f"usersvc-web-{self.port}",
            "BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": "2",
            "GUNICORN_THREADS": "4",
            "SECURE_SSL_REDIRECT": "false",
            "SECURE_COOKIES": "false",
            **env,
        }
        self.token = ""

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [self.python, "manage.py", *args], cwd=self.root, env=self.env,
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return result.stdout

    def prepare(self) -> None:
        """Migrates and creates the staff user and its token."""
        self.manage("migrate", "--no-input", "-v0")
        self.manage("shell", "-c", _CREATE_STAFF)
        self.token = self.manage("drf_create_token", "staff").split()[2]

    def command(self) -> list[str]:
        gunicorn = str(Path(self.python).parent / "gunicorn")
        return [gunicorn, "-c", "config/gunicorn.py", "config.wsgi"]

    def start(self) -> None:
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        self.process = subprocess.Popen(
            self.command(), cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        _wait(self.is_ready, f"{self.name} on port {self.port}", timeout=60)

    def is_ready(self) -> bool:
        return self.request("GET", "/api/user", token=None)[0] == 401

    def request(
        self, method: str, path: str, body: dict | None = None, *, token: str | None = ""
    ) -> tuple[int, dict, dict]:
        """Sends one request; returns (status, headers, JSON body)."""
        import http.client
        import json

        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = self.token if token == "" else token
        if token:
            headers["Authorization"] = f"Token {token}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(
                method, path, json.dumps(body) if body is not None else None, headers
            )
            response = connection.getresponse()
            raw = response.read()
            return (
                response.status,
                {name.lower(): value for name, value in response.getheaders()},
                json.loads(raw) if raw else {},
            )
        finally:
            connection.close()


_CREATE_STAFF = """
from users.models import User
User.objects.filter(username="staff").exists() or User.objects.create_user(
    username="staff", email="staff@example.com", is_staff=True
)
"""

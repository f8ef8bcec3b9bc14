"""Real server processes that a test starts, pauses, stops, kills and restarts.

Each server runs on a free loopback port with its data in a temporary folder,
so a test can break it without touching the shared MariaDB and Redis. A Redis
Cluster and a Sentinel group are made of such servers.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import MySQLdb
import redis

# Ports this process has handed out: the kernel may offer a port again once its
# probe socket is closed, and a cluster's twelve ports are chosen before any
# server binds one.
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this process handed out before."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


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

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to hand anything over."""
        self.process.kill()
        self.process.wait()
        self.process = None

    @property
    def is_running(self) -> bool:
        return self.process is not None

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)


@dataclasses.dataclass(frozen=True)
class Certificates:
    """A throwaway certificate authority and what it signed, made with the openssl
    CLI: the servers' certificate, which names 127.0.0.1 only, and a client's.
    Each is a PEM file; a certificate's key is in the file of the same name."""

    ca: Path
    server: Path
    client: Path

    @classmethod
    def make(cls, folder: Path) -> Certificates:
        folder.mkdir(parents=True, exist_ok=True)
        ca = _certificate(folder / "ca.crt", "/CN=usersvc test CA")
        return cls(
            ca=ca,
            server=_certificate(
                folder / "server.crt", "/CN=127.0.0.1", signer=ca,
                extensions=["subjectAltName=IP:127.0.0.1"],
            ),
            client=_certificate(folder / "client.crt", "/CN=usersvc", signer=ca),
        )  # fmt: skip

    @staticmethod
    def key(certificate: Path) -> Path:
        return certificate.with_suffix(".key")


def _certificate(
    path: Path, subject: str, *, signer: Path | None = None, extensions: Sequence[str] = ()
) -> Path:
    """A new key and its certificate at ``path``: self-signed (openssl's defaults make
    it a CA) without ``signer``, else a leaf certificate that ``signer`` signed."""
    signing = (
        ["-CA", str(signer), "-CAkey", str(Certificates.key(signer)),
         "-addext", "basicConstraints=CA:FALSE"]
        if signer else []
    )  # fmt: skip
    subprocess.run(
        ["openssl", "req", "-x509", "-new", "-nodes", "-days", "2", "-subj", subject,
         "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-keyout", str(Certificates.key(path)), "-out", str(path), *signing,
         *(argument for extension in extensions for argument in ("-addext", extension))],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


@dataclasses.dataclass(frozen=True)
class RedisSecurity:
    """How a test's redis-servers or sentinels are locked down, as production ones
    would be: TLS only (no plain port), client certificates required, and ACL users.

    ``admin`` may do anything; the fixtures connect as it, and so do replicas to
    their primary and sentinels to the servers and to each other. ``users`` are the
    others: name -> ACL rules, ``>password`` among them. The default user is off
    unless ``users`` has rules for ``default``.
    """

    certificates: Certificates
    users: Mapping[str, str] = dataclasses.field(default_factory=dict)

    ADMIN = "admin"
    ADMIN_PASSWORD = "admin-secret"

    def acl(self) -> str:
        """The users, in the format of an ACL file."""
        return "".join(
            f"user {name} {rules}\n"
            for name, rules in {
                "default": "off",
                self.ADMIN: f"on >{self.ADMIN_PASSWORD} ~* &* +@all",
                **self.users,
            }.items()
        )

    def directives(self, port: int, workdir: Path) -> list[tuple[str, str]]:
        """The configuration of a redis-server or sentinel listening on ``port`` with
        TLS only, its users in an ACL file in ``workdir``. Its own connections (to
        a primary, to the cluster bus, a sentinel's) use TLS and ``admin`` too."""
        aclfile = workdir / "users.acl"
        aclfile.write_text(self.acl())
        server = self.certificates.server
        return [
            ("port", "0"), ("tls-port", str(port)),
            ("tls-cert-file", str(server)), ("tls-key-file", str(Certificates.key(server))),
            ("tls-ca-cert-file", str(self.certificates.ca)), ("tls-auth-clients", "yes"),
            ("tls-replication", "yes"), ("tls-cluster", "yes"),
            ("aclfile", str(aclfile)),
        ]  # fmt: skip

    def client_kwargs(self) -> dict:
        """redis-py's arguments for a client connecting as ``admin``."""
        client = self.certificates.client
        return {
            "ssl": True, "ssl_ca_certs": str(self.certificates.ca),
            "ssl_certfile": str(client), "ssl_keyfile": str(Certificates.key(client)),
            "username": self.ADMIN, "password": self.ADMIN_PASSWORD,
        }  # fmt: skip

    def cli_arguments(self) -> list[str]:
        """redis-cli's arguments for the same."""
        client = self.certificates.client
        return [
            "--tls", "--cacert", str(self.certificates.ca),
            "--cert", str(client), "--key", str(Certificates.key(client)),
            "--user", self.ADMIN, "--pass", self.ADMIN_PASSWORD, "--no-auth-warning",
        ]  # fmt: skip


class _RedisProtocol:
    """What a redis-server and a sentinel share: answering PING on their port, with
    TLS and as ``admin`` when ``security`` says so."""

    port: int
    security: RedisSecurity | None

    def is_ready(self) -> bool:
        return self.client().ping()

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5,
            **(self.security.client_kwargs() if self.security else {}),
        )  # fmt: skip

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class RedisServer(_RedisProtocol, ServerProcess):
    """``redis-server``: its data survives pause/resume, and also stop/start when
    ``persistent`` (an append-only file synced on every write). ``options`` are
    more command-line options (a cluster node's, a replica's); ``security`` puts
    it behind TLS and ACL users."""

    name = "redis"

    def __init__(
        self,
        workdir: Path,
        *,
        persistent: bool = False,
        options: Sequence[str] = (),
        security: RedisSecurity | None = None,
    ) -> None:
        super().__init__(workdir)
        self.persistent = persistent
        self.options = list(options)
        self.security = security

    @property
    def url(self) -> str:
        scheme = "rediss" if self.security else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            *self._listening(), "--bind", "127.0.0.1",
            "--save", "", "--dir", str(self.workdir),
            *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
              else ["--appendonly", "no"]),
            *self.options,
        ]  # fmt: skip

    def _listening(self) -> list[str]:
        if self.security is None:
            return ["--port", str(self.port)]
        # A replica (of a primary, or in a cluster after a failover) logs in as admin.
        directives = [
            *self.security.directives(self.port, self.workdir),
            ("masteruser", RedisSecurity.ADMIN), ("masterauth", RedisSecurity.ADMIN_PASSWORD),
        ]  # fmt: skip
        return [argument for name, value in directives for argument in (f"--{name}", value)]


def _subfolder(workdir: Path, name: str) -> Path:
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class RedisClusterServers:
    """A Redis Cluster of three primaries with a replica each, made with
    ``redis-server --cluster-enabled yes`` and ``redis-cli --cluster create``.

    The short node timeout lets a replica take over a killed primary within about
    three seconds (the node timeout, then the replica's election).
    """

    PRIMARIES = 3
    NODE_TIMEOUT_MS = 1000

    def __init__(self, workdir: Path, *, security: RedisSecurity | None = None) -> None:
        self.security = security
        self.nodes = [
            RedisServer(
                _subfolder(workdir, f"node-{index}"), options=self._node_options(),
                security=security,
            )
            for index in range(self.PRIMARIES * 2)
        ]  # fmt: skip

    def _node_options(self) -> list[str]:
        # The bus port is chosen too: the default, port + 10000, can exceed 65535.
        return [
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.NODE_TIMEOUT_MS),
            "--cluster-port", str(free_port()),
        ]  # fmt: skip

    @property
    def seeds(self) -> list[str]:
        return [node.address for node in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", *(self.security.cli_arguments() if self.security else []),
             "--cluster", "create", *self.seeds, "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        _wait(self.is_healthy, "the Redis Cluster", timeout=30)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def is_healthy(self) -> bool:
        """Every node runs and sees every slot served, and every replica is in sync."""
        running = [node for node in self.nodes if node.is_running]
        if len(running) < len(self.nodes):
            return False
        return all(self._serves_all_slots(node) for node in running) and all(
            _replica_in_sync(node) for node in running
        )

    def primary_for(self, key: str) -> RedisServer:
        """The node that serves ``key``'s hash slot now, as a live node sees it."""
        live = next(node for node in self.nodes if node.is_running)
        client = live.client()
        slot = client.execute_command("CLUSTER", "KEYSLOT", key)
        # id, address@bus-port, flags, primary id, ping, pong, epoch, link, slots...
        for line in client.execute_command("CLUSTER", "NODES").decode().splitlines():
            fields = line.split()
            address, flags, link, ranges = fields[1], fields[2].split(","), fields[7], fields[8:]
            if "master" not in flags or "fail" in flags or link != "connected":
                continue
            if any(_in_range(slot, slot_range) for slot_range in ranges):
                port = int(address.split("@")[0].rpartition(":")[2])
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no primary serves slot {slot}")

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """The node that replicates ``primary`` now."""
        lines = [line.split() for line in primary.client().execute_command("CLUSTER", "NODES")
                 .decode().splitlines()]  # fmt: skip
        # id, address@bus-port, flags, primary id, ...
        [primary_id] = [fields[0] for fields in lines if "myself" in fields[2].split(",")]
        for fields in lines:
            if "slave" in fields[2].split(",") and fields[3] == primary_id:
                port = int(fields[1].split("@")[0].rpartition(":")[2])
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no replica of {primary.address}")

    def has_failed_over(self, killed: RedisServer, key: str) -> bool:
        """A replica serves ``key``'s slot in place of ``killed``, and the cluster is ok."""
        running = [node for node in self.nodes if node.is_running]
        return self.primary_for(key) is not killed and all(
            self._serves_all_slots(node) for node in running
        )

    def wait_for_failover(self, killed: RedisServer, key: str) -> None:
        _wait(lambda: self.has_failed_over(killed, key), "a replica's takeover", timeout=30)

    def recover(self, killed: RedisServer) -> None:
        """Restarts a killed node, which rejoins as a replica, and waits until it is in sync."""
        killed.start()
        _wait(self.is_healthy, "the Redis Cluster", timeout=30)

    @staticmethod
    def _serves_all_slots(node: RedisServer) -> bool:
        return node.client().execute_command("CLUSTER INFO")["cluster_state"] == "ok"


def _in_range(slot: int, slot_range: str) -> bool:
    if slot_range.startswith("["):  # a slot being migrated
        return False
    first, _, last = slot_range.partition("-")
    return int(first) <= slot <= int(last or first)


def _replica_in_sync(node: RedisServer) -> bool:
    replication = node.client().info("replication")
    return replication["role"] == "master" or replication["master_link_status"] == "up"


class SentinelServer(_RedisProtocol, ServerProcess):
    """``redis-server --sentinel`` watching one primary, with a short down-after."""

    name = "sentinel"
    DOWN_AFTER_MS = 1000

    def __init__(
        self,
        workdir: Path,
        *,
        service: str,
        primary: RedisServer,
        quorum: int,
        security: RedisSecurity | None = None,
    ) -> None:
        super().__init__(workdir)
        self.security = security
        directives = [
            *(security.directives(self.port, workdir) if security else [("port", str(self.port))]),
            ("bind", "127.0.0.1"), ("dir", str(workdir)),
            ("sentinel monitor", f"{service} 127.0.0.1 {primary.port} {quorum}"),
            ("sentinel down-after-milliseconds", f"{service} {self.DOWN_AFTER_MS}"),
            ("sentinel failover-timeout", f"{service} 10000"),
        ]  # fmt: skip
        if primary.security:
            directives += [
                ("sentinel auth-user", f"{service} {RedisSecurity.ADMIN}"),
                ("sentinel auth-pass", f"{service} {RedisSecurity.ADMIN_PASSWORD}"),
            ]
        if security:
            directives += [
                ("sentinel sentinel-user", RedisSecurity.ADMIN),
                ("sentinel sentinel-pass", RedisSecurity.ADMIN_PASSWORD),
            ]
        self.config = workdir / "sentinel.conf"
        self.config.write_text("".join(f"{name} {value}\n" for name, value in directives))

    def command(self) -> list[str]:
        return [shutil.which("redis-server") or "/usr/bin/redis-server", str(self.config),
                "--sentinel"]  # fmt: skip


class SentinelGroup:
    """A primary, its replica and three sentinels (quorum two): Redis high
    availability without sharding. ``security`` locks down the two servers and
    ``sentinel_security`` the sentinels, which keep users of their own."""

    def __init__(
        self,
        workdir: Path,
        *,
        service: str = "usersvc-test",
        security: RedisSecurity | None = None,
        sentinel_security: RedisSecurity | None = None,
    ) -> None:
        self.service = service
        primary = RedisServer(_subfolder(workdir, "primary"), security=security)
        replica = RedisServer(
            _subfolder(workdir, "replica"), security=security,
            options=["--replicaof", "127.0.0.1", str(primary.port)],
        )  # fmt: skip
        self.servers = [primary, replica]
        self.sentinels = [
            SentinelServer(
                _subfolder(workdir, f"sentinel-{index}"), service=service, primary=primary,
                quorum=2, security=sentinel_security,
            )
            for index in range(3)
        ]  # fmt: skip

    @property
    def sentinel_addresses(self) -> list[str]:
        return [sentinel.address for sentinel in self.sentinels]

    def start(self) -> None:
        for process in [*self.servers, *self.sentinels]:
            process.start()
        _wait(self.is_healthy, "the Sentinel group", timeout=30)

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.stop()

    def primary_for(self, key: str) -> RedisServer:
        """The server the sentinels name as primary now (it holds every key)."""
        _host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(self.service)
        return next(server for server in self.servers if server.port == int(port))

    def is_healthy(self) -> bool:
        """Both servers run, one primary and one replica in sync, and every sentinel
        knows the other two and the replica, so that a failover can be agreed on."""
        if not all(server.is_running for server in self.servers):
            return False
        roles = [server.client().info("replication")["role"] for server in self.servers]
        if sorted(roles) != ["master", "slave"]:
            return False
        if not all(_replica_in_sync(server) for server in self.servers):
            return False
        for sentinel in self.sentinels:
            state = sentinel.client().sentinel_master(self.service)
            if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                return False
        return True

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """The other server, which replicates ``primary``."""
        return next(server for server in self.servers if server is not primary)

    def has_failed_over(self, killed: RedisServer, key: str) -> bool:
        """Every sentinel names a primary other than ``killed``, and it accepts writes."""
        for sentinel in self.sentinels:
            _host, port = sentinel.client().sentinel_get_master_addr_by_name(self.service)
            if int(port) == killed.port:
                return False
        return self.primary_for(key).client().info("replication")["role"] == "master"

    def wait_for_failover(self, killed: RedisServer, key: str) -> None:
        _wait(lambda: self.has_failed_over(killed, key), "the sentinels' failover", timeout=30)

    def recover(self, killed: RedisServer) -> None:
        """Restarts the killed primary as a replica of the new one, as an operator
        would (the sentinels would convert it too, but only after their next
        ten-second look at it)."""
        killed.options = ["--replicaof", "127.0.0.1", str(self.primary_for("").port)]
        killed.start()
        _wait(self.is_healthy, "the Sentinel group", timeout=30)


class MariaDBServer(ServerProcess):
    """A ``mariadbd`` with its own data folder; root has no password. With ``binlog``
    it writes the binary log as the follower needs it (users/binlog/server.py),
    else none."""

    name = "mariadb"
    # Root logs in with its password (none) over TCP too.
    INSTALL_OPTIONS: tuple[str, ...] = ("--auth-root-authentication-method=normal",)
    BINLOG_OPTIONS = (
        "--log-bin=binlog", "--server-id=1", "--binlog-format=ROW",
        "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
    )  # fmt: skip

    def __init__(self, workdir: Path, *, binlog: bool = False) -> None:
        super().__init__(workdir)
        self.binlog = binlog
        self.datadir = workdir / "mariadb-data"
        self.socket = workdir / "mariadb.sock"
        if not self.datadir.exists():
            subprocess.run(
                [
                    "mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                    *self.INSTALL_OPTIONS, "--skip-test-db", f"--user={_current_user()}",
                ],
                check=True, capture_output=True,
            )  # fmt: skip

    def command(self) -> list[str]:
        return [
            shutil.which("mariadbd") or "/usr/sbin/mariadbd",
            "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={self.socket}",
            f"--pid-file={self.workdir / 'mariadb.pid'}", f"--user={_current_user()}",
            *(self.BINLOG_OPTIONS if self.binlog else ["--skip-log-bin"]),
            "--innodb-buffer-pool-size=64M",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        MySQLdb.connect(host="127.0.0.1", port=self.port, user="root").close()
        return True

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"


class StockMariaDBServer(MariaDBServer):
    """A ``mariadbd`` as ``mariadb-install-db`` makes it by default, and as Debian's
    mariadb-server is: root, and the user who made it, log in over the unix socket
    only, so root over TCP (``url``) is refused."""

    INSTALL_OPTIONS = ()

    def is_ready(self) -> bool:
        MySQLdb.connect(unix_socket=str(self.socket), user=_current_user()).close()
        return True


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


PROJECT_ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def project_python() -> str:
    """The project's virtualenv's python (the one running, under ./scripts/test)."""
    python = Path(os.environ.get("VIRTUAL_ENV", PROJECT_ROOT / ".venv")) / "bin" / "python"
    return str(python) if python.exists() else shutil.which("python3") or "python3"


@functools.cache
def collected_static_files() -> Path:
    """The static files, collected once per process into a folder of its own, as a
    deployment does before it starts the service: under the production settings
    a worker refuses to start without their manifest (config/checks.py)."""
    folder = Path(tempfile.mkdtemp(prefix="usersvc-static-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    subprocess.run(
        [project_python(), "manage.py", "collectstatic", "--no-input", "-v0"],
        cwd=PROJECT_ROOT, check=True, capture_output=True,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.production",
            "SECRET_KEY": "collectstatic-only-" + "0123456789abcdefghijklmnopqrstuvwxyz",
            "STATIC_ROOT": str(folder),
        },
    )  # fmt: skip
    return folder


class WebService(ServerProcess):
    """The service itself under gunicorn with the production settings, migrated,
    with a staff user whose token ``token`` authenticates requests. It is started
    as a deployment starts it, ``gunicorn config.wsgi`` in the project's root
    (which reads gunicorn.conf.py), with the static files collected."""

    name = "web"

    def __init__(
        self, workdir: Path, *, database_url: str, redis_url: str | None = None, **env: str
    ) -> None:
        super().__init__(workdir)
        self.root = PROJECT_ROOT
        self.python = project_python()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.production",
            "SECRET_KEY": "web-service-test-only-" + "0123456789abcdefghijklmnopqrstuvwxyz",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DATABASE_URL": database_url,
            # Or, without redis_url, the Redis variables (REDIS_CLUSTER_NODES, ...) in env.
            **({"REDIS_URL": redis_url} if redis_url else {}),
            "CACHE_KEY_PREFIX": f"usersvc-web-{self.port}",
            "BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": "2",
            "GUNICORN_THREADS": "4",
            "SECURE_SSL_REDIRECT": "false",
            "SECURE_COOKIES": "false",
            **({} if "STATIC_ROOT" in env else {"STATIC_ROOT": str(collected_static_files())}),
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
        return [gunicorn, "config.wsgi"]

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
from django.contrib.auth.models import Permission
from users.models import User
if not User.objects.filter(username="staff").exists():
    staff = User.objects.create_user(username="staff", email="staff@example.com", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="users", codename__in=["add_user", "change_user", "delete_user"]
    ))
"""


@contextlib.contextmanager
def service_stack(
    workdir: Path, *, binlog: bool = False, **env: str
) -> Iterator[tuple[MariaDBServer, RedisServer, WebService]]:
    """Its own mariadbd (writing the binary log with ``binlog``) and redis-server, and
    the service on them, migrated and with its staff user (not started: the caller
    may prepare more first). Stops all three."""
    mariadb, redis_server = MariaDBServer(workdir, binlog=binlog), RedisServer(workdir)
    mariadb.start()
    try:
        redis_server.start()
        connection = MySQLdb.connect(host="127.0.0.1", port=mariadb.port, user="root")
        connection.cursor().execute("CREATE DATABASE usersvc CHARACTER SET utf8mb4")
        connection.close()
        web = WebService(
            workdir, database_url=mariadb.url("usersvc"), redis_url=redis_server.url, **env
        )
        try:
            web.prepare()
            yield mariadb, redis_server, web
        finally:
            web.stop()
    finally:
        redis_server.stop()
        mariadb.stop()


class BinlogFollower(ServerProcess):
    """``manage.py follow_binlog`` in the environment ``env`` (the web service's, so
    that it names the same Redis keys), its metrics on a port of its own. Ready once
    it reads the binary log: a change committed after ``start`` returns is after
    the position it started from."""

    name = "follower"

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        super().__init__(workdir)
        self.env = {**env, "FOLLOWER_METRICS_BIND": self.address}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [project_python(), "manage.py", "follow_binlog"]

    def start(self) -> None:
        log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        self.process = subprocess.Popen(
            self.command(), cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        _wait(self.is_ready, f"{self.name} on port {self.port}", timeout=60)

    def is_ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"follow_binlog exited: {self.log()}")
        return self.metrics().get("usersvc_binlog_connected") == 1

    def metrics(self) -> dict[str, float]:
        """Its metrics by name and labels as exposed (``usersvc_binlog_rows_total{...}``)."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            name: float(value)
            for name, _, value in (line.rpartition(" ") for line in text.splitlines())
            if name and not name.startswith("#")
        }

    def log(self) -> str:
        return (self.workdir / f"{self.name}.log").read_text(errors="replace")


class NginxServer(ServerProcess):
    """nginx in front of ``upstream`` (gunicorn's address) with the repository's
    site and proxy configuration (deploy/nginx) as they are, in a main
    configuration of its own that keeps its pid file, logs and buffers here."""

    name = "nginx"

    def __init__(self, workdir: Path, *, upstream: str) -> None:
        super().__init__(workdir)
        conf = _subfolder(workdir, "nginx")
        _subfolder(conf, "snippets")
        deploy = PROJECT_ROOT / "deploy" / "nginx"
        shutil.copy(deploy / "usersvc-proxy.conf", conf / "snippets")
        site = string.Template((deploy / "usersvc.conf.template").read_text())
        (conf / "usersvc.conf").write_text(
            site.substitute(USERSVC_UPSTREAM=upstream, USERSVC_LISTEN=f"127.0.0.1:{self.port}")
        )
        temp = "\n".join(
            f"    {kind}_temp_path {_subfolder(conf, kind)};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.config = conf / "nginx.conf"
        self.config.write_text(
            f"user {_current_user()};\nworker_processes 1;\npid {conf / 'nginx.pid'};\n"
            f"error_log {conf / 'error.log'};\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log off;\n{temp}\n    include usersvc.conf;\n}}\n"
        )

    def command(self) -> list[str]:
        return [NGINX, "-e", "stderr", "-c", str(self.config), "-g", "daemon off;"]

    def is_ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True

"""The setup scripts on machines that are not ready yet.

On a stock MariaDB, where root logs in over the unix socket only (Debian's
mariadb-server, mariadb-install-db's defaults), scripts/create_database.py gives
the checkout a database account of its own, or says in one line what to run.
Each of those tests runs the script from a checkout of its own (a copy in a
temporary folder), so the account and its local.env never touch this checkout's.
.ci/run also runs ./scripts/test and ./scripts/run end to end against such a
server (.ci/stock-mariadb).

scripts/setup.sh's ensure_stores, on a machine without MySQL or Redis, or with a
mariadbd on another port, runs against loopback ports that nothing listens on,
with the programs that would change the machine (apt-get, sudo, start-stop-daemon,
docker) replaced by shims in PATH that only record how they were called. A machine
without the servers is made by a mount and PID namespace of its own (root only),
where the servers' programs are hidden and the machine's running servers unseen.
"""

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import MySQLdb
import pytest

from tests.servers import PROJECT_ROOT, RedisServer, StockMariaDBServer, project_python

pytestmark = pytest.mark.slow

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="logs in as MariaDB's root over the unix socket: run as root"
)


@pytest.fixture(scope="module")
def stock_mariadb(tmp_path_factory):
    server = StockMariaDBServer(tmp_path_factory.mktemp("stock"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A checkout of the script alone: its account's name and its local.env come
    from the folder it lies in."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(PROJECT_ROOT / "scripts" / "create_database.py", tmp_path / "scripts")
    return tmp_path


def _create_database(checkout: Path, server: StockMariaDBServer, **env: str):
    return subprocess.run(
        [project_python(), str(checkout / "scripts" / "create_database.py")],
        cwd=checkout, capture_output=True, text=True, timeout=120,
        env={
            **os.environ,
            "DATABASE_URL": server.url("usersvc"),
            "DATABASE_ADMIN_SOCKET": str(server.socket),
            **env,
        },
    )  # fmt: skip


def _connect(url: str) -> MySQLdb.Connection:
    parts = urlsplit(url)
    return MySQLdb.connect(
        host=parts.hostname, port=parts.port, user=parts.username, password=parts.password
    )


def test_root_is_refused_over_tcp(stock_mariadb):
    with pytest.raises(MySQLdb.OperationalError) as refused:
        MySQLdb.connect(host="127.0.0.1", port=stock_mariadb.port, user="root")

    assert refused.value.args[0] == 1698


@needs_root
def test_as_root_the_checkout_gets_an_account_of_its_own(stock_mariadb, checkout):
    result = _create_database(checkout, stock_mariadb)

    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    account = urlsplit(url)
    assert account.username.startswith("usersvc_")
    assert (account.hostname, account.port, account.path) == (
        "127.0.0.1",
        stock_mariadb.port,
        "/usersvc",
    )
    local_env = checkout / "local.env"
    assert f"DATABASE_URL={url}\n" in local_env.read_text()
    assert stat.S_IMODE(local_env.stat().st_mode) == 0o600
    assert "created the MariaDB account" in result.stderr
    # What the service and the test suite need, and no more.
    connection = _connect(url)
    with connection.cursor() as cursor:
        cursor.execute("SHOW DATABASES LIKE 'usersvc'")
        assert cursor.fetchall() == (("usersvc",),)
        cursor.execute("CREATE DATABASE test_usersvc_0123abcd")
        cursor.execute("DROP DATABASE test_usersvc_0123abcd")
        with pytest.raises(MySQLdb.OperationalError) as denied:
            cursor.execute("CREATE DATABASE elsewhere")
    connection.close()
    assert denied.value.args[0] == 1044


@needs_root
def test_a_second_run_uses_the_saved_account(stock_mariadb, checkout):
    first = _create_database(checkout, stock_mariadb)
    second = _create_database(checkout, stock_mariadb)

    assert (first.returncode, second.returncode) == (0, 0)
    assert second.stdout == first.stdout
    assert "created" not in second.stderr


@needs_root
def test_a_lost_local_env_gets_the_account_a_new_password(stock_mariadb, checkout):
    first = _create_database(checkout, stock_mariadb)
    (checkout / "local.env").unlink()

    second = _create_database(checkout, stock_mariadb)

    assert second.returncode == 0, second.stderr
    assert urlsplit(second.stdout).username == urlsplit(first.stdout).username
    _connect(second.stdout.strip()).close()
    with pytest.raises(MySQLdb.OperationalError):
        _connect(first.stdout.strip())


@needs_root
def test_an_unreachable_admin_socket_is_one_line(stock_mariadb, checkout):
    result = _create_database(
        checkout, stock_mariadb, DATABASE_ADMIN_SOCKET=str(checkout / "nothing.sock")
    )

    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "as root over the unix socket" in result.stderr


def test_without_root_or_sudo_it_says_in_one_line_what_to_run(
    stock_mariadb, checkout, monkeypatch, capsys
):
    """Run by a user who is not root and has no sudo: nothing is created, and the
    one line names the command."""
    script = checkout / "scripts" / "create_database.py"
    spec = importlib.util.spec_from_file_location("create_database", script)
    create_database = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(create_database)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "sudo" else which(name))
    monkeypatch.setenv("DATABASE_URL", stock_mariadb.url("usersvc"))
    monkeypatch.setenv("DATABASE_ADMIN_SOCKET", str(stock_mariadb.socket))

    status = create_database.main()

    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("error: MariaDB lets root log in over its unix socket only: run 'sudo")
    assert f"--preserve-env=DATABASE_URL,DATABASE_ADMIN_SOCKET {sys.executable}" in err
    assert f"{script}' once" in err
    assert not (checkout / "local.env").exists()


# The programs that would change the machine: each records its arguments in a log
# of its own name, then does what the test says (by default: fail).
_SHIM = """#!/bin/sh
printf '%s\\n' "$*" >> "{log}"
{then}
"""
# What the servers' programs are called, wherever they are installed.
_SERVER_PROGRAMS = ("mariadbd", "mysqld", "redis-server")


class Machine:
    """The shims folder and what the shims recorded."""

    def __init__(self, folder: Path) -> None:
        self.shims = folder / "shims"
        self.shims.mkdir()
        self.logs = folder / "logs"
        self.logs.mkdir()
        for program in ("apt-get", "start-stop-daemon", "docker"):
            self.shim(program, "exit 1")
        self.shim("sleep", 'exec /bin/sleep "$@"')

    def shim(self, program: str, then: str) -> None:
        path = self.shims / program
        path.write_text(_SHIM.format(log=self.logs / program, then=then))
        path.chmod(0o755)

    def as_user_without_sudo(self) -> None:
        self.shim("id", '[ "$1" = -u ] && echo 1000 || exec /usr/bin/id "$@"')
        self.shim("sudo", "exit 1")

    def as_user_with_passwordless_sudo(self) -> None:
        self.shim("id", '[ "$1" = -u ] && echo 1000 || exec /usr/bin/id "$@"')
        self.shim("sudo", '[ "$1" = -n ] && shift; exec "$@"')

    def calls(self, program: str) -> list[str]:
        log = self.logs / program
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def machine(tmp_path) -> Machine:
    return Machine(tmp_path)


_NAMESPACES = ["unshare", "--mount", "--pid", "--fork", "--mount-proc"]


@pytest.fixture
def can_hide_servers() -> None:
    """Whether this machine lets the test make one without the servers: a mount and
    PID namespace needs root (and, in a container, CAP_SYS_ADMIN). CI must."""
    probe = subprocess.run([*_NAMESPACES, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = f"cannot make a machine without the servers: {probe.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def _unused_port():
    """A loopback port held bound and never listened on: connections are refused
    and nothing else takes it meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def _ensure_stores(
    machine: Machine,
    *,
    database_url: str,
    redis_url: str,
    without_servers: bool = False,
    terminal_input: str | None = None,
) -> subprocess.CompletedProcess:
    """scripts/setup.sh's ensure_stores, with the shims first in PATH; on a machine
    without the servers' programs or processes with ``without_servers``; with a
    terminal that the user types ``terminal_input`` into, if given."""
    command = ["bash", "-c", "source scripts/setup.sh && ensure_stores"]
    if without_servers:
        hidden = [
            path for folder in ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin",
                                "/usr/bin", "/bin")
            for program in _SERVER_PROGRAMS
            if os.path.isfile(path := f"{folder}/{program}")
        ]  # fmt: skip
        hide = "".join(f"mount --bind /dev/null {path} && " for path in hidden)
        command = [*_NAMESPACES, "sh", "-c", f'{hide}exec "$@"', "--", *command]
    env = {
        **os.environ,
        "PATH": f"{machine.shims}:{os.environ['PATH']}",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
    }
    env.pop("CI", None)
    if terminal_input is None:
        return subprocess.run(
            command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    controller, terminal = os.openpty()
    try:
        os.write(controller, terminal_input.encode())
        return subprocess.run(
            command, cwd=PROJECT_ROOT, env=env, stdin=terminal,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(terminal)
        os.close(controller)


@contextlib.contextmanager
def _no_stores():
    with _unused_port() as mysql_port, _unused_port() as redis_port:
        yield f"mysql://root@127.0.0.1:{mysql_port}/usersvc", f"redis://127.0.0.1:{redis_port}/0"


def _reported_both(result: subprocess.CompletedProcess, database_url: str, redis_url: str) -> None:
    """One run names both missing servers and the one command that installs them."""
    assert result.returncode == 1, result.stderr
    # (After a question, the first error follows on the same line: the answer's
    # newline went to the terminal.)
    lines = re.findall(r"error: .*", result.stderr)
    mysql_address = urlsplit(database_url).netloc.split("@")[1]
    redis_address = urlsplit(redis_url).netloc
    assert any(mysql_address in line and "MariaDB (mariadbd)" in line for line in lines), lines
    assert any(redis_address in line and "Redis (redis-server)" in line for line in lines), lines
    assert lines[-1] == (
        "error: to install: 'sudo apt-get install mariadb-server redis-server' (or install"
        " Docker); or set DATABASE_URL and REDIS_URL to servers that run."
    )


@pytest.mark.usefixtures("can_hide_servers")
@pytest.mark.parametrize(
    "user", ["without_sudo", "with_passwordless_sudo"], ids=["no sudo", "sudo, no terminal"]
)
def test_without_either_server_one_run_reports_both_and_installs_nothing(machine, user):
    """A user's run that cannot, or without a terminal may not, install anything."""
    getattr(machine, f"as_user_{user}")()
    with _no_stores() as (database_url, redis_url):
        result = _ensure_stores(
            machine, database_url=database_url, redis_url=redis_url, without_servers=True
        )

    _reported_both(result, database_url, redis_url)
    assert machine.calls("apt-get") == []
    assert machine.calls("start-stop-daemon") == []


@pytest.mark.usefixtures("can_hide_servers")
def test_as_root_without_a_terminal_both_servers_are_installed_at_once(machine):
    """As CI runs it: installed the way the build packages are, without asking. (The
    shim installs nothing, so the run then reports that neither could be started.)"""
    machine.shim("apt-get", "exit 0")
    with _no_stores() as (database_url, redis_url):
        result = _ensure_stores(
            machine, database_url=database_url, redis_url=redis_url, without_servers=True
        )

    assert machine.calls("apt-get") == ["update -qq", "install -y -qq mariadb-server redis-server"]
    assert "installing mariadb-server redis-server" in result.stderr
    assert "[Y/n]" not in result.stderr
    assert result.returncode == 1
    assert "no MySQL could be started" in result.stderr
    assert "no Redis could be started" in result.stderr


@pytest.mark.usefixtures("can_hide_servers")
@pytest.mark.parametrize(
    ("answer", "installs"), [("\n", True), ("y\n", True), ("n\n", False)], ids=["enter", "y", "n"]
)
def test_on_a_terminal_it_asks_before_installing(machine, answer, installs):
    machine.as_user_with_passwordless_sudo()
    machine.shim("apt-get", "exit 0")
    with _no_stores() as (database_url, redis_url):
        result = _ensure_stores(
            machine, database_url=database_url, redis_url=redis_url, without_servers=True,
            terminal_input=answer,
        )  # fmt: skip

    question = "install mariadb-server redis-server (Debian's packages, with apt-get as root)?"
    assert f"{question} [Y/n]" in result.stderr
    if installs:
        assert [call for call in machine.calls("sudo") if call != "-n true"] == [
            "apt-get update -qq",
            "env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server redis-server",
        ]
        assert machine.calls("apt-get") == [
            "update -qq",
            "install -y -qq mariadb-server redis-server",
        ]
    else:
        assert machine.calls("apt-get") == []
        _reported_both(result, database_url, redis_url)


def test_a_mariadbd_on_another_port_is_reported_at_once(machine, stock_mariadb, tmp_path):
    """Nothing on DATABASE_URL's port, but a mariadbd runs on another: said at once,
    with the port it listens on, rather than after waiting for one to start."""
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    try:
        with _unused_port() as port:
            result = _ensure_stores(
                machine, database_url=f"mysql://root@127.0.0.1:{port}/usersvc",
                redis_url=redis_server.url,
            )  # fmt: skip
    finally:
        redis_server.stop()

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: mariadbd runs, but not on 127.0.0.1:{port} (DATABASE_URL)")
    assert f"pid {stock_mariadb.process.pid} listens on 127.0.0.1:{stock_mariadb.port}" in line
    assert machine.calls("sleep") == []
    assert machine.calls("start-stop-daemon") == []

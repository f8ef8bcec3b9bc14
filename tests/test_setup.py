"""The setup on a stock MariaDB, where root logs in over the unix socket only
(Debian's mariadb-server, mariadb-install-db's defaults): scripts/create_database.py
gives the checkout a database account of its own, or says in one line what to run.

Each test runs the script from a checkout of its own (a copy in a temporary
folder), so the account and its local.env never touch this checkout's. .ci/run
also runs ./scripts/test and ./scripts/run end to end against such a server
(.ci/stock-mariadb).
"""

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import MySQLdb
import pytest

from tests.servers import PROJECT_ROOT, StockMariaDBServer, project_python

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

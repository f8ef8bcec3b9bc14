"""Creates the database named by DATABASE_URL when it does not exist yet (utf8mb4),
then prints the DATABASE_URL to use. Errors are one line on stderr, exit status 1.

Works for mysql:// and tidb:// alike: TiDB speaks MySQL's protocol.

A stock MariaDB (Debian's mariadb-server, or mariadb-install-db with its
defaults) lets root log in over its unix socket only, so the default URL, root
without a password over TCP, is refused. Then this checkout gets a database
account of its own: if this script may act as root (it runs as root, or sudo
needs no password), the MariaDB client logs in as root over the unix socket
(DATABASE_ADMIN_SOCKET, else the client's default) and creates the account,
with a generated password and all privileges on the service's database and on
the test suite's ``test_<name>_*`` databases, and the account's URL is written
to local.env (git-ignored), which the settings read and this script reuses.
Otherwise it says in one line what to run.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import environ
import MySQLdb

ROOT = Path(__file__).resolve().parent.parent
LOCAL_ENV = ROOT / "local.env"
DEFAULT_URL = "mysql://root@127.0.0.1:3306/usersvc"
CONNECT_WAIT_S = 30
# Worth waiting for: nothing answers yet. Anything else is final at once.
SERVER_UNREACHABLE = {2002, 2003, 2006, 2013}
ACCESS_DENIED = {1045, 1698}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class SetupError(Exception):
    """A one-line reason for the person running the setup."""


def main() -> int:
    url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    try:
        check_url(url)
        url = working_url(url)
        create_database(url)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except MySQLdb.MySQLError as error:
        print(f"error: MySQL: {error.args[-1]}", file=sys.stderr)
        return 1
    print(url)
    return 0


def check_url(url: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        valid = False
    else:
        valid = parts.scheme in ("mysql", "tidb") and bool(parts.path.strip("/"))
    if not valid:
        raise SetupError(
            "DATABASE_URL must look like mysql://user:password@host:3306/name (tidb:// for TiDB)"
        )


def working_url(url: str) -> str:
    """``url``, or this checkout's own account where ``url`` is root refused over TCP."""
    try:
        connect(url).close()
        return url
    except MySQLdb.OperationalError as error:
        if error.args[0] not in ACCESS_DENIED or not _is_local_root_without_password(url):
            raise SetupError(_refused(url, error)) from None
    saved = _saved_account_url()
    if saved and _same_database(saved, url):
        try:
            connect(saved).close()
            return saved
        except MySQLdb.OperationalError as error:
            if error.args[0] not in ACCESS_DENIED:
                raise SetupError(_refused(saved, error)) from None
    account_url = create_checkout_account(url)
    connect(account_url).close()
    return account_url


def connect(url: str) -> MySQLdb.Connection:
    """A connection (no database selected), waiting up to CONNECT_WAIT_S for a
    server that does not answer yet."""
    config = environ.Env.db_url_config(url)
    arguments = {
        "host": config.get("HOST") or "127.0.0.1",
        "port": int(config.get("PORT") or 3306),
        "user": config.get("USER") or "root",
        "password": config.get("PASSWORD") or "",
        "connect_timeout": 5,
    }
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        try:
            return MySQLdb.connect(**arguments)
        except MySQLdb.OperationalError as error:
            if error.args[0] not in SERVER_UNREACHABLE:
                raise
            if time.monotonic() > deadline:
                raise SetupError(
                    f"nothing answered as MySQL on {arguments['host']}:{arguments['port']}"
                    f" within {CONNECT_WAIT_S} s: {error.args[1]}"
                ) from None
            time.sleep(0.5)


def create_database(url: str) -> None:
    name = environ.Env.db_url_config(url)["NAME"].replace("`", "``")
    connection = connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE DATABASE IF NOT EXISTS `{name}`"
                " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
    except MySQLdb.MySQLError as error:
        raise SetupError(f"could not create the database {name}: {error.args[-1]}") from None
    finally:
        connection.close()


def create_checkout_account(refused_url: str) -> str:
    """Creates (or resets the password of) this checkout's account, as root over the
    unix socket, saves its URL in local.env and returns it."""
    admin = _admin_client()
    port, skip_name_resolve = _run_as_admin(admin, "SELECT @@port, @@skip_name_resolve").split()
    parts = urlsplit(refused_url)
    if int(port) != (parts.port or 3306):
        raise SetupError(
            f"the MariaDB on the unix socket listens on port {port}, not on DATABASE_URL's"
            f" {parts.port or 3306}: set DATABASE_ADMIN_SOCKET to the socket of the server"
            " DATABASE_URL names"
        )
    # An account at 'localhost' also matches TCP from 127.0.0.1, unless the server
    # skips resolving addresses to names.
    host = parts.hostname if skip_name_resolve == "1" else "localhost"
    account = f"usersvc_{hashlib.sha1(str(ROOT).encode()).hexdigest()[:8]}"
    password = secrets.token_hex(24)
    name = environ.Env.db_url_config(refused_url)["NAME"]
    grantee = f"'{account}'@'{host}'"
    _run_as_admin(
        admin,
        f"CREATE USER IF NOT EXISTS {grantee} IDENTIFIED BY '{password}';"
        f" ALTER USER {grantee} IDENTIFIED BY '{password}';"
        f" GRANT ALL PRIVILEGES ON `{_grant_pattern(name)}`.* TO {grantee};"
        f" GRANT ALL PRIVILEGES ON `{_grant_pattern(f'test_{name}_')}%`.* TO {grantee};",
    )
    netloc = f"{account}:{password}@{_url_host(parts.hostname)}:{parts.port or 3306}"
    account_url = parts._replace(netloc=netloc).geturl()
    _save_account_url(account_url)
    print(
        f"==> created the MariaDB account {account}@{host} for this checkout;"
        f" its DATABASE_URL is in {LOCAL_ENV}",
        file=sys.stderr,
    )
    return account_url


def _admin_client() -> list[str]:
    """The MariaDB client logged in as root over the unix socket: run as root, or
    through sudo when sudo needs no password."""
    client = shutil.which("mariadb") or shutil.which("mysql")
    command = [client or "mariadb", "--protocol=socket", "--user=root", "--batch"]
    command += ["--skip-column-names"]
    if socket := os.environ.get("DATABASE_ADMIN_SOCKET"):
        command.append(f"--socket={socket}")
    if os.geteuid() == 0:
        prefix = []
    elif shutil.which("sudo") and _sudo_needs_no_password():
        prefix = ["sudo", "-n"]
    else:
        raise SetupError(_run_this_as_root())
    if client is None:
        raise SetupError(
            "MariaDB refuses root over TCP and the mariadb client is missing:"
            " install it ('sudo apt-get install mariadb-client') and run this again"
        )
    return prefix + command


def _run_as_admin(admin: list[str], sql: str) -> str:
    result = subprocess.run(admin, input=sql, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise SetupError(f"{shlex.join(admin)} as root over the unix socket: {reason}")
    return result.stdout.strip()


def _sudo_needs_no_password() -> bool:
    return subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0


def _run_this_as_root() -> str:
    kept = [name for name in ("DATABASE_URL", "DATABASE_ADMIN_SOCKET") if os.environ.get(name)]
    sudo = f"sudo --preserve-env={','.join(kept)}" if kept else "sudo"
    return (
        "MariaDB lets root log in over its unix socket only: run"
        f" '{sudo} {sys.executable} {Path(__file__).resolve()}' once to give this checkout"
        " a database account of its own, or set DATABASE_URL to an account that may"
        " create databases"
    )


def _refused(url: str, error: MySQLdb.OperationalError) -> str:
    parts = urlsplit(url)
    return (
        f"MySQL on {parts.hostname}:{parts.port or 3306} refused {parts.username or 'root'}:"
        f" {error.args[1]} (check DATABASE_URL's user and password)"
    )


def _is_local_root_without_password(url: str) -> bool:
    parts = urlsplit(url)
    return (
        parts.scheme == "mysql"
        and (parts.username or "root") == "root"
        and not parts.password
        and (parts.hostname or "127.0.0.1") in LOCAL_HOSTS
    )


def _same_database(first: str, second: str) -> bool:
    a, b = urlsplit(first), urlsplit(second)
    return (a.hostname, a.port or 3306, a.path) == (b.hostname, b.port or 3306, b.path)


def _saved_account_url() -> str | None:
    if not LOCAL_ENV.exists():
        return None
    for line in LOCAL_ENV.read_text().splitlines():
        if line.startswith("DATABASE_URL="):
            return line.removeprefix("DATABASE_URL=")
    return None


def _save_account_url(url: str) -> None:
    LOCAL_ENV.touch(mode=0o600)
    LOCAL_ENV.write_text(
        "# This checkout's own database account, made by scripts/create_database.py because\n"
        "# MariaDB lets root log in over its unix socket only. The settings read it when\n"
        "# DATABASE_URL is not set. Not in git.\n"
        f"DATABASE_URL={url}\n"
    )
    if os.geteuid() == 0:  # under sudo: the file belongs to whoever owns the checkout
        owner = ROOT.stat()
        os.chown(LOCAL_ENV, owner.st_uid, owner.st_gid)


def _grant_pattern(name: str) -> str:
    """A database name as a GRANT's pattern, where _ and % are wildcards."""
    return name.replace("`", "``").replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%")


def _url_host(host: str | None) -> str:
    host = host or "127.0.0.1"
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(main())

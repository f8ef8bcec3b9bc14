"""The bench database: created empty, migrated, loaded with N users, dropped at the end."""

import datetime
import secrets

import MySQLdb
from django.conf import settings
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection
from rest_framework.authtoken.models import Token

from users.models import User

from .environment import BENCH_DATABASE, BULK_DATABASE

STAFF_USERNAME = "bench-staff"
_BATCH_ROWS = 10_000
_FIRST_NAMES = ("Ada", "Alan", "Barbara", "Edsger", "Frances", "Grace", "John", "Katherine")
_LAST_NAMES = ("Allen", "Hopper", "Johnson", "Knuth", "Liskov", "Lovelace", "Turing", "Wirth")
_COLUMNS = (
    "id",
    "password",
    "is_superuser",
    "username",
    "first_name",
    "last_name",
    "email",
    "is_staff",
    "is_active",
    "date_joined",
    "updated_at",
    "version",
)
_INSERT = (
    f"INSERT INTO {User._meta.db_table} ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(_COLUMNS))})"
)


def _server_connection() -> MySQLdb.Connection:
    database = settings.DATABASES["default"]
    assert database["NAME"] in (BENCH_DATABASE, BULK_DATABASE), (
        f"the bench only creates and drops its own databases, not {database['NAME']!r}"
    )
    return MySQLdb.connect(
        host=database["HOST"] or "127.0.0.1",
        port=int(database["PORT"] or 3306),
        user=database["USER"] or "root",
        password=database["PASSWORD"] or "",
    )


def recreate_database() -> None:
    """An empty bench database, whatever an interrupted run left behind, then migrated."""
    server = _server_connection()
    with server.cursor() as cursor:
        name = settings.DATABASES["default"]["NAME"]
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    server.close()
    call_command("migrate", interactive=False, verbosity=0)


def _user_rows(first_id: int, last_id: int, now: datetime.datetime):
    # Every loaded user has no usable password, as an API create without one does,
    # and the version a create gives a row (the time in microseconds), which takes
    # as many bytes in the cached entry as a real one.
    unusable_password = "!" + secrets.token_urlsafe(30)
    version = (now - datetime.datetime(1970, 1, 1)) // datetime.timedelta(microseconds=1)
    joined_base = now - datetime.timedelta(days=365)
    for user_id in range(first_id, last_id + 1):
        name = f"user{user_id:07d}"
        yield (
            user_id,
            unusable_password,
            False,
            name,
            _FIRST_NAMES[user_id % len(_FIRST_NAMES)],
            _LAST_NAMES[user_id // len(_FIRST_NAMES) % len(_LAST_NAMES)],
            f"{name}@example.com",
            False,
            True,
            joined_base + datetime.timedelta(seconds=user_id),
            now,
            version,
        )


def load_users(first: int, last: int) -> None:
    """Inserts users first..last, many rows per statement: the ORM would spend minutes
    on 1M."""
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    with connection.cursor() as cursor:
        for first_id in range(first, last + 1, _BATCH_ROWS):
            last_id = min(first_id + _BATCH_ROWS - 1, last)
            cursor.executemany(_INSERT, list(_user_rows(first_id, last_id, now)))


def create_staff_token() -> str:
    """A staff user that manages users (after the loaded ids) and its token, for wrk's
    Authorization header."""
    staff = User.objects.create_user(
        username=STAFF_USERNAME, email=f"{STAFF_USERNAME}@example.com", is_staff=True
    )
    staff.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="users", codename__in=["add_user", "change_user", "delete_user"]
        )
    )
    return Token.objects.create(user=staff).key


def server_version() -> str:
    """The MySQL server's version string (MariaDB says so in it)."""
    server = _server_connection()
    try:
        return server.get_server_info()
    finally:
        server.close()


def general_log_on() -> None:
    """From now on, MySQL records every statement it receives in ``mysql.general_log``:
    the server's own account of the queries, whoever sent them. The bench's server
    serves no one else, so what it records is the bench's."""
    server = _server_connection()
    try:
        with server.cursor() as cursor:
            cursor.execute("SET GLOBAL general_log = 0")
            cursor.execute("SET GLOBAL log_output = 'TABLE'")
            cursor.execute("TRUNCATE mysql.general_log")
            cursor.execute("SET GLOBAL general_log = 1")
    finally:
        server.close()


def general_log_off() -> list[str]:
    """Stops the general log; returns the text of every query it recorded."""
    server = _server_connection()
    try:
        with server.cursor() as cursor:
            cursor.execute("SET GLOBAL general_log = 0")
            cursor.execute("SELECT argument FROM mysql.general_log WHERE command_type = 'Query'")
            return [
                argument.decode(errors="replace") if isinstance(argument, bytes) else argument
                for (argument,) in cursor.fetchall()
            ]
    finally:
        server.close()

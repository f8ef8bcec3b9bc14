"""What the follower needs of the MySQL or MariaDB server, and where it reads from.

It reads the binary log as a replica does, so the server must write one, with
every row in full: ``log_bin`` on, ``binlog_format=ROW``, ``binlog_row_image=FULL``
and ``binlog_row_metadata=FULL`` (the columns' names travel with each change, so
a column added or moved by a migration never makes the follower read the wrong
one). Its database user needs ``REPLICATION SLAVE`` (to read the log) and
``REPLICATION CLIENT`` (to ask where it ends; ``BINLOG MONITOR`` on MariaDB). Any
of these missing is refused with one line that says what to change.
"""

from __future__ import annotations

import dataclasses
import re

from django.conf import settings
from django.db import ProgrammingError, connection
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from ..models import BinlogPosition

# MySQL's and MariaDB's error codes: an access denied for want of a privilege, the
# requested position is not in the binary log, and a statement this server does
# not know.
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_MASTER_FATAL_READING_BINLOG = 1236
ER_PARSE_ERROR = 1064

REQUIRED = {
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
}
SETTINGS_HINT = (
    "log_bin, binlog_format=ROW, binlog_row_image=FULL and binlog_row_metadata=FULL "
    "in the server's configuration (docs/binlog-follower.md)"
)
GRANT_HINT = "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO the follower's user"
# A running follower saves its row at least this often, progress or not, with its
# lag: whoever reads the row (the admin's overview, on another host than the
# follower's metrics) can then tell a running follower's lag from a stopped one's.
REPORT_SECONDS = 10.0


class Refused(Exception):
    """The follower cannot follow this server as it is: one line saying what to change."""


@dataclasses.dataclass(frozen=True, slots=True)
class Position:
    """A place in the binary log: a file and an offset in it."""

    log_file: str
    log_pos: int

    def __str__(self) -> str:
        return f"{self.log_file}:{self.log_pos}"

    @property
    def file_number(self) -> int:
        """The number a server gives its binary log files (binlog.000042: 42)."""
        digits = re.search(r"(\d+)$", self.log_file)
        return int(digits[1]) if digits else 0


def check(cursor: CursorWrapper) -> None:
    """Raises ``Refused`` unless the server writes the binary log the follower reads
    and its user may read it."""
    if "tidb" in settings.DATABASES["default"]["ENGINE"]:
        raise Refused(
            "TiDB has no binary log to follow: its change feed is TiCDC "
            "(docs/binlog-follower.md, TiDB)"
        )
    cursor.execute(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN (%s, %s, %s, %s)",
        ["log_bin", *REQUIRED],
    )
    variables = {name.lower(): value.upper() for name, value in cursor.fetchall()}
    if variables.get("log_bin") != "ON":
        raise Refused(f"the server's binary log is off: turn it on with {SETTINGS_HINT}")
    for name, wanted in REQUIRED.items():
        if name not in variables:
            raise Refused(
                f"this server has no {name}: the follower needs MySQL 8.0.14 or MariaDB "
                "10.5 or later"
            )
        if variables[name] != wanted:
            raise Refused(
                f"{name} is {variables[name]}: set {name}={wanted} (SET GLOBAL and in the "
                f"server's configuration); the follower needs {SETTINGS_HINT}"
            )
    end_of_log(cursor)


def end_of_log(cursor: CursorWrapper) -> Position:
    """Where the server's binary log ends now (``SHOW BINARY LOG STATUS``, which
    MySQL 8.4 knows, or ``SHOW MASTER STATUS``, which MariaDB and older MySQL do)."""
    try:
        try:
            cursor.execute("SHOW BINARY LOG STATUS")
        except ProgrammingError as exc:
            if exc.args[0] != ER_PARSE_ERROR:
                raise
            cursor.execute("SHOW MASTER STATUS")
    except Exception as exc:
        if exc.args and exc.args[0] == ER_SPECIFIC_ACCESS_DENIED:
            raise Refused(
                f"the database user may not see the binary log: {GRANT_HINT} "
                "(REPLICATION CLIENT is BINLOG MONITOR on MariaDB)"
            ) from None
        raise
    row = cursor.fetchone()
    if row is None:
        raise Refused(f"the server's binary log is off: turn it on with {SETTINGS_HINT}")
    return Position(row[0], int(row[1]))


def identity(cursor: CursorWrapper) -> str:
    """What tells this server from another: MySQL's ``server_uuid``, MariaDB's
    ``server_uid``."""
    cursor.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('server_uuid', 'server_uid')")
    row = cursor.fetchone()
    return row[1] if row else ""


def holds(cursor: CursorWrapper, position: Position) -> bool:
    """Whether the server still has ``position`` in its binary log (not purged)."""
    cursor.execute("SHOW BINARY LOGS")
    sizes = {row[0]: int(row[1]) for row in cursor.fetchall()}
    return position.log_file in sizes and position.log_pos <= sizes[position.log_file]


def stored_position() -> BinlogPosition | None:
    return BinlogPosition.objects.filter(pk=1).first()


def store_position(server: str, position: Position, *, seconds_behind: float | None) -> None:
    """Saves ``position`` as applied, with the follower's lag at that moment (None: it
    is stopping): one row, whichever follower writes it. ``updated_at`` is set here,
    since Django sets an ``auto_now`` field on ``save()`` only, not on ``update()``."""
    fields = {
        "server": server,
        "log_file": position.log_file,
        "log_pos": position.log_pos,
        "seconds_behind": seconds_behind,
        "updated_at": timezone.now(),
    }
    if not BinlogPosition.objects.filter(pk=1).update(**fields):
        BinlogPosition.objects.create(pk=1, **fields)


def start_position(*, from_end: bool) -> tuple[str, Position]:
    """The server's identity and where to start: the stored position, or the end of
    the log when none is stored (the first start) or ``from_end``. Raises
    ``Refused`` when the stored position cannot be trusted: changes since then
    would be missed silently."""
    with connection.cursor() as cursor:
        check(cursor)
        server = identity(cursor)
        stored = stored_position()
        if stored is not None and not from_end:
            position = Position(stored.log_file, stored.log_pos)
            if stored.server != server:
                raise Refused(
                    f"the stored position {position} is another server's ({stored.server}, "
                    f"this is {server}): {lost_position_hint()}"
                )
            if not holds(cursor, position):
                raise Refused(
                    f"the stored position {position} is no longer in the server's binary "
                    f"log (purged): {lost_position_hint()}"
                )
            return server, position
        position = end_of_log(cursor)
    # Stored at once: a follower that crashed before its first save would otherwise
    # start again at a later end and miss what came between.
    store_position(server, position, seconds_behind=0.0)
    return server, position


def lost_position_hint() -> str:
    return (
        "changes since then may be missing from the cache; run `manage.py flush_user_cache "
        "--all --no-input`, then `manage.py follow_binlog --from-end`"
    )


def stream_settings() -> dict:
    """PyMySQL's connection arguments for the account of ``DATABASE_URL``."""
    database = settings.DATABASES["default"]
    host = database["HOST"] or "127.0.0.1"
    where = (
        {"unix_socket": host} if host.startswith("/") else
        {"host": host, "port": int(database["PORT"] or 3306)}
    )  # fmt: skip
    return {
        **where,
        "user": database["USER"],
        "password": database["PASSWORD"],
        "connect_timeout": database["OPTIONS"].get("connect_timeout", 2),
    }

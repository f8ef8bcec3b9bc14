"""Reads the binary log and applies each committed change of the user and token
tables to the cache, then remembers how far it got.

* **Per transaction.** A transaction's row events reach the binary log together,
  at its commit, and end with its commit event; the follower collects the rows
  they change, in the tables the cache's kinds read (``users.cache.kinds``), and,
  at the commit, deletes the keys those rows own, old values and new, in one
  call (``users.invalidation.rows_changed_elsewhere``). A rolled-back
  transaction is never logged, so it changes nothing. An UPDATE that changed
  only columns no kind reads (a login's ``last_login``) owns no key.
* **Position after applying.** The position in memory moves past a transaction
  only once its deletions reached Redis; it is saved to MySQL at most once a
  ``CHECKPOINT_SECONDS`` (and when the follower stops), always a position whose
  changes were applied. A restart, or a crash at any point, resumes there and
  applies again at most the changes since the last save: deleting twice is
  harmless. The follower's own saves are logged too; a transaction that wrote
  only the position does not count as progress, or each save would call for
  the next one.
* **Its lag beside the position.** Each save carries the follower's lag then
  (``usersvc_binlog_seconds_behind``), and a save is made at least every
  ``server.REPORT_SECONDS`` whatever happened (while Redis is down too: the lag
  grows, the position stays), and on stopping without a lag: the row tells a
  process on another host how far behind a running follower is, and that none
  runs once it goes stale.
* **Redis down.** The deletion is retried, with a growing pause, until Redis
  answers; nothing after it is read meanwhile and the position stays.
* **MySQL restarts, rotates or drops the connection.** The stream is opened again
  at the last applied position (a new log file is announced in the stream and
  followed). The server sends a heartbeat each ``HEARTBEAT_SECONDS`` when there is
  nothing new, so a dead connection is noticed and a stop is never kept waiting.
* **Two followers.** Each registers with a server id of its own (a server drops a
  replica's connection when another connects with the same id), both delete,
  and the saved position is always one that its writer had applied.
* **Changes not listed row by row** (``TRUNCATE``, or DML a session logged as a
  statement) of the watched tables in our database: every cached user and token
  is deleted (``flush_user_cache --all``). The statements of every database
  arrive, since the reader filters only row events by database; ``statements``
  reads each in time proportional to its length and drops those of other
  databases.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time

import pymysql
from django.db import DatabaseError, connection
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import HeartbeatLogEvent, QueryEvent, RotateEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from ..cache.flush import cache_flush
from ..cache.transport import CacheUnavailable
from ..invalidation import rows_changed_elsewhere
from . import metrics, server, statements
from .changes import POSITION_TABLE, Changes, watched_tables
from .server import Position, Refused

logger = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 1.0
HEARTBEAT_SECONDS = 1.0
# Without a heartbeat for this long, the connection is taken for dead.
READ_TIMEOUT_SECONDS = 10
# Pauses between two attempts at a store that failed: the first, and the longest.
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 1.0

class Follower:
    """Follows one server's binary log from ``position`` until ``stop`` is set."""

    def __init__(self, *, server_identity: str, position: Position, stop: threading.Event):
        self.server = server_identity
        self.position = position
        self.stop = stop
        # Random: a server drops a replica's stream when another one connects with
        # the same id, so two followers must not share one.
        self.server_id = 65536 + secrets.randbelow(2**32 - 65536)
        self._pending = Changes()
        # The statements that change the watched tables without listing their rows.
        self._unlisted = statements.WatchedTables(
            database=connection.settings_dict["NAME"],
            tables=watched_tables(),
            mariadb=connection.mysql_is_mariadb,
        )
        self._progressed = False
        self._next_checkpoint = 0.0
        self._next_report = 0.0
        self.seconds_behind = 0.0
        self._show(position)

    def run(self) -> None:
        """Reads and applies until stopped; raises ``Refused`` when the server can no
        longer be followed (a privilege revoked, the position purged)."""
        delay = RETRY_FIRST_SECONDS
        while not self.stop.is_set():
            stream, connected = self._open(), False
            try:
                for event in stream:
                    if not connected:
                        connected = True
                        metrics.CONNECTED.set(1)
                        logger.info("reading the binary log from %s", self.position)
                        delay = RETRY_FIRST_SECONDS
                    self._handle(event, stream)
                    if self.stop.is_set():
                        break
            except pymysql.MySQLError as exc:
                self._refuse_for(exc)
                metrics.ERRORS.labels("mysql").inc()
                logger.warning("binary log stream lost at %s, reconnecting: %s", self.position, exc)
            finally:
                stream.close()
                metrics.CONNECTED.set(0)
            # What was read of a transaction not yet committed is read again.
            self._pending = Changes()
            self.stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        self._save(seconds_behind=None)

    def _open(self) -> BinLogStreamReader:
        return BinLogStreamReader(
            connection_settings={
                **server.stream_settings(),
                "read_timeout": READ_TIMEOUT_SECONDS,
            },
            server_id=self.server_id,
            resume_stream=True,
            log_file=self.position.log_file,
            log_pos=self.position.log_pos,
            blocking=True,
            slave_heartbeat=HEARTBEAT_SECONDS,
            only_schemas=[connection.settings_dict["NAME"]],
            only_tables=[*watched_tables(), POSITION_TABLE],
            only_events=[
                WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent, QueryEvent,
                RotateEvent, HeartbeatLogEvent,
            ],
            enable_logging=False,
        )  # fmt: skip

    def _refuse_for(self, exc: pymysql.MySQLError) -> None:
        code = exc.args[0] if exc.args else None
        if code == server.ER_SPECIFIC_ACCESS_DENIED:
            raise Refused(
                f"the database user may not read the binary log: {server.GRANT_HINT}"
            ) from None
        if code == server.ER_MASTER_FATAL_READING_BINLOG and self._position_gone():
            raise Refused(
                f"the server cannot send its binary log from {self.position} ({exc.args[1]}): "
                f"{server.lost_position_hint()}"
            ) from None

    def _position_gone(self) -> bool:
        """Whether the server no longer has the applied position. The stream may have
        asked for another: PyMySQL's own reconnection resumes after the last event
        read, which a crashed server may have dropped with its unfinished
        transaction; from the applied position it goes on."""
        try:
            with connection.cursor() as cursor:
                return not server.holds(cursor, self.position)
        except DatabaseError:
            connection.close()
            return False

    def _handle(self, event, stream: BinLogStreamReader) -> None:
        if isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
            metrics.EVENTS.labels("rows").inc()
            self._behind(event.timestamp)
            self._pending.add(event)
        elif isinstance(event, XidEvent):
            metrics.EVENTS.labels("commit").inc()
            self._commit(event.timestamp, stream)
        elif isinstance(event, QueryEvent):
            query = event.query.strip()
            if query.upper() == "BEGIN":  # MySQL's start of a transaction: rows follow
                return
            metrics.EVENTS.labels("statement").inc()
            if self._unlisted.unlisted_change(
                event.query,
                default_database=event.schema.decode("utf-8", "replace"),
                # Absent when the server logged no sql_mode: read as the default.
                sql_mode=getattr(event, "sql_mode", 0),
            ):
                self._pending.unlisted = True
            self._commit(event.timestamp, stream)
        elif isinstance(event, RotateEvent):
            metrics.EVENTS.labels("rotate").inc()
            position = Position(event.next_binlog, event.position)
            # A new file (not the stream's first word, which repeats the position
            # asked for) is progress: the old file may be purged one day.
            self._progressed = self._progressed or position != self.position
            self._show(position)
        elif isinstance(event, HeartbeatLogEvent):
            metrics.EVENTS.labels("heartbeat").inc()
            self._behind(None)
            self._checkpoint()

    def _commit(self, timestamp: int, stream: BinLogStreamReader) -> None:
        """The end of a transaction: its changes go to Redis, then the position moves."""
        changes, self._pending = self._pending, Changes()
        self._behind(timestamp)
        if changes.any and not self._apply(changes, timestamp):
            return  # stopped while Redis was down: the position stays before it
        for table, count in changes.counts.items():
            metrics.ROWS.labels(table).inc(count)
        self._show(Position(stream.log_file, stream.log_pos))
        if not changes.bookkeeping or changes.any:
            self._progressed = True
        self._checkpoint()

    def _apply(self, changes: Changes, timestamp: int) -> bool:
        """Deletes what ``changes`` names, retrying until both stores answer; False if
        stopped first."""
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                if changes.unlisted:
                    logger.warning("a statement changed rows the log does not list: flushing")
                    cache_flush()
                rows_changed_elsewhere(changes.rows)
                return True
            except CacheUnavailable as exc:
                metrics.ERRORS.labels("redis").inc()
                logger.warning("Redis is unavailable, retrying at %s: %s", self.position, exc)
            except DatabaseError as exc:
                metrics.ERRORS.labels("mysql").inc()
                logger.warning("MySQL is unavailable, retrying at %s: %s", self.position, exc)
                connection.close()
            self._behind(timestamp)
            self._checkpoint()
            if self.stop.wait(delay):
                return False
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _checkpoint(self) -> None:
        """Saves the applied position and the lag when a save is due: after progress,
        at most once a ``CHECKPOINT_SECONDS``; in any case, once a
        ``server.REPORT_SECONDS``."""
        now = time.monotonic()
        if (self._progressed and now >= self._next_checkpoint) or now >= self._next_report:
            self._save(seconds_behind=self.seconds_behind)

    def _save(self, *, seconds_behind: float | None) -> None:
        """Saves the position and ``seconds_behind``; a failed save is tried again
        when the next one is due."""
        now = time.monotonic()
        self._next_checkpoint = now + CHECKPOINT_SECONDS
        self._next_report = now + server.REPORT_SECONDS
        try:
            server.store_position(self.server, self.position, seconds_behind=seconds_behind)
        except DatabaseError as exc:
            metrics.ERRORS.labels("mysql").inc()
            logger.warning("could not save the position %s: %s", self.position, exc)
            connection.close()
            return
        self._progressed = False

    def _show(self, position: Position) -> None:
        self.position = position
        metrics.POSITION_FILE.set(position.file_number)
        metrics.POSITION_OFFSET.set(position.log_pos)

    def _behind(self, timestamp: int | None) -> None:
        """The lag: since the server's start of the change at ``timestamp``, or 0
        (None: the server has nothing newer)."""
        if timestamp is None:
            self.seconds_behind = 0.0
        elif timestamp:
            self.seconds_behind = max(0.0, time.time() - timestamp)
        else:
            return
        metrics.SECONDS_BEHIND.set(self.seconds_behind)

"""What the cache commands share: a one-line error and a non-zero exit for bad
arguments (2, argparse's) and for a store that does not answer (1), never a
traceback; and their progress on a terminal."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from tqdm import tqdm

from users.cache.transport import CacheUnavailable

# The largest primary key MySQL's BIGINT holds: a larger "id" names no user.
LARGEST_ID = 2**63 - 1


def whole_number(*, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number of at least 1 (and at most ``most``, when
    given): a count, a size or an id."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
        if value < 1 or (most is not None and value > most):
            bounds = "1 or more" if most is None else f"between 1 and {most}"
            raise argparse.ArgumentTypeError(f"{raw!r} is not {bounds}")
        return value

    return parse


positive_int = whole_number()
user_id = whole_number(most=LARGEST_ID)


def utc_date_or_datetime(raw: str) -> datetime.datetime:
    """An argparse type: an ISO 8601 date (midnight UTC) or date and time (UTC unless
    it names its offset)."""
    try:
        value = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a date (2024-05-31) or date and time (2024-05-31T12:00)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def redis_location() -> str:
    """The Redis the commands use, as the settings name it (never a password)."""
    location = settings.CACHES["default"]["LOCATION"]
    addresses = location if isinstance(location, list | tuple) else [location]
    return ",".join(_without_credentials(address) for address in addresses)


def _without_credentials(address: str) -> str:
    parts = urlsplit(address)
    if not parts.netloc:  # host:port, as a cluster's nodes are given
        return address
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def mysql_location() -> str:
    """The MySQL database the commands use: host and port (or socket) and name."""
    database = connection.settings_dict
    host = database["HOST"] or "localhost"
    where = host if host.startswith("/") else f"{host}:{database['PORT'] or 3306}"
    return f"{where} (database {database['NAME']})"


def _mysql_error(exc: DatabaseError) -> str:
    """mysqlclient's error without the Python tuple it travels in: (2002, "Can't
    connect...") reads as "Can't connect... (MySQL error 2002)"."""
    if len(exc.args) == 2 and isinstance(exc.args[0], int):
        return f"{exc.args[1]} (MySQL error {exc.args[0]})"
    return str(exc) or type(exc).__name__


class CacheCommand(BaseCommand):
    # The checks read no store and guard nothing these commands touch; skipping them
    # keeps the commands quick to start from cron or a deploy hook.
    requires_system_checks = []

    def create_parser(self, prog_name: str, subcommand: str, **kwargs) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        if parser.called_from_command_line:
            # argparse prints the whole usage before its error; one line is enough
            # for a person, and a log reads better without the rest.
            def one_line_error(message: str) -> None:
                parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")

            parser.error = one_line_error
        # Kept for handle(): a choice argparse cannot express (none of several
        # options given) is a usage error too, exit 2.
        self.parser = parser
        return parser

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except CacheUnavailable as exc:
            raise CommandError(f"Redis is unavailable at {redis_location()}: {exc}") from exc
        except (OperationalError, InterfaceError) as exc:
            raise CommandError(
                f"MySQL is unavailable at {mysql_location()}: {_mysql_error(exc)}"
            ) from exc
        except DatabaseError as exc:
            raise CommandError(
                f"MySQL at {mysql_location()} refused a query: {_mysql_error(exc)}"
            ) from exc


class Progress:
    """How far a long run is: a tqdm bar on stderr when it is a terminal (at
    verbosity 1 or more), a line per batch on stdout at verbosity 2 without one,
    and nothing otherwise, so that a job's log holds the summary alone.

    ``total`` is asked only when the bar is shown (it may cost a query or a few
    Redis calls) and may be an estimate: the bar's end moves when the run goes
    past it, and is where the run ended once it has."""

    def __init__(
        self,
        stdout: OutputWrapper,
        *,
        verbosity: int,
        unit: str,
        total: Callable[[], int | None],
    ) -> None:
        self._stdout = stdout
        self._unit = unit
        self._lines = verbosity >= 2 and not sys.stderr.isatty()
        shown = verbosity >= 1 and sys.stderr.isatty()
        self._bar = tqdm(
            total=(total() or None) if shown else None,
            disable=not shown,
            unit=f" {unit}",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        self.started = time.monotonic()
        self.done = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        if exc_info[0] is None and not self._bar.disable:
            self._bar.total = self.done
            self._bar.refresh()
        self._bar.close()

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar.total is not None and self.done > self._bar.total:
            self._bar.total = self.done
        self._bar.update(count)
        if self._lines:
            self._stdout.write(f"{self.done} {self._unit} so far, {self.rate(self.done)}")

    def write(self, line: str) -> None:
        """A line on stdout, with the bar cleared first and drawn again below it."""
        with tqdm.external_write_mode(file=sys.stdout):
            self._stdout.write(line)

    def rate(self, count: int) -> str:
        return f"{count / max(time.monotonic() - self.started, 1e-6):.0f} {self._unit}/s"

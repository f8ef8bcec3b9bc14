"""What the cache commands share: a one-line error and a non-zero exit for bad
arguments and for a store that does not answer, never a traceback."""

import argparse
import datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import InterfaceError, OperationalError

from users.cache.transport import CacheUnavailable


def positive_int(raw: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not 1 or more")
    return value


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
        return parser

    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except CacheUnavailable as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc
        except (OperationalError, InterfaceError) as exc:
            raise CommandError(f"MySQL is unavailable: {exc}") from exc

"""What one transaction changed in the tables the cache's kinds read, collected
from its row events until its commit event; the follower (``follower``) applies
it at the commit. Apart from the follower so that reading the log and deciding
what a row event means can be read, and tested, one at a time."""

from __future__ import annotations

import dataclasses

from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from ..cache import kinds
from ..cache.kinds import RowChange
from ..models import BinlogPosition
from .server import Refused

POSITION_TABLE = BinlogPosition._meta.db_table


def watched_tables() -> dict[str, type]:
    """The tables the cache's kinds read, by name, and their models."""
    return {model._meta.db_table: model for model in kinds.watched_models()}


@dataclasses.dataclass(slots=True)
class Changes:
    """What one transaction changed in the watched tables."""

    rows: list[RowChange] = dataclasses.field(default_factory=list)
    # A change the log does not list row by row: everything cached goes.
    unlisted: bool = False
    # Rows of the follower's own position table only.
    bookkeeping: bool = False
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.rows or self.unlisted)

    def add(self, event: WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent) -> None:
        if event.table == POSITION_TABLE:
            self.bookkeeping = True
            return
        model = watched_tables().get(event.table)
        if model is None:
            return
        for row in event.rows:
            if isinstance(event, UpdateRowsEvent):
                before, after = row["before_values"], row["after_values"]
            elif isinstance(event, WriteRowsEvent):
                before, after = None, row["values"]
            else:
                before, after = row["values"], None
            self.rows.append(RowChange(model, before, after))
            _check_named(model, event, before or after)
            self.counts[event.table] = self.counts.get(event.table, 0) + 1


def _check_named(model: type, event, image: dict) -> None:
    """Columns arrive unnamed when binlog_row_metadata was set back to MINIMAL while
    the follower ran: stop here, before the position moves past them."""
    if model._meta.pk.attname not in image:
        raise Refused(
            f"a change of {event.table} came without column names: set "
            "binlog_row_metadata=FULL again, then restart the follower"
        )

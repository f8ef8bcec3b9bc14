"""What the database's errors mean for a write: which ones say "run the transaction
again", and the error a write raises when it kept losing.

Errors for which the database says the whole transaction may simply run again
(Django's atomic() has rolled it back by the time a retry starts). MySQL and TiDB:
lock wait timeout (1205), deadlock (1213). TiDB: a conflict at commit in an
optimistic transaction, with SELECT FOR UPDATE (8002) or without (8005, 9007); a
commit that failed and was rolled back (8022); a table whose schema changed
during the transaction (8028). Any other database error is a 503
(``config.exceptions``).
"""

from django.db import DatabaseError, OperationalError

CONFLICT_ERROR_CODES = frozenset({1205, 1213, 8002, 8005, 8022, 8028, 9007})


def is_conflict(exc: OperationalError) -> bool:
    return bool(exc.args) and exc.args[0] in CONFLICT_ERROR_CODES


class WriteConflict(DatabaseError):
    """A write kept losing to concurrent ones after its retries; the client may retry
    (409)."""

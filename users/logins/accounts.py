"""An account as the database tells accounts apart, for the per-account limits.

The login form looks a user up by ``username = %s`` under the column's
collation (``utf8mb4_uca1400_ai_ci`` on MariaDB, ``utf8mb4_0900_ai_ci`` on MySQL
and TiDB; migration ``0003``), which ignores case, accents, combining marks and
default-ignorable code points: "admin", "ÂDMIN", "ad\\u200bmin" and "ad\\u00admin"
all open the same account. Any folding written here would miss some of them, so
the database says: an account is keyed by the collation weight of the name,
``WEIGHT_STRING(name COLLATE <the column's collation>)``, which is equal for
exactly the names the column compares equal, whether or not an account has the
name. One query per attempt; the collation is read once per process (and is
a ``ProgrammingError``, as a query on a missing table is, before ``migrate``).

The collations are PAD SPACE ("admin " = "admin") while the weight of a
trailing space is not empty, and a space may hide behind an ignorable code
point ("admin \\u200b"), so trailing space weights are cut from the weight, not
trailing spaces from the name. On a NO PAD collation that makes "admin " and
"admin" one account to the limits though two to the database: no username may
hold a space, and the login form strips them.
"""

from __future__ import annotations

import hashlib
import re

from django.db import ProgrammingError, connections

from ..models import User

# database name -> (the username column's collation, the weight of a space under it)
_collations: dict[str, tuple[str, bytes]] = {}


def account_key(username: str) -> str:
    """The digest that names ``username``'s account in the limits' keys."""
    connection = connections[User.objects.db]
    collation, space = _collation(connection)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT WEIGHT_STRING(%s COLLATE {collation})", [username])
        (weight,) = cursor.fetchone()
    weight = bytes(weight or b"")
    while space and weight.endswith(space):
        weight = weight[: -len(space)]
    return hashlib.sha256(weight).hexdigest()


def _collation(connection) -> tuple[str, bytes]:
    database = connection.settings_dict["NAME"]
    if database not in _collations:
        field = User._meta.get_field(User.USERNAME_FIELD)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COLLATION_NAME FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = %s",
                [User._meta.db_table, field.column],
            )
            found = cursor.fetchone()
            if found is None:
                raise ProgrammingError(
                    f"Table '{database}.{User._meta.db_table}' has no column {field.column}"
                    " (run manage.py migrate)"
                )
            (collation,) = found
            assert re.fullmatch(r"\w+", collation), f"unexpected collation {collation!r}"
            cursor.execute(f"SELECT WEIGHT_STRING(' ' COLLATE {collation})")
            (space,) = cursor.fetchone()
        _collations[database] = (collation, bytes(space or b""))
    return _collations[database]

"""Which statements of the binary log change rows of the watched tables without
listing them: a ``TRUNCATE``, or DML a session logged as a statement.

Row events are filtered by database before they are decoded, but statements
(Query events) are not: the reader passes on those of every database on the
server, so this reads text that anyone with rights on any database wrote. It
reads it the way the server's lexer does, in one pass that only moves forward:
each step either ends or passes over at least one character, and the only
regular expressions are one character class repeated, which cannot backtrack.
Handling a statement therefore costs time in proportion to its length, whatever
it holds; a regular expression over comments before the first keyword took
exponential time and held the follower on one statement of another database.

A statement is a change of ours when its first keyword is one that changes rows
and it names a watched table in our database: qualified by our database's name
(backticks, spaces and comments around the dot allowed), or unqualified in a
session whose default database is ours. Names in comments and strings are not
names; the content of an executable comment that the server ran (``/*!...*/``,
and ``/*M!...*/`` on MariaDB) is read as text, since the server ran it: one it
skipped for its version is written to the log with its ``!`` replaced by a
space, so it arrives as a plain comment. Names compare case-insensitively; on a
server that tells cases apart, that only counts more statements as ours, and a
statement counted in excess costs a flush, never a stale entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

# The sql_mode bits, the same on MySQL and MariaDB, that change how text is read:
# "..." names an identifier, and a backslash is an ordinary character in strings.
MODE_ANSI_QUOTES = 1 << 2
MODE_NO_BACKSLASH_ESCAPES = 1 << 20

# First keywords of the statements that change rows (WITH leads MySQL's
# WITH ... UPDATE and DELETE; a logged WITH ... SELECT calls a function that
# writes). MariaDB's ANALYZE runs the statement that follows it, but ANALYZE TABLE
# only reads statistics; its SET STATEMENT ... FOR runs the statement after FOR.
_CHANGING = frozenset({"truncate", "update", "delete", "insert", "replace", "load", "with"})
_ANALYZE_ONLY = frozenset({"table", "local", "no_write_to_binlog"})

# The server's whitespace and the characters of unquoted names: ASCII letters,
# digits, _ and $, and every character outside ASCII.
_SPACE = re.compile(r"[ \t\n\r\v\f]+")
_WORD = re.compile(r"[0-9A-Za-z_$\x80-\U0010ffff]+")
# A string's characters up to its quote or a backslash.
_STRING_BODY = {"'": re.compile(r"[^'\\]*"), '"': re.compile(r'[^"\\]*')}

# What the scanner yields: an unquoted word (a keyword, name or number), a quoted
# name, the dot between a qualifier and a name, anything else.
WORD, QUOTED, DOT, OTHER = range(4)


class WatchedTables:
    """The watched tables of one database, as this server writes statements to its
    binary log."""

    def __init__(self, *, database: str, tables: Iterable[str], mariadb: bool) -> None:
        self.database = database.casefold()
        self.tables = frozenset(table.casefold() for table in tables)
        # MySQL reads /*M!...*/ as a plain comment, and does not rewrite it.
        self.mariadb = mariadb
        # How our database's name can be written: doubled quotes inside quotes.
        self._spellings = {
            self.database, self.database.replace("`", "``"), self.database.replace('"', '""')
        }  # fmt: skip

    def unlisted_change(self, statement: str, *, default_database: str, sql_mode: int) -> bool:
        """Whether ``statement``, logged by a session whose default database was
        ``default_database`` (``""`` for none) under ``sql_mode``, changes rows of a
        watched table of ours that the log does not list."""
        default = default_database.casefold()
        # Most statements are dropped here without being read: they name no watched
        # table at all, or ran in another database and never write our name.
        folded = statement.casefold()
        if not any(table in folded for table in self.tables):
            return False
        if default != self.database and not any(name in folded for name in self._spellings):
            return False
        tokens = scan(
            statement,
            ansi_quotes=bool(sql_mode & MODE_ANSI_QUOTES),
            backslash_escapes=not sql_mode & MODE_NO_BACKSLASH_ESCAPES,
            mariadb=self.mariadb,
        )
        return _changes_rows(tokens) and self._names_ours(tokens, default)

    def _names_ours(self, tokens: Iterator[tuple[int, str]], default: str) -> bool:
        """Whether the rest of ``tokens`` names a watched table of ours. A name
        right after ``qualifier .`` is in that database, any other in the
        session's; the name of ``db.table.column`` is its middle one, and a
        column's own name is taken for a table's, which can only count too much."""
        previous = qualifier = None
        for kind, text in tokens:
            if kind in (WORD, QUOTED):
                name = text.casefold()
                database = default if qualifier is None else qualifier
                if name in self.tables and database == self.database:
                    return True
                previous, qualifier = name, None
            elif kind == DOT:
                previous, qualifier = None, previous
            else:
                previous = qualifier = None
        return False


def _changes_rows(tokens: Iterator[tuple[int, str]]) -> bool:
    """Reads the statement's first keywords off ``tokens``: whether it may change
    rows."""
    kind, word = next(tokens, (OTHER, ""))
    if kind != WORD:
        return False
    verb = word.casefold()
    if verb in _CHANGING:
        return True
    if verb not in ("analyze", "set"):
        return False
    kind, word = next(tokens, (OTHER, ""))
    if kind != WORD:
        return False
    if verb == "set":
        return word.casefold() == "statement"
    return word.casefold() not in _ANALYZE_ONLY


def scan(
    text: str, *, ansi_quotes: bool, backslash_escapes: bool, mariadb: bool
) -> Iterator[tuple[int, str]]:
    """The tokens of ``text`` that matter here, as ``(kind, text)``: whitespace and
    comments are dropped, strings come as ``OTHER`` without their content, quoted
    names without their quotes."""
    position, end = 0, len(text)
    executable = False  # inside /*!...*/, whose */ is no comment's end
    while position < end:
        char = text[position]
        if char in " \t\n\r\v\f":
            position = _SPACE.match(text, position).end()
        elif text.startswith("/*", position):
            content = _executable_content(text, position, mariadb)
            if content is not None:
                position, executable = content, True
            else:
                close = text.find("*/", position + 2)
                position = end if close < 0 else close + 2
        elif executable and text.startswith("*/", position):
            position, executable = position + 2, False
        elif char == "#" or _dash_comment(text, position):
            newline = text.find("\n", position)
            position = end if newline < 0 else newline + 1
        elif char == "`" or (char == '"' and ansi_quotes):
            close = _closing_quote(text, position, char, backslash_escapes=False)
            yield QUOTED, text[position + 1 : close].replace(char * 2, char)
            position = close + 1
        elif char in "'\"":
            position = _closing_quote(text, position, char, backslash_escapes) + 1
            yield OTHER, ""
        elif char == ".":
            position += 1
            yield DOT, char
        else:
            word = _WORD.match(text, position)
            if word:
                position = word.end()
                yield WORD, word[0]
            else:
                position += 1
                yield OTHER, char


def _executable_content(text: str, position: int, mariadb: bool) -> int | None:
    """Where the content of the executable comment opening at ``position`` starts,
    after its marker and version (five or six digits); None if it is a plain
    comment. (The server rewrites a comment nested in one it skipped to
    ``(*...*)``, so a plain comment in the log ends at its first ``*/``.)"""
    marker = 4 if mariadb and text.startswith("/*M!", position) else 3
    if marker == 3 and not text.startswith("/*!", position):
        return None
    start = position + marker
    digits = 0
    while digits < 6 and start + digits < len(text) and text[start + digits] in "0123456789":
        digits += 1
    return start + digits if digits >= 5 else start


def _dash_comment(text: str, position: int) -> bool:
    """``--`` starts a comment only before whitespace, a control character or the
    end: ``5--3`` is arithmetic."""
    if not text.startswith("--", position):
        return False
    after = position + 2
    return after == len(text) or text[after] <= " " or text[after] == "\x7f"


def _closing_quote(text: str, position: int, quote: str, backslash_escapes: bool) -> int:
    """Where the quoted text opening at ``position`` ends: the position of its
    closing quote (a doubled quote is one quote character, and so is an escaped
    one), or the end of ``text`` when it is not closed."""
    end = len(text)
    body = _STRING_BODY[quote] if backslash_escapes else None
    position += 1
    while position < end:
        if body is None:
            close = text.find(quote, position)
            if close < 0:
                return end
            position = close
        else:
            position = body.match(text, position).end()
            if position == end:
                return end
            if text[position] == "\\":
                position += 2
                continue
        if not text.startswith(quote, position + 1):
            return position
        position += 2
    return end

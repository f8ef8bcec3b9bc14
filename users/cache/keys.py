"""Every key this service writes, built in one place.

Keys look like ``usersvc:v1:user:{42}``: the configurable prefix, the schema
version of the cached projection (bumped when its shape changes, so an old-format
entry is never read), the kind, and a Redis Cluster hash tag, so that an entry
and its lease (``...:{42}:lease``) always share a slot, as the Lua scripts
require. A token's key names it by ``users.tokens.token_mac``, never by the token.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re

from ..conf import user_cache_settings
from ..entries import SCHEMA_VERSION


def _namespace() -> str:
    return f"{user_cache_settings.KEY_PREFIX}:v{SCHEMA_VERSION}"


def user_key(user_id: int) -> str:
    return f"{_namespace()}:user:{{{user_id}}}"


def user_key_prefix() -> str:
    """What every user entry's key (and its lease's) starts with."""
    return f"{_namespace()}:user:"


def token_key_prefix() -> str:
    return f"{_namespace()}:token:"


def token_key(token_mac: str) -> str:
    return f"{_namespace()}:token:{{{token_mac}}}"


def name_key(field: str, value: str) -> str:
    """The id a username or an e-mail (``field``) names, by a digest of the value: any
    character a value may hold stays out of the key, hash-tag braces included."""
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]
    return f"{_namespace()}:{field}:{{{digest}}}"


def throttle_key(scope: str, ident: str) -> str:
    return f"{_namespace()}:throttle:{scope}:{{{ident}}}"


class LoginCounter(enum.StrEnum):
    """The login limits' counters (``users.logins``), a key space each: a name never
    counts as an address, nor a failure as an attempt."""

    ACCOUNT_FAILURES = "account-failures"
    ADDRESS_FAILURES = "address-failures"
    ACCOUNT_ATTEMPTS = "account-attempts"
    ADDRESS_ATTEMPTS = "address-attempts"


def login_key(counter: LoginCounter, subject: str) -> str:
    """``subject`` is an account's digest or a client address group: no braces, so it
    is the key's hash tag whole."""
    assert "{" not in subject and "}" not in subject, f"{subject!r} would split the hash tag"
    return f"{_namespace()}:login:{counter}:{{{subject}}}"


def login_lockouts_key(minute: int) -> str:
    """The login counters that reached their limit in this minute since the epoch:
    the operators' list reads a few of these rather than SCAN the whole database."""
    return f"{_namespace()}:login-lockouts:{{{minute}}}"


def login_key_parts(key: str) -> tuple[LoginCounter, str] | None:
    """The counter and subject a login counter's key names; None for any other key."""
    match = re.fullmatch(rf"{re.escape(_namespace())}:login:([a-z-]+):\{{([^{{}}]*)\}}", key)
    if match is None or match[1] not in set(LoginCounter):
        return None
    return LoginCounter(match[1]), match[2]


def lease_key(entry_key: str) -> str:
    return f"{entry_key}:lease"


def project_pattern() -> str:
    """A SCAN pattern matching every key this project writes, whatever its schema
    version (the prefix holds no pattern characters: ``users.conf``)."""
    return f"{user_cache_settings.KEY_PREFIX}:*"


def user_pattern() -> str:
    """A SCAN pattern matching the user entries (and their leases) of the current schema."""
    return f"{_namespace()}:user:*"


def user_id_from_key(key: str) -> int | None:
    """The id in a user entry's key of the current schema; None for any other key."""
    prefix = f"{_namespace()}:user:{{"
    if not (key.startswith(prefix) and key.endswith("}")):
        return None
    digits = key[len(prefix) : -1]
    return int(digits) if digits.isascii() and digits.isdigit() else None


class KeyKind(enum.StrEnum):
    """What a key under the project prefix holds, whatever its schema version."""

    USER = "user entries"
    TOKEN = "token lookups"
    NAME = "name lookups"
    LEASE = "leases"
    # Anything else under the prefix: rate-limit and login counters, Django's cache.
    OTHER = "other keys"


@functools.cache
def _key_shape(prefix: str) -> re.Pattern[str]:
    return re.compile(
        rf"{re.escape(prefix)}:v[0-9]+:(user|token|username|email):\{{[^}}]*\}}(:lease)?"
    )


def key_kind(key: str) -> KeyKind:
    match = _key_shape(user_cache_settings.KEY_PREFIX).fullmatch(key)
    if match is None:
        return KeyKind.OTHER
    if match.group(2):
        return KeyKind.LEASE
    return {"user": KeyKind.USER, "token": KeyKind.TOKEN}.get(match.group(1), KeyKind.NAME)

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
    # Anything else under the prefix: rate-limit counters, Django's cache.
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

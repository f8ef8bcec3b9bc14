"""Every key this service writes, built in one place.

Entries look like ``usersvc:v2:user:{42}``: the configurable prefix, the schema
version of the cached entries (bumped when their shape changes, so an
old-format entry is never read), the kind's family (``users.cache.kinds``) and
a Redis Cluster hash tag. An entry's lease lives beside it under ``lease:``
(``usersvc:v2:lease:user:{42}``): in the entry's hash slot, as the Lua scripts
require, but outside the prefixes the near cache tracks, so that taking and
giving back leases sends no invalidation to every process. Counters (rate
limits, login limits) live under families of their own.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re

from ..conf import user_cache_settings

# Bumped whenever an entry's fields change, so that an entry of an older shape is
# never read: it is part of every key.
SCHEMA_VERSION = 2

LEASE_FAMILY = "lease"
THROTTLE_FAMILY = "throttle"
LOGIN_FAMILY = "login"
LOGIN_LOCKOUTS_FAMILY = "login-lockouts"
# Families that hold no entries: no kind may take these names.
RESERVED_FAMILIES = frozenset({LEASE_FAMILY, THROTTLE_FAMILY, LOGIN_FAMILY, LOGIN_LOCKOUTS_FAMILY})


def namespace() -> str:
    return f"{user_cache_settings.KEY_PREFIX}:v{SCHEMA_VERSION}"


def entry_key(family: str, tag: str) -> str:
    return f"{namespace()}:{family}:{{{tag}}}"


def entry_key_prefix(family: str) -> str:
    """What every entry key of a family starts with."""
    return f"{namespace()}:{family}:"


def lease_key(entry: str) -> str:
    """The lease of the entry named ``entry``: the same hash tag, another family."""
    own = namespace()
    return f"{own}:{LEASE_FAMILY}:{entry[len(own) + 1 :]}"


def digest(value: str) -> str:
    """A value as a hash tag: any character it may hold stays out of the key,
    hash-tag braces included."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def user_key(user_id: int) -> str:
    return entry_key("user", str(user_id))


def token_key(token_mac: str) -> str:
    return entry_key("token", token_mac)


def name_key(field: str, value: str) -> str:
    """The entry of the id a username or an e-mail (``field``) names."""
    return entry_key(field, digest(value))


def throttle_key(scope: str, ident: str) -> str:
    return f"{namespace()}:{THROTTLE_FAMILY}:{scope}:{{{ident}}}"


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
    return f"{namespace()}:{LOGIN_FAMILY}:{counter}:{{{subject}}}"


def login_lockouts_key(minute: int) -> str:
    """The login counters that reached their limit in this minute since the epoch:
    the operators' list reads a few of these rather than SCAN the whole database."""
    return f"{namespace()}:{LOGIN_LOCKOUTS_FAMILY}:{{{minute}}}"


def login_key_parts(key: str) -> tuple[LoginCounter, str] | None:
    """The counter and subject a login counter's key names; None for any other key."""
    prefix = re.escape(f"{namespace()}:{LOGIN_FAMILY}:")
    match = re.fullmatch(rf"{prefix}([a-z-]+):\{{([^{{}}]*)\}}", key)
    if match is None or match[1] not in set(LoginCounter):
        return None
    return LoginCounter(match[1]), match[2]


def project_pattern() -> str:
    """A SCAN pattern matching every key this project writes, whatever its schema
    version (the prefix holds no pattern characters: ``users.conf``)."""
    return f"{user_cache_settings.KEY_PREFIX}:*"


def family_pattern(family: str) -> str:
    """A SCAN pattern matching the entries of one family under the current schema."""
    return f"{entry_key_prefix(family)}*"


@functools.cache
def _entry_shape(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(prefix)}:v([0-9]+):([a-z][a-z0-9_-]*):\{{([^}}]*)\}}")


def entry_family(key: str, *, any_schema: bool = False) -> str | None:
    """The family of an entry key of the current schema (or, with ``any_schema``, of
    any schema version); None for any other key (a lease, a counter)."""
    match = _entry_shape(user_cache_settings.KEY_PREFIX).fullmatch(key)
    if match is None or match.group(2) in RESERVED_FAMILIES:
        return None
    if not any_schema and match.group(1) != str(SCHEMA_VERSION):
        return None
    return match.group(2)


def entry_tag(key: str) -> str | None:
    """What an entry key of the current schema holds in its hash tag; None for any
    other key."""
    match = _entry_shape(user_cache_settings.KEY_PREFIX).fullmatch(key)
    if match is None or match.group(1) != str(SCHEMA_VERSION):
        return None
    return match.group(3)


def is_lease(key: str) -> bool:
    """A lease of any schema version: ``<prefix>:v<n>:lease:...``, or an entry's key
    followed by ``:lease`` (schema 1)."""
    prefix = user_cache_settings.KEY_PREFIX
    if not key.startswith(f"{prefix}:v"):
        return False
    return f":{LEASE_FAMILY}:" in key or (key.endswith("}:lease") and key.count(":") >= 4)

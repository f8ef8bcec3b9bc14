"""API tokens in the cache: which spellings are a key, where a token's entry lives in
Redis, and why Redis alone can never vouch for one.

* **One spelling.** DRF makes keys of 40 lowercase hex digits, and MySQL compares
  them case-insensitively: ``ABC...`` finds the row of ``abc...``. So a presented
  key must be exactly that shape (``is_well_formed``), checked before any I/O;
  anything else is refused without a query and without a Redis key, and the
  load compares the row's key exactly.
* **Keyed names.** A token's entry, its rate-limit counter and its lease are
  named by an HMAC of the key under a secret derived from ``SECRET_KEY``
  (``token_mac``): Redis never holds a credential, and someone who can write to
  Redis cannot compute where the entry of a token of their choosing would be.
* **Signed entries.** The entry carries an HMAC, under a second derived secret,
  of its own content, its name and its expiry (``encode_entry``): an entry
  edited in Redis (a plain user's entry raised to staff), copied to another
  token's name, or kept past its expiry fails the check and is read from MySQL
  again (``decode_entry``). What a Redis writer can still do is replay an entry
  it saved, to the same token, until that entry's expiry: a revocation can be
  delayed by at most ``TOKEN_TTL``, never a privilege raised beyond what the
  user held within that time.

Rotating ``SECRET_KEY`` renames and re-signs every entry: each token is looked up
in MySQL once more, old entries expire unread within ``TOKEN_TTL``, and
per-token rate-limit windows start afresh.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Sequence

from django.conf import settings
from rest_framework.authtoken.models import Token

from .cache import counters
from .cache.keys import token_key, user_key
from .cache.near import near
from .cache.transport import CacheUnavailable
from .conf import user_cache_settings
from .outbox import outbox
from .reads import Entry, EntryKind, read_through

_KEY_SHAPE = re.compile(r"[0-9a-f]{40}")

# The fields of a token's cached entry: who the token belongs to, as much as
# authentication and the read-only permission need, and the signature.
USER_ID, USERNAME, ACTIVE, STAFF, EXPIRES, SIGNATURE = "u", "n", "a", "s", "e", "m"


def is_well_formed(key: str) -> bool:
    """Exactly DRF's shape: 40 lowercase hex digits (ASCII only)."""
    return _KEY_SHAPE.fullmatch(key) is not None


@functools.cache
def _secret(purpose: str, secret_key: str) -> bytes:
    return hashlib.sha256(f"usersvc.tokens.{purpose}:{secret_key}".encode()).digest()


def _mac(purpose: str, message: str) -> str:
    secret = _secret(purpose, settings.SECRET_KEY)
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def token_mac(key: str) -> str:
    """The name of a token in Redis: an HMAC of its key, never the key itself."""
    return _mac("name", key)


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of a token request, built from the token's entry.

    Carries what authentication and the read permission need, and no more; it is
    not a model instance, so a token-authenticated hit never touches the
    database. Writes read their caller's permissions from MySQL
    (``users.permissions``).
    """

    id: int
    username: str
    is_staff: bool
    is_active: bool

    is_authenticated = True
    is_anonymous = False

    @property
    def pk(self) -> int:
        return self.id

    def __str__(self) -> str:
        return self.username


def _signed_content(mac: str, fields: dict[str, str]) -> str:
    return "\x1f".join(
        (mac, fields[USER_ID], fields[USERNAME], fields[ACTIVE], fields[STAFF], fields[EXPIRES])
    )


def encode_entry(mac: str, row: dict, ttl_seconds: int) -> dict[str, str]:
    """The cached entry of a token row (``user_id``, ``user__username``,
    ``user__is_active``, ``user__is_staff``), signed, valid for ``ttl_seconds``."""
    fields = {
        USER_ID: str(row["user_id"]),
        USERNAME: row["user__username"],
        ACTIVE: "1" if row["user__is_active"] else "0",
        STAFF: "1" if row["user__is_staff"] else "0",
        EXPIRES: str(int(time.time()) + ttl_seconds),
    }
    fields[SIGNATURE] = _mac("entry", _signed_content(mac, fields))
    return fields


def decode_entry(mac: str, fields: dict[str, str]) -> Principal | None:
    """The principal an entry names, or None when the entry is not one this server
    signed for this token, or has expired."""
    try:
        signature = fields[SIGNATURE]
        expected = _mac("entry", _signed_content(mac, fields))
        expires = int(fields[EXPIRES])
    except (KeyError, ValueError):
        return None
    if not hmac.compare_digest(signature, expected) or expires < time.time():
        return None
    return Principal(
        id=int(fields[USER_ID]),
        username=fields[USERNAME],
        is_staff=fields[STAFF] == "1",
        is_active=fields[ACTIVE] == "1",
    )


def _load(key: str, mac: str, before_load: Callable[[], None]) -> dict[str, Entry]:
    before_load()
    row = (
        Token.objects.filter(key=key)
        .values("key", "user_id", "user__username", "user__is_staff", "user__is_active")
        .first()
    )
    # MySQL compares keys case-insensitively: only the exact key is this token.
    if row is None or not hmac.compare_digest(row["key"], key):
        return {}
    return {key: encode_entry(mac, row, user_cache_settings.TOKEN_TTL)}


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRead:
    """What one request's token lookup read, in one Redis round trip when all was
    cached: the principal (None for an unknown token), the token's name (its rate
    limit counts under it), the request's count against that limit (None when not
    counted yet: the token was not cached), and the user the request names, when
    its entry was read ahead (``{user_id: entry or None}``)."""

    principal: Principal | None
    token_mac: str
    counted: counters.WindowCount | None
    read_ahead: dict[int, Entry | None] | None


def token_lookup(
    *,
    key: str,
    counter: Callable[[str], tuple[str, int] | None],
    read_ahead_ids: Sequence[int],
    before_load: Callable[[], None],
) -> TokenRead:
    """The principal a well-formed key (``is_well_formed``) authenticates, through the
    token cache (``users.reads``: the token is an entry like a user).

    The first round trip reads the token's entry, counts the request against the
    limit ``counter(token_mac)`` names (when the token is cached), and reads the
    entries of users ``read_ahead_ids`` (reading them before the token is checked
    is harmless: only the request's view uses them, once the token passed).
    ``before_load`` runs before any MySQL work (the failed-guess limit). Nothing is
    counted or read ahead when Redis is down: rate limits fail open.

    When the near cache holds the token, the request is counted in process
    (``LocalWindows``); when it holds every user asked for too, no round trip is
    made at all.
    """
    mac = token_mac(key)
    entry_key = token_key(mac)
    ahead_keys = [user_key(i) for i in read_ahead_ids]
    count = counter(mac)
    try:
        outbox.before_cached_read()
    except CacheUnavailable:
        return _bypassed(key, mac, before_load)
    held = near.get_many([entry_key, *ahead_keys])
    principal = decode_entry(mac, held[entry_key]) if entry_key in held else None
    if principal is not None:
        # The token is held: the request is counted here and added to Redis later.
        # The users the near cache lacks are left to the view's read (one HGETALL
        # each, in one round trip), not read with a counted token lookup.
        counted = None if count is None else counters.local_windows.count(*count)
        if not all(ahead in held for ahead in ahead_keys):
            return TokenRead(principal, mac, counted, None)
        read_ahead = {i: held[ahead] for i, ahead in zip(read_ahead_ids, ahead_keys, strict=True)}
        return TokenRead(principal, mac, counted, read_ahead or None)
    near.count_miss(1 + len(ahead_keys) - len(held))
    stamp = near.stamp()
    try:
        entry, counted, ahead = counters.read_counted(entry_key, counter=count, also=ahead_keys)
    except CacheUnavailable:
        return _bypassed(key, mac, before_load)
    read_ahead = dict(zip(read_ahead_ids, ahead, strict=True)) if read_ahead_ids else None
    if counted is not None:
        counters.local_windows.seen(count[0], counted, count[1])
    near.put_many(
        {k: e for k, e in zip([entry_key, *ahead_keys], [entry, *ahead], strict=True) if e},
        stamp,
    )
    read = read_through(_kind(key, mac, before_load), [key], first={key: entry})[key]
    principal = None if read.entry is None else decode_entry(mac, read.entry)
    return TokenRead(principal, mac, counted, read_ahead)


def _bypassed(key: str, mac: str, before_load: Callable[[], None]) -> TokenRead:
    """Redis did not answer: the token from MySQL, nothing counted or read ahead."""
    read = read_through(_kind(key, mac, before_load), [key])[key]
    principal = None if read.entry is None else decode_entry(mac, read.entry)
    return TokenRead(principal, mac, None, None)


def _kind(key: str, mac: str, before_load: Callable[[], None]) -> EntryKind:
    """This token, as an entry ``read_through`` reads."""
    entry_key = token_key(mac)
    return EntryKind(
        entity="token",
        key=lambda _key: entry_key,
        load=lambda _keys: _load(key, mac, before_load),
        ttl=lambda: user_cache_settings.TOKEN_TTL,
        cache_absent=False,
        trusted=lambda entry: decode_entry(mac, entry) is not None,
        near=True,
    )

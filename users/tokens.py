"""API tokens in the cache: which spellings are a key, the token kind of the cache's
registry, and why Redis alone can never vouch for a token.

* **One spelling.** DRF makes keys of 40 lowercase hex digits, and MySQL compares
  them case-insensitively: ``ABC...`` finds the row of ``abc...``. So a presented
  key must be exactly that shape (``KEY_SHAPE``), checked before any I/O;
  anything else is refused without a query and without a Redis key, and the
  load compares the row's key exactly.
* **Keyed names.** A token's entry, its rate-limit counter and its lease are
  named by an HMAC of the key under a secret derived from ``SECRET_KEY``
  (``token_mac``): Redis never holds a credential, and someone who can write to
  Redis cannot compute where the entry of a token of their choosing would be.
* **Signed entries.** The entry carries an HMAC, under a second derived secret,
  of its own content, its name and its expiry (the kind's codec): an entry
  edited in Redis (a plain user's entry raised to staff), copied to another
  token's name, or kept past its expiry fails the check and is read from MySQL
  again. What a Redis writer can still do is replay an entry it saved, to the
  same token, until that entry's expiry: a revocation can be delayed by at most
  ``TOKEN_TTL``, never a privilege raised beyond what the user held within that
  time.

Rotating ``SECRET_KEY`` renames and re-signs every entry: each token is looked
up in MySQL once more, old entries expire unread within ``TOKEN_TTL``, and
per-token rate-limit windows start afresh.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import hmac
import re
from collections.abc import Sequence

from django.conf import settings
from rest_framework.authtoken.models import Token

from . import metrics, reads
from .cache import kinds, store
from .cache.counters import WindowCount
from .cache.keys import throttle_key
from .cache.kinds import EXPIRES, CachedKind, Codec, Entry, MadeFrom, RowChange
from .cache.outbox import outbox
from .cache.readthrough import Source, read_through
from .cache.transport import CacheUnavailable
from .conf import user_cache_settings
from .models import User

# Exactly DRF's shape: 40 lowercase hex digits (ASCII only).
KEY_SHAPE = re.compile(r"[0-9a-f]{40}")

# The fields of a token's cached entry: who the token belongs to, as much as
# authentication and the read-only permission need, and the signature.
USER_ID, USERNAME, ACTIVE, STAFF, SIGNATURE = "u", "n", "a", "s", "m"


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
class TokenRef:
    """A token as the cache reads it: the key (to load its row) and its name in
    Redis, computed once."""

    key: str
    mac: str = dataclasses.field(compare=False)

    @classmethod
    def of(cls, key: str) -> TokenRef:
        return cls(key, token_mac(key))


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


def _signed_content(mac: str, entry: Entry) -> str:
    return "\x1f".join(
        (mac, entry[USER_ID], entry[USERNAME], entry[ACTIVE], entry[STAFF], entry[EXPIRES])
    )


def _seal(ref: TokenRef, entry: Entry) -> Entry:
    return {**entry, SIGNATURE: _mac("entry", _signed_content(ref.mac, entry))}


def _signed(ref: TokenRef, entry: Entry) -> bool:
    """Whether this server signed the entry for this token (its expiry included)."""
    expected = _mac("entry", _signed_content(ref.mac, entry))
    return hmac.compare_digest(entry[SIGNATURE], expected) and entry[USER_ID].isdigit()


def _principal(entry: Entry) -> Principal:
    """The principal of an entry the codec opened (signed and unexpired)."""
    return Principal(
        id=int(entry[USER_ID]),
        username=entry[USERNAME],
        is_staff=entry[STAFF] == "1",
        is_active=entry[ACTIVE] == "1",
    )


def _load(refs: list[TokenRef]) -> dict[TokenRef, Entry]:
    by_key = {ref.key: ref for ref in refs}
    rows = Token.objects.filter(key__in=list(by_key)).values(
        "key", "user_id", "user__username", "user__is_staff", "user__is_active"
    )
    # MySQL compares keys case-insensitively: only the exact key is this token.
    return {
        by_key[row["key"]]: {
            USER_ID: str(row["user_id"]),
            USERNAME: row["user__username"],
            ACTIVE: "1" if row["user__is_active"] else "0",
            STAFF: "1" if row["user__is_staff"] else "0",
        }
        for row in rows
        if row["key"] in by_key
    }


def _tokens_changed(changes: list[RowChange]) -> list[TokenRef]:
    return [TokenRef.of(key) for change in changes for key in change.values("key")]


def _tokens_of_users(changes: list[RowChange]) -> list[TokenRef]:
    """A user's token entries carry its username and its active and staff flags."""
    user_ids = [user_id for change in changes for user_id in change.values("id")]
    keys = Token.objects.filter(user_id__in=user_ids).values_list("key", flat=True)
    return [TokenRef.of(key) for key in keys]


TOKENS = kinds.register(
    CachedKind(
        name="token",
        codec=Codec(
            fields=frozenset({USER_ID, USERNAME, ACTIVE, STAFF, SIGNATURE}),
            valid=_signed,
            seal=_seal,
        ),
        load=_load,
        ttl=lambda: user_cache_settings.TOKEN_TTL,
        near=True,
        tag=lambda ref: ref.mac,
        sources={
            Token: MadeFrom(columns=frozenset({"key", "user_id"}), idents=_tokens_changed),
            User: MadeFrom(
                columns=frozenset({"username", "is_active", "is_staff"}), idents=_tokens_of_users
            ),
        },
    )
)


@dataclasses.dataclass(frozen=True, slots=True)
class RateCount:
    """The rate limit a token request counts against, in the round trip that reads
    the token: its scope's window and what the request costs."""

    scope: str
    window_ms: int
    cost: int


class Found(enum.Enum):
    """How far a token lookup got: the entry was in the cache, was missing there, or
    Redis did not answer."""

    CACHED = "cached"
    MISSING = "missing"
    UNAVAILABLE = "unavailable"


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRead:
    """What one request's token lookup found: the principal (None for an unknown
    token, or one not loaded yet), the token's name (its rate limit counts under
    it), the request's count against that limit (None when not counted: the token
    was not cached), and the users the request prefetched with it
    (``{user_id: entry or None}``; None when they were not read)."""

    ref: TokenRef
    found: Found
    principal: Principal | None = None
    counted: WindowCount | None = None
    prefetched: dict[int, Entry | None] | None = None


def token_cached(*, key: str, prefetch: Sequence[int], rate: RateCount | None) -> TokenRead:
    """The token a well-formed key (``KEY_SHAPE``) names, as the cache holds it:
    one round trip (none when the near cache holds it and the users) that reads the
    token's entry, counts the request against ``rate`` when the token is cached,
    and reads the entries of the users ``prefetch`` names (harmless before the
    token is checked: only the request's view uses them, once it passed). Nothing
    is counted or prefetched when Redis is down: rate limits fail open. A token
    not found in the cache is for ``token_loaded``, once the caller has checked
    its failed-guess limit."""
    ref = TokenRef.of(key)
    count = (
        None
        if rate is None
        else store.Count(throttle_key(rate.scope, ref.mac), rate.window_ms, rate.cost)
    )
    try:
        outbox.before_cached_read()
        reading = store.read_many(
            [(TOKENS, ref), *((reads.USERS, user_id) for user_id in prefetch)], count=count
        )
    except CacheUnavailable:
        return TokenRead(ref, Found.UNAVAILABLE)
    entry, *users = reading.entries
    prefetched = dict(zip(prefetch, users, strict=True)) if prefetch else None
    if entry is None:
        return TokenRead(ref, Found.MISSING, None, reading.counted, prefetched)
    metrics.count_lookup(TOKENS.name, Source.HIT, found=True)
    return TokenRead(ref, Found.CACHED, _principal(entry), reading.counted, prefetched)


def token_loaded(read: TokenRead) -> TokenRead:
    """The token of a ``token_cached`` that did not find it, read through to MySQL
    (and filled when Redis answers)."""
    prefetched = {read.ref: None} if read.found is Found.MISSING else None
    loaded = read_through(TOKENS, [read.ref], prefetched=prefetched)[read.ref].entry
    return dataclasses.replace(read, principal=None if loaded is None else _principal(loaded))

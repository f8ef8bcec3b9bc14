"""The cache-aside algorithm, and every read and write of a user.

This is the only module that decides when Redis is read or written; views, the
admin and management commands call the functions here, and ``users.maintenance``
applies the same rules (leases, fills, TTLs) in bulk for operators. ``users.cache``
is the store it drives (the layout of entries and the atomic scripts).

Reads (``user_get``, ``token_principal_get``):
  Redis hit -> served with no SQL. Miss -> take the entry's lease, load the row
  from MySQL, fill the entry under the lease, serve it. An id found nowhere is
  cached as absent for a short while. Redis down -> served from MySQL, marked
  BYPASS, and nothing is written back.

Writes (``user_create``, ``user_update``, ``user_save``, ``user_delete``): MySQL
first, inside a transaction that also records the affected keys in the outbox;
Redis only after the commit, so a rolled-back write never reaches the cache and
an invalidation Redis missed is replayed later (``users.outbox``). After an
update the entry is deleted or rewritten, as ``UPDATE_STRATEGY`` says; either
way the write revokes any reader's lease, so no reader can store the old state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import functools
import hashlib
import logging
import operator
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import BigIntegerField, Count, Func, Q, QuerySet
from django.dispatch import Signal
from django.http import Http404
from rest_framework.authtoken.models import Token

from . import cache, metrics, outbox
from .conf import user_cache_settings
from .models import User

T = TypeVar("T")

logger = logging.getLogger(__name__)

# The public projection: the API representation and the cached entry.
PUBLIC_FIELDS = (
    "id",
    "username",
    "email",
    "first_name",
    "last_name",
    "is_active",
    "date_joined",
    "updated_at",
)
# The columns a cached entry is made from (``row_to_cache_fields``).
CACHE_ROW_COLUMNS = (*PUBLIC_FIELDS, "version")

# Sent between a reader's MySQL load and its Redis fill, with ``key``. A test
# connects a receiver that blocks here to drive a race deterministically.
cache_fill_pending = Signal()


class Source(enum.StrEnum):
    """Where a read was answered from; the API sends it as ``X-Cache``."""

    HIT = "HIT"
    MISS = "MISS"
    BYPASS = "BYPASS"


@dataclasses.dataclass(frozen=True, slots=True)
class CacheResult:
    """A read's answer: the value (None when the row does not exist) and its source."""

    value: dict | None
    source: Source


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of a token request, built from the token cache.

    Carries what authentication and permissions need, and no more; it is not a
    model instance, so a token-authenticated hit never touches the database.
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


# Projection: MySQL row <-> cache fields <-> API representation.
#
# Every byte of a cached entry is paid once per cached user, so the hash is
# compact: one-letter field names (``cache.USER_FIELD_NAMES``, spelled out in the
# two functions below for speed), no id (the key has it), and both timestamps as
# integer microseconds since the epoch, which Redis stores as 8-byte integers.
# A user then stays in the hash's small listpack encoding at under 200 bytes
# (README, Benchmarks); formatting the timestamps costs about a microsecond
# each on a hit.

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


def _epoch_us(value: datetime.datetime) -> str:
    return str((value - _EPOCH) // _MICROSECOND)


def _format_epoch_us(value: str) -> str:
    """ISO 8601 in UTC with microseconds, e.g. ``2026-11-25T23:41:48.463201Z``."""
    seconds, micro = divmod(int(value), 1_000_000)
    t = time.gmtime(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 (the fastest way)
        t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, micro,
    )  # fmt: skip


def row_to_cache_fields(row: dict) -> dict[str, str]:
    """The cached entry of a row with ``CACHE_ROW_COLUMNS``: strings, and the version."""
    return {
        "u": row["username"],
        "e": row["email"],
        "f": row["first_name"],
        "l": row["last_name"],
        "a": "1" if row["is_active"] else "0",
        "j": _epoch_us(row["date_joined"]),
        "t": _epoch_us(row["updated_at"]),
        cache.VERSION_FIELD: str(row["version"]),
    }


def _fields_to_user(user_id: int, fields: dict[str, str]) -> dict:
    return {
        "id": user_id,
        "username": fields["u"],
        "email": fields["e"],
        "first_name": fields["f"],
        "last_name": fields["l"],
        "is_active": fields["a"] == "1",
        "date_joined": _format_epoch_us(fields["j"]),
        "updated_at": _format_epoch_us(fields["t"]),
    }


def user_row_projection(row: dict) -> dict:
    """The public representation of a row from ``user_list`` (never its password)."""
    return _fields_to_user(row["id"], row_to_cache_fields(row))


# The names of a cached user's fields, in the order of ``cache_entry_values``.
CACHE_ENTRY_NAMES = (*cache.USER_FIELD_NAMES.values(), cache.VERSION_FIELD)


class _EpochMicroseconds(Func):
    """A stored (UTC) datetime as integer microseconds since the epoch, as
    ``_epoch_us`` computes it; plain calendar arithmetic, so the session's time zone
    does not enter into it. MySQL, MariaDB and TiDB all have TIMESTAMPDIFF."""

    template = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', %(expressions)s)"
    output_field = BigIntegerField()


def cache_entry_values(users: QuerySet) -> Iterator[tuple[int, tuple]]:
    """``(id, values of CACHE_ENTRY_NAMES)`` for each of ``users``, for bulk fills.

    The same entry as ``row_to_cache_fields``, but the database converts the
    timestamps: parsing two DATETIME columns per row in mysqlclient costs more than
    the rest of the row, and a warm of a million users reads a million rows.
    """
    rows = users.annotate(
        _joined_us=_EpochMicroseconds("date_joined"), _updated_us=_EpochMicroseconds("updated_at")
    ).values_list(
        "id", "username", "email", "first_name", "last_name", "is_active",
        "_joined_us", "_updated_us", "version",
    )  # fmt: skip
    for user_id, username, email, first, last, active, joined, updated, version in rows:
        yield (
            user_id,
            (username, email, first, last, "1" if active else "0", joined, updated, version),
        )


def absent_cache_fields() -> dict[str, str]:
    """The entry that records "no such row" (the negative cache)."""
    return {cache.ABSENT_FIELD: "1", cache.VERSION_FIELD: "0"}


def jittered_ttl_ms(seconds: int) -> int:
    """An entry's TTL: ``seconds`` shortened by up to ``TTL_JITTER``, so that entries
    written together do not all expire together."""
    jitter = user_cache_settings.TTL_JITTER
    return int(seconds * 1000 * (1 - jitter * random.random()))


# The read-through algorithm, shared by users and tokens.


def _read_through(
    *,
    entity: str,
    key: str,
    load: Callable[[], dict[str, str] | None],
    ttl: int,
    read: Callable[[str], dict[str, str] | None] = cache.read,
) -> tuple[dict[str, str] | None, Source]:
    """Cache-aside read of one entry; returns its fields (None when absent) and source.

    A miss takes the entry's lease before it loads, so of many concurrent misses
    one loads from MySQL while the others wait briefly for its fill; and a write
    revokes the lease, so a load made before that write is never stored.
    ``entity`` ("user", "token") labels the metrics; ``read`` is the first look at
    the entry (``cache.read``, or a read that does more in the same round trip).
    """
    try:
        outbox.before_cached_read()
        fields = read(key)
    except cache.CacheUnavailable:
        return _answered(entity, _timed_load(entity, load), Source.BYPASS)
    if fields is not None:
        return _answered(entity, _present(fields), Source.HIT)

    token = cache.new_lease_token()
    deadline = time.monotonic() + user_cache_settings.LEASE_WAIT_MS / 1000
    waited = False
    while True:
        try:
            state, fields = cache.read_or_lease(key, token, user_cache_settings.LEASE_TTL_MS)
        except cache.CacheUnavailable:
            return _answered(entity, _timed_load(entity, load), Source.BYPASS)
        if state is cache.ReadState.HIT:
            if waited:
                metrics.STAMPEDE_WAITS.labels(entity, "filled").inc()
            return _answered(entity, _present(fields), Source.HIT)
        if state is cache.ReadState.LEASED:
            if waited:
                metrics.STAMPEDE_WAITS.labels(entity, "leased").inc()
            break
        if time.monotonic() >= deadline:
            # The lease holder is slow or gone: answer from MySQL without filling.
            metrics.STAMPEDE_WAITS.labels(entity, "timed_out").inc()
            return _answered(entity, _timed_load(entity, load), Source.MISS)
        waited = True
        time.sleep(user_cache_settings.LEASE_POLL_MS / 1000)

    try:
        loaded = _timed_load(entity, load)
    except Exception:
        with contextlib.suppress(cache.CacheUnavailable):
            cache.release_lease(key, token)
        raise
    cache_fill_pending.send(sender=None, key=key)
    if loaded is None:
        stored, ttl_seconds = absent_cache_fields(), user_cache_settings.NEGATIVE_TTL
    else:
        stored, ttl_seconds = loaded, ttl
    with contextlib.suppress(cache.CacheUnavailable):
        if not cache.fill(key, token, stored, jittered_ttl_ms(ttl_seconds)):
            metrics.STALE_SETS_REJECTED.labels(entity).inc()
    return _answered(entity, loaded, Source.MISS)


def _timed_load(entity: str, load: Callable[[], T]) -> T:
    with metrics.DATABASE_SECONDS.labels(entity).time():
        return load()


def _answered(
    entity: str, fields: dict[str, str] | None, source: Source
) -> tuple[dict[str, str] | None, Source]:
    """Counts a lookup by its result; a hit on a cached absence is a negative hit."""
    negative_hit = source is Source.HIT and fields is None
    result = "negative_hit" if negative_hit else source.value.lower()
    metrics.lookup_counter(entity, result).inc()
    return fields, source


def _present(fields: dict[str, str]) -> dict[str, str] | None:
    return None if cache.ABSENT_FIELD in fields else fields


# Users.


def _load_user_fields(user_id: int) -> dict[str, str] | None:
    row = User.objects.filter(pk=user_id).values(*CACHE_ROW_COLUMNS).first()
    return None if row is None else row_to_cache_fields(row)


def user_get(*, user_id: int, read_ahead: ReadAhead | None = None) -> CacheResult:
    """One user by id, Redis first; ``value`` is None when no such user exists.

    ``read_ahead``, the user's entry as another lookup of this request already read
    it (``token_principal_get``), stands for the first Redis read.

    Logs the lookup at DEBUG: a line per lookup at INFO would double the log volume
    of the busiest path for what ``X-Cache`` and the metrics already say; DEBUG
    (``LOG_LEVEL=DEBUG``) is for following single requests by their request id.
    """
    started = time.perf_counter()
    read = cache.read
    if read_ahead is not None and read_ahead.user_id == user_id:

        def read(_key: str) -> dict[str, str] | None:
            return read_ahead.fields

    fields, source = _read_through(
        entity="user",
        key=cache.user_cache_key(user_id),
        load=lambda: _load_user_fields(user_id),
        ttl=user_cache_settings.TTL,
        read=read,
    )
    if logger.isEnabledFor(logging.DEBUG):
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        logger.debug(
            "user lookup %s: %s%s in %.3f ms",
            user_id,
            source.value,
            "" if fields is not None else " (no such user)",
            duration_ms,
            extra={
                "user_id": user_id,
                "cache": source.value,
                "found": fields is not None,
                "duration_ms": duration_ms,
            },
        )
    value = None if fields is None else _fields_to_user(user_id, fields)
    return CacheResult(value=value, source=source)


def user_list() -> QuerySet:
    """Every user's row, from MySQL, in id order; ``user_row_projection`` shapes each."""
    return User.objects.order_by("id").values(*CACHE_ROW_COLUMNS)


class WriteConflict(Exception):
    """A write kept losing to concurrent ones (deadlock, lock wait timeout, or a TiDB
    write conflict) after ``WRITE_ATTEMPTS`` tries; the client may retry."""


# Errors for which the database says the whole transaction may simply run again
# (Django's atomic() has rolled it back by the time the retry starts). MySQL and
# TiDB: lock wait timeout (1205), deadlock (1213). TiDB: a conflict at commit in an
# optimistic transaction, with SELECT FOR UPDATE (8002) or without (8005, 9007); a
# commit that failed and was rolled back (8022); a table whose schema changed
# during the transaction (8028). Any other database error is a 503 (config/exceptions.py).
_CONFLICT_ERROR_CODES = frozenset({1205, 1213, 8002, 8005, 8022, 8028, 9007})
WRITE_ATTEMPTS = 3


def _retry_conflicts(write: Callable[..., T]) -> Callable[..., T]:
    """Runs a write service again when the database rolled it back for a conflict.

    The database has undone the whole transaction, and with it the outbox row
    and the after-commit cache change, so a retry starts clean. Inside a
    caller's transaction there is nothing safe to retry, so the error goes up.
    """

    @functools.wraps(write)
    def retrying(**kwargs):
        if transaction.get_connection().in_atomic_block:
            return write(**kwargs)
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return write(**kwargs)
            except OperationalError as exc:
                if exc.args[0] not in _CONFLICT_ERROR_CODES:
                    raise
                if attempt == WRITE_ATTEMPTS:
                    raise WriteConflict(str(exc)) from exc
                time.sleep(random.uniform(0, 0.01 * attempt))
        raise AssertionError("unreachable")

    return retrying


@_retry_conflicts
def user_create(
    *,
    username: str,
    email: str,
    password: str | None = None,
    first_name: str = "",
    last_name: str = "",
) -> dict:
    """Inserts a user and, once the insert commits, writes its cache entry.

    Raises ``ValidationError`` (per field) for a weak password or a taken
    username or email, including when a concurrent create wins the race.
    """
    email = User.objects.normalize_email(email)
    user = User(username=username, email=email, first_name=first_name, last_name=last_name)
    _check_unique(username=username, email=email)
    _set_password(user, password)
    with (
        _unique_violations_as_validation_errors(username=username, email=email),
        transaction.atomic(),
    ):
        return _insert(user)


UPDATABLE_FIELDS = ("username", "email", "first_name", "last_name", "is_active")


@_retry_conflicts
def user_update(*, user_id: int, data: dict) -> dict:
    """Changes some of a user's fields (``UPDATABLE_FIELDS`` and ``password``).

    Raises ``Http404`` for an unknown id and ``ValidationError`` for a taken
    username or email or a weak password.
    """
    unknown = set(data) - {*UPDATABLE_FIELDS, "password"}
    assert not unknown, f"user_update cannot change {sorted(unknown)}"
    email = User.objects.normalize_email(data["email"]) if "email" in data else None
    with (
        _unique_violations_as_validation_errors(
            username=data.get("username"), email=email, exclude_id=user_id
        ),
        transaction.atomic(),
    ):
        user = _locked_user(user_id)
        for name in UPDATABLE_FIELDS:
            if name in data:
                setattr(user, name, data[name])
        if email is not None:
            user.email = email
        _check_unique(username=data.get("username"), email=email, exclude_id=user.id)
        if "password" in data:
            _set_password(user, data["password"])
        return _save_locked(user)


@_retry_conflicts
def user_save(*, user: User) -> dict:
    """Saves a new or changed instance (as the admin does) under the same cache rules."""
    with transaction.atomic():
        if user._state.adding:
            return _insert(user)
        user.version = _locked_user(user.pk).version
        return _save_locked(user)


@_retry_conflicts
def user_delete(*, user_id: int) -> None:
    """Deletes a user; its tokens go with it. Raises ``Http404`` for an unknown id."""
    with transaction.atomic():
        user = _locked_user(user_id)
        tombstone = {
            cache.ABSENT_FIELD: "1",
            cache.VERSION_FIELD: str(_next_version(user.version)),
        }
        user.delete()
        key = cache.user_cache_key(user_id)
        if user_cache_settings.UPDATE_STRATEGY == "write-through":

            def apply() -> None:
                cache.write(key, tombstone, jittered_ttl_ms(user_cache_settings.NEGATIVE_TTL))

        else:

            def apply() -> None:
                cache.invalidate([key])

        _sync_after_commit([key], apply)


def _locked_user(user_id: int) -> User:
    user = User.objects.select_for_update().filter(pk=user_id).first()
    if user is None:
        raise Http404("No user with this id.")
    return user


def _next_version(current: int) -> int:
    """The version a write gives the row: above the current one, and at least the
    current time in microseconds.

    Counting alone would restart at 1 when a deleted id is created again, below
    the deleted row's tombstone, and the new row could not be cached; the clock
    keeps versions growing across a delete and re-create. Under the row lock,
    ``current + 1`` keeps them growing whatever the clocks of different hosts say.
    """
    return max(current + 1, time.time_ns() // 1000)


def _insert(user: User) -> dict:
    """Inserts the row and, after commit, writes its entry whatever the strategy:
    that also replaces a cached absence of the new id (no 404 after a 201)."""
    explicit_id = user.pk is not None
    user.version = _next_version(0)
    user.save(force_insert=True)
    if explicit_id:
        # The INSERT may have waited for a concurrent delete of this id, whose
        # tombstone was versioned while we waited: stamp the version again, now
        # that the row is ours, so the new row outranks that tombstone.
        user.version = _next_version(user.version)
        User.objects.filter(pk=user.pk).update(version=user.version)
    fields = _instance_fields(user)
    key = cache.user_cache_key(user.id)
    _sync_after_commit([key], lambda: cache.write(key, fields, jittered_ttl_ms(_ttl())))
    return _fields_to_user(user.id, fields)


def _save_locked(user: User) -> dict:
    """Saves a row locked by this transaction and schedules the cache change.

    The version grows under the row lock, so versions follow commit order and a
    write-through can never replace a newer entry with an older one. The user's
    cached token lookups are dropped too: they carry ``is_active`` and ``is_staff``.
    """
    user.version = _next_version(user.version)
    user.save()
    fields = _instance_fields(user)
    key = cache.user_cache_key(user.id)
    token_keys = [
        cache.token_cache_key(token_digest(token_key))
        for token_key in Token.objects.filter(user_id=user.id).values_list("key", flat=True)
    ]
    if user_cache_settings.UPDATE_STRATEGY == "write-through":

        def apply() -> None:
            cache.write(key, fields, jittered_ttl_ms(_ttl()))
            if token_keys:
                cache.invalidate(token_keys)

    else:

        def apply() -> None:
            cache.invalidate([key, *token_keys])

    _sync_after_commit([key, *token_keys], apply)
    return _fields_to_user(user.id, fields)


def _sync_after_commit(keys: list[str], apply: Callable[[], object]) -> None:
    """Records ``keys`` in the outbox within the current transaction, and runs
    ``apply`` once it commits; if Redis misses it, the outbox replays it."""
    entry_id = outbox.record(keys)
    transaction.on_commit(lambda: outbox.complete(entry_id, apply))


def _instance_fields(user: User) -> dict[str, str]:
    return row_to_cache_fields({name: getattr(user, name) for name in CACHE_ROW_COLUMNS})


def _ttl() -> int:
    return user_cache_settings.TTL


def _set_password(user: User, password: str | None) -> None:
    if not password:
        user.set_unusable_password()
        return
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from exc
    user.set_password(password)


def _check_unique(
    *, username: str | None, email: str | None, exclude_id: int | None = None
) -> None:
    """One query over the matching rows only (the WHERE uses the unique indexes);
    the database's collation decides what counts as the same name."""
    conditions = {
        field: Q(**{field: value})
        for field, value in (("username", username), ("email", email))
        if value is not None
    }
    if not conditions:
        return
    matches = User.objects.filter(functools.reduce(operator.or_, conditions.values()))
    if exclude_id:
        matches = matches.exclude(pk=exclude_id)
    taken = matches.aggregate(
        **{field: Count("id", filter=condition) for field, condition in conditions.items()}
    )
    errors = {field: [_taken_message(field)] for field, count in taken.items() if count}
    if errors:
        raise ValidationError(errors)


@contextlib.contextmanager
def _unique_violations_as_validation_errors(
    *, username: str | None, email: str | None, exclude_id: int | None = None
):
    """Turns a unique-key violation that slipped past ``_check_unique`` (a race lost
    to a concurrent commit) into the same per-field ``ValidationError``."""
    try:
        yield
    except IntegrityError as exc:
        _check_unique(username=username, email=email, exclude_id=exclude_id)
        field = "email" if "email" in str(exc) else "username"
        raise ValidationError({field: [_taken_message(field)]}) from exc


def _taken_message(field: str) -> str:
    return f"A user with that {field} already exists."


# Tokens: authentication goes through the same read-through machinery, keyed by
# a digest so that Redis never holds a credential.


def token_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _load_token_fields(key: str) -> dict[str, str] | None:
    row = (
        Token.objects.filter(key=key)
        .values("user_id", "user__username", "user__is_staff", "user__is_active")
        .first()
    )
    if row is None:
        return None
    return {
        "user_id": str(row["user_id"]),
        "username": row["user__username"],
        "is_staff": "1" if row["user__is_staff"] else "0",
        "is_active": "1" if row["user__is_active"] else "0",
    }


@dataclasses.dataclass(frozen=True, slots=True)
class ReadAhead:
    """A user's entry read earlier in the same request, in another lookup's round
    trip: its fields, or None when it was not cached."""

    user_id: int
    fields: dict[str, str] | None


@dataclasses.dataclass(frozen=True, slots=True)
class TokenLookup:
    """What a token lookup found: the principal (None for an unknown token), the
    request's count against the rate limit (None when not counted) and the user the
    request asks for, when it was read in the same round trip."""

    principal: Principal | None
    counted: cache.WindowCount | None = None
    read_ahead: ReadAhead | None = None


def token_principal_get(
    *, key: str, counter: tuple[str, int] | None = None, read_ahead_id: int | None = None
) -> TokenLookup:
    """The principal a token authenticates, from the token cache.

    With ``counter`` (key, window in ms), the request is counted against that rate
    limit in the same round trip as the token's cache read; with ``read_ahead_id``
    too, the cache entry of that user is read in it as well, so that a request for
    one user costs a single round trip when both are cached (``user_get`` takes the
    read-ahead). Reading the user before the token is checked is harmless: the
    request's view, which alone uses it, runs only once the token passed. Nothing
    is counted or read ahead when Redis is down: rate limits fail open.
    """
    entry_key = cache.token_cache_key(token_digest(key))
    counted = read_ahead = None
    read = cache.read
    if counter is not None or read_ahead_id is not None:
        ahead_key = None if read_ahead_id is None else cache.user_cache_key(read_ahead_id)

        def read(entry_key: str) -> dict[str, str] | None:
            nonlocal counted, read_ahead
            fields, counted, ahead = cache.read_with(entry_key, count=counter, read_ahead=ahead_key)
            if ahead_key is not None:
                read_ahead = ReadAhead(read_ahead_id, ahead)
            return fields

    fields, _source = _read_through(
        entity="token",
        key=entry_key,
        load=lambda: _load_token_fields(key),
        ttl=user_cache_settings.TOKEN_TTL,
        read=read,
    )
    if fields is None:
        return TokenLookup(principal=None, counted=counted)
    principal = Principal(
        id=int(fields["user_id"]),
        username=fields["username"],
        is_staff=fields["is_staff"] == "1",
        is_active=fields["is_active"] == "1",
    )
    return TokenLookup(principal=principal, counted=counted, read_ahead=read_ahead)


def token_cache_invalidate(*, key: str) -> None:
    """Forgets a token's cached lookup once the surrounding transaction commits."""
    keys = [cache.token_cache_key(token_digest(key))]
    with transaction.atomic():
        _sync_after_commit(keys, lambda: cache.invalidate(keys))

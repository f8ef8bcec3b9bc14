"""The cache-aside algorithm's reads, and every write of a user.

Reads (``user_get``, ``token_principal_get``):
  Redis hit -> served with no SQL. Miss -> take the entry's lease, load the row
  from MySQL, fill the entry under the lease, serve it. An id found nowhere is
  cached as absent for a short while. Redis down -> served from MySQL, marked
  BYPASS, and nothing is written back.

Writes (``user_create``, ``user_update``, ``user_save``, ``user_delete``) check the
writer's permissions (``users.permissions``) and change MySQL inside a
transaction, under the row lock; what the change does to Redis, and when, is
``users.invalidation``'s, which every save and delete of a user or a token goes
through, whoever makes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hmac
import logging
import operator
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Count, Q, QuerySet
from django.dispatch import Signal
from django.http import Http404
from rest_framework.authtoken.models import Token

from . import cache, metrics, outbox, tokens
from .conf import user_cache_settings
from .entries import (
    ABSENT_ENTRY,
    CACHE_ROW_COLUMNS,
    fields_to_user,
    is_absent,
    row_to_cache_fields,
)
from .models import User
from .permissions import check_write
from .tokens import Principal

T = TypeVar("T")

logger = logging.getLogger(__name__)

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


# The read-through algorithm, shared by users and tokens.


def _read_through(
    *,
    entity: str,
    key: str,
    load: Callable[[], dict[str, str] | None],
    ttl: int,
    read: Callable[[str], dict[str, str] | None] = cache.read,
    trusted: Callable[[dict[str, str]], bool] | None = None,
    cache_absent: bool = True,
) -> tuple[dict[str, str] | None, Source]:
    """Cache-aside read of one entry; returns its fields (None when absent) and source.

    A miss takes the entry's lease before it loads, so of many concurrent misses
    one loads from MySQL while the others wait briefly for its fill; and a write
    revokes the lease, so a load made before that write is never stored.
    ``entity`` ("user", "token") labels the metrics; ``read`` is the first look at
    the entry (``cache.read``, or a read that does more in the same round trip).
    An entry ``trusted`` refuses (a token entry whose signature fails) is deleted
    and read again from MySQL. Without ``cache_absent``, a row found nowhere is
    not remembered (token guesses must not fill Redis).
    """
    try:
        outbox.before_cached_read()
        fields = read(key)
        if fields is not None and not _is_trusted(entity, key, fields, trusted):
            fields = None
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
            if state is cache.ReadState.HIT and not _is_trusted(entity, key, fields, trusted):
                state = cache.ReadState.BUSY
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
    with contextlib.suppress(cache.CacheUnavailable):
        if loaded is None and not cache_absent:
            cache.release_lease(key, token)
        else:
            stored, ttl_seconds = (
                (loaded, ttl)
                if loaded is not None
                else (ABSENT_ENTRY, user_cache_settings.NEGATIVE_TTL)
            )
            if not cache.fill(key, token, stored, cache.jittered_ttl_ms(ttl_seconds)):
                metrics.STALE_SETS_REJECTED.labels(entity).inc()
    return _answered(entity, loaded, Source.MISS)


def _is_trusted(
    entity: str,
    key: str,
    fields: dict[str, str],
    trusted: Callable[[dict[str, str]], bool] | None,
) -> bool:
    """Whether a cached entry may be served; one that may not is deleted from Redis."""
    if trusted is None or trusted(fields):
        return True
    logger.warning("refused a cached %s entry that fails its check: %s", entity, key)
    metrics.ENTRIES_REFUSED.labels(entity).inc()
    cache.invalidate([key])
    return False


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
    return None if is_absent(fields) else fields


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
    value = None if fields is None else fields_to_user(user_id, fields)
    return CacheResult(value=value, source=source)


def user_list() -> QuerySet:
    """Every user's row, from MySQL, in id order; ``entries.user_row_projection`` shapes each."""
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


def _writer(actor: User | Principal | None) -> User | None:
    """The writing user as MySQL knows it now (its permissions included), or None for
    the system. A token request's principal comes from the cache; what it may
    write must not."""
    if actor is None:
        return None
    writer = User.objects.filter(pk=actor.pk).first()
    if writer is None:
        raise PermissionDenied("You do not have permission to perform this action.")
    return writer


@_retry_conflicts
def user_create(
    *,
    actor: User | Principal | None,
    username: str,
    email: str,
    password: str | None = None,
    first_name: str = "",
    last_name: str = "",
) -> dict:
    """Inserts a user; its entry is written once the insert commits.

    ``actor`` is who asks (None: the system). Raises ``PermissionDenied`` when the
    actor may not add users, and ``ValidationError`` (per field) for a weak
    password or a taken username or email, also when a concurrent create wins
    the race.
    """
    check_write(_writer(actor), "add")
    username = User.normalize_username(username)
    email = User.objects.normalize_email(email)
    user = User(username=username, email=email, first_name=first_name, last_name=last_name)
    _check_username(user)
    _check_unique(username=username, email=email)
    _set_password(user, password)
    with (
        _unique_violations_as_validation_errors(username=username, email=email),
        transaction.atomic(),
    ):
        user.save(force_insert=True)
    return fields_to_user(user.id, _instance_fields(user))


UPDATABLE_FIELDS = ("username", "email", "first_name", "last_name", "is_active")


@_retry_conflicts
def user_update(*, actor: User | Principal | None, user_id: int, data: dict) -> dict:
    """Changes some of a user's fields (``UPDATABLE_FIELDS`` and ``password``).

    Raises ``Http404`` for an unknown id, ``PermissionDenied`` when the actor may
    not change this user, and ``ValidationError`` for a taken username or email
    or a weak password. A new password revokes the user's tokens (``User.save``).
    """
    unknown = set(data) - {*UPDATABLE_FIELDS, "password"}
    assert not unknown, f"user_update cannot change {sorted(unknown)}"
    data = dict(data)
    if "username" in data:
        data["username"] = User.normalize_username(data["username"])
    if "email" in data:
        data["email"] = User.objects.normalize_email(data["email"])
    with (
        _unique_violations_as_validation_errors(
            username=data.get("username"), email=data.get("email"), exclude_id=user_id
        ),
        transaction.atomic(),
    ):
        user = _locked_user(user_id)
        check_write(_writer(actor), "change", user)
        for name in UPDATABLE_FIELDS:
            if name in data:
                setattr(user, name, data[name])
        if "username" in data:
            _check_username(user)
        _check_unique(username=data.get("username"), email=data.get("email"), exclude_id=user.id)
        if "password" in data:
            _set_password(user, data["password"])
        user.save()
    return fields_to_user(user.id, _instance_fields(user))


@_retry_conflicts
def user_save(*, actor: User | None, user: User) -> dict:
    """Saves a new or changed instance (as the admin does) under the same rules."""
    with transaction.atomic():
        if user._state.adding:
            check_write(_writer(actor), "add")
            user.save(force_insert=True)
        else:
            current = _locked_user(user.pk)
            check_write(_writer(actor), "change", current)
            user.version = current.version
            user.save()
    return fields_to_user(user.id, _instance_fields(user))


@_retry_conflicts
def user_delete(*, actor: User | Principal | None, user_id: int) -> None:
    """Deletes a user; its tokens go with it. Raises ``Http404`` for an unknown id and
    ``PermissionDenied`` when the actor may not delete this user."""
    with transaction.atomic():
        user = _locked_user(user_id)
        check_write(_writer(actor), "delete", user)
        user.delete()


def _locked_user(user_id: int) -> User:
    user = User.objects.select_for_update().filter(pk=user_id).first()
    if user is None:
        raise Http404("No user with this id.")
    return user


def _instance_fields(user: User) -> dict[str, str]:
    return row_to_cache_fields({name: getattr(user, name) for name in CACHE_ROW_COLUMNS})


def _check_username(user: User) -> None:
    """The username's own validators (characters, one script), as the model runs them."""
    try:
        user.clean_fields(exclude=[f.name for f in User._meta.fields if f.name != "username"])
    except ValidationError as exc:
        raise ValidationError({"username": exc.message_dict["username"]}) from exc


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


# Tokens: authentication goes through the same read-through machinery, under the
# keyed names and signed entries of ``users.tokens``.


def _load_token_fields(key: str, mac: str) -> dict[str, str] | None:
    row = (
        Token.objects.filter(key=key)
        .values("key", "user_id", "user__username", "user__is_staff", "user__is_active")
        .first()
    )
    # MySQL compares keys case-insensitively: only the exact key is this token.
    if row is None or not hmac.compare_digest(row["key"], key):
        return None
    return tokens.encode_entry(mac, row, user_cache_settings.TOKEN_TTL)


@dataclasses.dataclass(frozen=True, slots=True)
class ReadAhead:
    """A user's entry read earlier in the same request, in another lookup's round
    trip: its fields, or None when it was not cached."""

    user_id: int
    fields: dict[str, str] | None


@dataclasses.dataclass(frozen=True, slots=True)
class TokenLookup:
    """What a token lookup found: the principal (None for an unknown token), the
    token's name (``tokens.token_mac``, which its rate limit counts under), the
    request's count against the rate limit (None when not counted yet) and the user
    the request asks for, when it was read in the same round trip."""

    principal: Principal | None
    token_mac: str
    counted: cache.WindowCount | None = None
    read_ahead: ReadAhead | None = None


def token_principal_get(
    *,
    key: str,
    counter: Callable[[str], tuple[str, int] | None] | None = None,
    read_ahead_id: int | None = None,
    before_load: Callable[[], None] | None = None,
) -> TokenLookup:
    """The principal a well-formed token key (``tokens.is_well_formed``) authenticates.

    With ``counter`` (the token's name -> its rate-limit counter key and window in
    ms), the request is counted against that limit in the same round trip as the
    token's cache read, when the token is cached; with ``read_ahead_id`` too, the
    cache entry of that user is read in it as well, so that a request for one
    user costs a single round trip when both are cached (``user_get`` takes the
    read-ahead). Reading the user before the token is checked is harmless: the
    request's view, which alone uses it, runs only once the token passed.
    ``before_load`` runs before any MySQL work (the failed-guess limit). Nothing is
    counted or read ahead when Redis is down: rate limits fail open.
    """
    mac = tokens.token_mac(key)
    entry_key = cache.token_cache_key(mac)
    count = counter(mac) if counter is not None else None
    counted = read_ahead = None
    read = cache.read
    if count is not None or read_ahead_id is not None:
        ahead_key = None if read_ahead_id is None else cache.user_cache_key(read_ahead_id)

        def read(entry_key: str) -> dict[str, str] | None:
            nonlocal counted, read_ahead
            fields, counted, ahead = cache.read_with(entry_key, count=count, read_ahead=ahead_key)
            if ahead_key is not None:
                read_ahead = ReadAhead(read_ahead_id, ahead)
            return fields

    def load() -> dict[str, str] | None:
        if before_load is not None:
            before_load()
        return _load_token_fields(key, mac)

    fields, _source = _read_through(
        entity="token",
        key=entry_key,
        load=load,
        ttl=user_cache_settings.TOKEN_TTL,
        read=read,
        trusted=lambda fields: tokens.decode_entry(mac, fields) is not None,
        cache_absent=False,
    )
    principal = None if fields is None else tokens.decode_entry(mac, fields)
    if principal is None:
        return TokenLookup(principal=None, token_mac=mac, counted=counted)
    return TokenLookup(principal=principal, token_mac=mac, counted=counted, read_ahead=read_ahead)

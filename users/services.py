"""The cache-aside algorithm, and every read and write of a user.

This is the only module that decides when Redis is read or written; views, the
admin and management commands call the functions here. ``users.cache`` is the
store it drives (the layout of entries and the atomic scripts).

Reads (``user_get``, ``token_principal_get``):
  Redis hit -> served with no SQL. Miss -> take the entry's lease, load the row
  from MySQL, fill the entry under the lease, serve it. An id found nowhere is
  cached as absent for a short while. Redis down -> served from MySQL, marked
  BYPASS, and nothing is written back.

Writes (``user_create``): MySQL first, inside a transaction; Redis only after the
commit, so a rolled-back write never reaches the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import random
import time
from collections.abc import Callable

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.dispatch import Signal
from rest_framework.authtoken.models import Token

from . import cache
from .conf import user_cache_settings
from .models import User

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
_ROW_COLUMNS = (*PUBLIC_FIELDS, "version")

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


def _format_datetime(value) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _row_to_fields(row: dict) -> dict[str, str]:
    return {
        "id": str(row["id"]),
        "username": row["username"],
        "email": row["email"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "is_active": "1" if row["is_active"] else "0",
        "date_joined": _format_datetime(row["date_joined"]),
        "updated_at": _format_datetime(row["updated_at"]),
        cache.VERSION_FIELD: str(row["version"]),
    }


def _fields_to_user(fields: dict[str, str]) -> dict:
    return {
        "id": int(fields["id"]),
        "username": fields["username"],
        "email": fields["email"],
        "first_name": fields["first_name"],
        "last_name": fields["last_name"],
        "is_active": fields["is_active"] == "1",
        "date_joined": fields["date_joined"],
        "updated_at": fields["updated_at"],
    }


def user_row_projection(row: dict) -> dict:
    """The public representation of a row from ``user_list`` (never its password)."""
    return _fields_to_user(_row_to_fields(row))


def _absent_fields() -> dict[str, str]:
    return {cache.ABSENT_FIELD: "1", cache.VERSION_FIELD: "0"}


def _ttl_ms(seconds: int) -> int:
    jitter = user_cache_settings.TTL_JITTER
    return int(seconds * 1000 * (1 - jitter * random.random()))


# The read-through algorithm, shared by users and tokens.


def _read_through(
    *, key: str, load: Callable[[], dict[str, str] | None], ttl: int
) -> tuple[dict[str, str] | None, Source]:
    """Cache-aside read of one entry; returns its fields (None when absent) and source.

    A miss takes the entry's lease before it loads, so of many concurrent misses
    one loads from MySQL while the others wait briefly for its fill; and a write
    revokes the lease, so a load made before that write is never stored.
    """
    try:
        fields = cache.read(key)
    except cache.CacheUnavailable:
        return load(), Source.BYPASS
    if fields is not None:
        return _present(fields), Source.HIT

    token = cache.new_lease_token()
    deadline = time.monotonic() + user_cache_settings.LEASE_WAIT_MS / 1000
    while True:
        try:
            state, fields = cache.read_or_lease(key, token, user_cache_settings.LEASE_TTL_MS)
        except cache.CacheUnavailable:
            return load(), Source.BYPASS
        if state is cache.ReadState.HIT:
            return _present(fields), Source.HIT
        if state is cache.ReadState.LEASED:
            break
        if time.monotonic() >= deadline:
            # The lease holder is slow or gone: answer from MySQL without filling.
            return load(), Source.MISS
        time.sleep(user_cache_settings.LEASE_POLL_MS / 1000)

    loaded = load()
    cache_fill_pending.send(sender=None, key=key)
    if loaded is None:
        stored, ttl_seconds = _absent_fields(), user_cache_settings.NEGATIVE_TTL
    else:
        stored, ttl_seconds = loaded, ttl
    with contextlib.suppress(cache.CacheUnavailable):
        cache.fill(key, token, stored, _ttl_ms(ttl_seconds))
    return loaded, Source.MISS


def _present(fields: dict[str, str]) -> dict[str, str] | None:
    return None if cache.ABSENT_FIELD in fields else fields


# Users.


def _load_user_fields(user_id: int) -> dict[str, str] | None:
    row = User.objects.filter(pk=user_id).values(*_ROW_COLUMNS).first()
    return None if row is None else _row_to_fields(row)


def user_get(*, user_id: int) -> CacheResult:
    """One user by id, Redis first; ``value`` is None when no such user exists."""
    fields, source = _read_through(
        key=cache.user_cache_key(user_id),
        load=lambda: _load_user_fields(user_id),
        ttl=user_cache_settings.TTL,
    )
    return CacheResult(value=None if fields is None else _fields_to_user(fields), source=source)


def user_list() -> QuerySet:
    """Every user's row, from MySQL, in id order; ``user_row_projection`` shapes each."""
    return User.objects.order_by("id").values(*_ROW_COLUMNS)


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
    if password:
        try:
            validate_password(password, user)
        except ValidationError as exc:
            raise ValidationError({"password": exc.messages}) from exc
        user.set_password(password)
    else:
        user.set_unusable_password()
    try:
        with transaction.atomic():
            user.save(force_insert=True)
            fields = _row_to_fields({name: getattr(user, name) for name in _ROW_COLUMNS})
            transaction.on_commit(lambda: _cache_write(cache.user_cache_key(user.id), fields))
    except IntegrityError as exc:
        raise _duplicate_error(exc, username=username, email=email) from exc
    return _fields_to_user(fields)


def _check_unique(*, username: str, email: str) -> None:
    """One query; the database's collation decides what counts as the same name."""
    taken = User.objects.aggregate(
        username=Count("id", filter=Q(username=username)),
        email=Count("id", filter=Q(email=email)),
    )
    errors = {
        field: [f"A user with that {field} already exists."]
        for field, count in taken.items()
        if count
    }
    if errors:
        raise ValidationError(errors)


def _duplicate_error(exc: IntegrityError, *, username: str, email: str) -> ValidationError:
    """Maps a unique-key violation that slipped past ``_check_unique`` (a race) to a field."""
    try:
        _check_unique(username=username, email=email)
    except ValidationError as error:
        return error
    field = "email" if "email" in str(exc) else "username"
    return ValidationError({field: [f"A user with that {field} already exists."]})


def _cache_write(key: str, fields: dict[str, str]) -> None:
    with contextlib.suppress(cache.CacheUnavailable):
        cache.write(key, fields, _ttl_ms(user_cache_settings.TTL))


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


def token_principal_get(*, key: str) -> Principal | None:
    """The principal a token authenticates, or None for an unknown token."""
    fields, _source = _read_through(
        key=cache.token_cache_key(token_digest(key)),
        load=lambda: _load_token_fields(key),
        ttl=user_cache_settings.TOKEN_TTL,
    )
    if fields is None:
        return None
    return Principal(
        id=int(fields["user_id"]),
        username=fields["username"],
        is_staff=fields["is_staff"] == "1",
        is_active=fields["is_active"] == "1",
    )


def token_cache_invalidate(*, key: str) -> None:
    """Forgets a token's cached lookup once the surrounding transaction commits."""
    transaction.on_commit(lambda: _cache_invalidate([cache.token_cache_key(token_digest(key))]))


def _cache_invalidate(keys: list[str]) -> None:
    with contextlib.suppress(cache.CacheUnavailable):
        cache.invalidate(keys)

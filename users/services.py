"""Every write of a user: create, update, save (the admin's), delete.

Each checks who writes (``users.permissions``, with the writer's permissions read
from MySQL) and changes MySQL inside a transaction, under the row lock. A new
password is hashed before that transaction opens (``_prepared_password``): a hash
is a quarter of a second of CPU, and no row lock, connection's transaction or
concurrent writer may wait on it. What the
change does to Redis, and when, is ``users.invalidation``'s: every save and
delete of a user or a token goes through it, whoever makes it. Reads are
``users.reads``.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.contrib.auth.hashers import make_password
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Count, Q
from django.utils.http import parse_etags

from config.database import WriteConflict, is_conflict

from . import entries
from .models import LOOKALIKE_MESSAGE, User
from .permissions import check_write
from .tokens import Principal

T = TypeVar("T")

WRITE_ATTEMPTS = 3
UPDATABLE_FIELDS = ("username", "email", "first_name", "last_name", "is_active")


def _retry_conflicts(write: Callable[..., T]) -> Callable[..., T]:
    """Runs a write again when the database rolled it back for a conflict
    (``config.database``), then gives up with ``WriteConflict``.

    The database has undone the whole transaction, and with it the outbox row and
    the after-commit cache change, so a retry starts clean. Inside a caller's
    transaction there is nothing safe to retry, so the error goes up.
    """

    @functools.wraps(write)
    def retrying(**kwargs):
        if transaction.get_connection().in_atomic_block:
            return write(**kwargs)
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return write(**kwargs)
            except OperationalError as exc:
                if not is_conflict(exc):
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


def user_create(
    *,
    actor: User | Principal | None,
    username: str,
    email: str,
    password: str | None = None,
    first_name: str = "",
    last_name: str = "",
) -> User:
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
    _check_unique(username=username, email=email, user=user)
    user.set_hashed_password(*_prepared_password(user, password))
    return _insert(user=user)


@_retry_conflicts
def _insert(*, user: User) -> User:
    """The create's transaction, run again on a conflict without hashing again."""
    with (
        _unique_violations_as_validation_errors(username=user.username, email=user.email),
        transaction.atomic(),
    ):
        user.save(force_insert=True)
    return user


def user_update(
    *, actor: User | Principal | None, user_id: int, data: dict, if_match: str | None = None
) -> User:
    """Changes some of a user's fields (``UPDATABLE_FIELDS`` and ``password``).

    Raises ``User.DoesNotExist`` for an unknown id, ``PermissionDenied`` when the actor may
    not change this user, ``PreconditionFailed`` when ``if_match`` (an If-Match
    header) names no current ETag of the user, and ``ValidationError`` for a taken
    username or email or a weak password. A new password revokes the user's
    tokens (``User.save``). The check and the write happen under the row lock, so
    two writers holding the same ETag cannot both succeed; a new password is
    checked and hashed before the lock, after the actor was found allowed to
    change the user as it stood then.
    """
    unknown = set(data) - {*UPDATABLE_FIELDS, "password"}
    assert not unknown, f"user_update cannot change {sorted(unknown)}"
    data = dict(data)
    if "username" in data:
        data["username"] = User.normalize_username(data["username"])
    if "email" in data:
        data["email"] = User.objects.normalize_email(data["email"])
    password = _prepared_update_password(actor=actor, user_id=user_id, data=data)
    return _update(actor=actor, user_id=user_id, data=data, if_match=if_match, password=password)


@_retry_conflicts
def _update(
    *,
    actor: User | Principal | None,
    user_id: int,
    data: dict,
    if_match: str | None,
    password: tuple[str, str | None] | None,
) -> User:
    """The update's transaction, run again on a conflict with the hash made once."""
    with (
        _unique_violations_as_validation_errors(
            username=data.get("username"), email=data.get("email"), exclude_id=user_id
        ),
        transaction.atomic(),
    ):
        user = _locked_user(user_id)
        check_write(_writer(actor), "change", user)
        _check_precondition(user, if_match)
        for name in UPDATABLE_FIELDS:
            if name in data:
                setattr(user, name, data[name])
        if "username" in data:
            _check_username(user)
        _check_unique(
            username=data.get("username"), email=data.get("email"), exclude_id=user.id, user=user
        )
        if password is not None:
            user.set_hashed_password(*password)
        user.save()
    return user


@_retry_conflicts
def user_save(*, actor: User | None, user: User) -> User:
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
    return user


@_retry_conflicts
def user_delete(
    *, actor: User | Principal | None, user_id: int, if_match: str | None = None
) -> None:
    """Deletes a user; its tokens go with it. Raises ``User.DoesNotExist`` for an unknown id,
    ``PermissionDenied`` when the actor may not delete this user and
    ``PreconditionFailed`` as ``user_update`` does."""
    with transaction.atomic():
        user = _locked_user(user_id)
        check_write(_writer(actor), "delete", user)
        _check_precondition(user, if_match)
        user.delete()


class PreconditionFailed(Exception):
    """The user has changed since the ETag a write was based on (``If-Match``): the
    API answers 412 (``users.errors``)."""


def _check_precondition(user: User, if_match: str | None) -> None:
    """``If-Match``: "*" for any existing user, or a list of ETags (strong comparison:
    a weak tag never matches) one of which must be the user's current one."""
    if if_match is None:
        return
    tags = parse_etags(if_match)
    if "*" not in tags and entries.etag(user.version) not in tags:
        raise PreconditionFailed()


def _locked_user(user_id: int) -> User:
    user = User.objects.select_for_update().filter(pk=user_id).first()
    if user is None:
        raise User.DoesNotExist("No user with this id.")
    return user


def _check_username(user: User) -> None:
    """The username's own validators (characters, one script), as the model runs them."""
    try:
        user.clean_fields(exclude=[f.name for f in User._meta.fields if f.name != "username"])
    except ValidationError as exc:
        raise ValidationError({"username": exc.message_dict["username"]}) from exc


def _prepared_update_password(
    *, actor: User | Principal | None, user_id: int, data: dict
) -> tuple[str, str | None] | None:
    """The hash of ``data``'s password (None without one), made with no transaction
    open: checked against the user as it stands (unlocked) with ``data``'s other
    fields, once the actor may change that user, so that a caller without the
    right costs no hash. The write checks again under the lock."""
    if "password" not in data:
        return None
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise User.DoesNotExist("No user with this id.")
    check_write(_writer(actor), "change", user)
    for name in UPDATABLE_FIELDS:
        if name in data:
            setattr(user, name, data[name])
    return _prepared_password(user, data["password"])


def _prepared_password(user: User, password: str | None) -> tuple[str, str | None]:
    """``password``'s hash and the password itself for ``User.set_hashed_password``
    (an unusable hash for none), once the validators accept it for ``user``."""
    if not password:
        return make_password(None), None
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from exc
    return make_password(password), password


def _check_unique(
    *,
    username: str | None,
    email: str | None,
    exclude_id: int | None = None,
    user: User | None = None,
) -> None:
    """One query over the matching rows only (the WHERE uses the unique indexes);
    the database's collation decides what counts as the same name, and the
    skeletons ``user`` (named ``username``) would store what counts as a look-alike
    (``users.identity``)."""
    conditions = {
        field: Q(**{field: value})
        for field, value in (("username", username), ("email", email))
        if value is not None
    }
    if not conditions:
        return
    if username is not None and user is not None:
        conditions["lookalike"] = user.lookalikes()
    matches = User.objects.filter(functools.reduce(operator.or_, conditions.values()))
    if exclude_id:
        matches = matches.exclude(pk=exclude_id)
    taken = matches.aggregate(
        **{field: Count("id", filter=condition) for field, condition in conditions.items()}
    )
    lookalikes = taken.pop("lookalike", 0)
    errors = {field: [_taken_message(field)] for field, count in taken.items() if count}
    if lookalikes and "username" not in errors:
        errors["username"] = [LOOKALIKE_MESSAGE]
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

"""How a change to a user or a token reaches the cache, whoever makes it.

The services save and delete through the ORM, and so do Django's and DRF's own
paths that never call them: the admin's token pages, ``changepassword``,
``createsuperuser``, ``drf_create_token -r``. The model signals below see every
one of those writes, so each goes through the same steps (only
``QuerySet.update()`` and SQL typed elsewhere pass by: ``follow_binlog`` finds
them in MySQL's binary log and calls ``invalidate_rows``):

1. Inside the write's transaction the affected keys are recorded in the outbox.
2. After the commit, the token lookups and the leases are deleted, and the
   user entry is either deleted (``UPDATE_STRATEGY`` "invalidate", and every
   delete) or filled with the committed state (a create, so that a POST writes
   Redis as the design says, and every save under "write-through").
3. If Redis misses step 2, the outbox replays it as a deletion (``users.outbox``).

A deletion is safe whenever it lands: a reader that loaded the old row finds
its lease gone and its fill refused. A fill is not, by itself: the after-commit
steps of two writes can reach Redis in either order. So a write that fills
takes the entry's lease inside its transaction, under the row lock it holds,
with a token of its own; the lease replaces any reader's and any older write's,
and the write's fill stands only while its lease does. A later write replaces
the lease in turn, and then the fill deletes the entry instead of storing: a
late after-commit step never leaves a state older than the last committed one.

A save outside a transaction (Django's commands run in autocommit) has already
committed when its signal fires, with no row lock left to order it against
other writes: its entry is only ever deleted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save
from rest_framework.authtoken.models import Token, TokenProxy

from . import entries
from .cache import store
from .cache.keys import name_key, token_key, user_key
from .cache.near import near
from .cache.transport import CacheUnavailable
from .conf import user_cache_settings
from .models import User
from .outbox import outbox
from .tokens import token_mac

# Ids in one IN list, and keys in one pipelined round trip, of ``invalidate_rows``.
_ROWS_PER_QUERY = 500


def user_changed(user: User, *, created: bool = False, deleted: bool = False) -> None:
    """Steps 1 to 3 for a user saved or deleted in the current transaction."""
    key = user_key(user.pk)
    # The user's token lookups carry its active and staff flags; a cached absence
    # of its username or e-mail must not outlive a create or a rename. (A name that
    # a rename or a delete frees is checked against the user on every lookup.)
    others = [
        *([] if deleted else _token_keys(user.pk)),
        *(name_key(field, entries.lookup_value(field, getattr(user, field)))
          for field in entries.LOOKUP_FIELDS),
    ]  # fmt: skip
    keys = [key, *others]
    fill = not deleted and (created or user_cache_settings.UPDATE_STRATEGY == "write-through")
    if not (fill and connection.in_atomic_block):
        _after_commit(keys, lambda: store.invalidate(keys))
        return
    lease = store.new_lease_token()
    with contextlib.suppress(CacheUnavailable):
        store.take_lease(key, lease, user_cache_settings.LEASE_TTL_MS)
    entry = entries.encode(user)

    def fill_or_delete() -> None:
        store.invalidate(others)
        store.fill_or_delete(key, lease, entry, store.jittered_ttl_ms(user_cache_settings.TTL))

    _after_commit(keys, fill_or_delete)


def token_changed(token: Token) -> None:
    """A token created, reassigned or deleted: its cached lookup goes."""
    keys = [token_key(token_mac(token.key))]
    _after_commit(keys, lambda: store.invalidate(keys))


def invalidate_rows(*, user_ids: Iterable[int] = (), token_keys: Iterable[str] = ()) -> None:
    """Deletes the entries and leases of these users and tokens, as a write's
    after-commit step does, for rows that changed where no signal saw it (raw SQL,
    ``QuerySet.update()``, another application): ``users.binlog`` calls it for every
    committed change of the two tables. A user's token lookups go too, found in
    MySQL, since they carry its username, is_active and is_staff.

    Nothing is recorded in the outbox: the caller retries until this returns. Raises
    ``CacheUnavailable`` when Redis does not answer, ``DatabaseError`` when MySQL does
    not.
    """
    user_ids = sorted(set(user_ids))
    keys = [token_key(token_mac(key)) for key in set(token_keys)]
    for start in range(0, len(user_ids), _ROWS_PER_QUERY):
        batch = user_ids[start : start + _ROWS_PER_QUERY]
        keys += [user_key(user_id) for user_id in batch]
        tokens = Token.objects.filter(user_id__in=batch).values_list("key", flat=True)
        keys += [token_key(token_mac(key)) for key in tokens]
    for start in range(0, len(keys), _ROWS_PER_QUERY):
        store.invalidate(keys[start : start + _ROWS_PER_QUERY])


def _token_keys(user_id: int) -> list[str]:
    keys = Token.objects.filter(user_id=user_id).values_list("key", flat=True)
    return [token_key(token_mac(key)) for key in keys]


def _after_commit(keys: list[str], apply: Callable[[], object]) -> None:
    """Records ``keys`` in the outbox within the current transaction, and runs
    ``apply`` once it commits; if Redis misses it, the outbox replays it."""

    def after_commit() -> None:
        # This process's near cache first, whatever Redis does: the writer reads its
        # own write at once. And again once Redis has dropped the keys: a read of
        # this process that fetched an old entry from Redis in between would
        # otherwise keep it until Redis's invalidation message arrives.
        near.invalidate(keys)
        outbox.complete(entry_id, keys, apply)
        near.invalidate(keys)

    with transaction.atomic():
        entry_id = outbox.record(keys)
        transaction.on_commit(after_commit)


def _user_saved(sender, instance: User, created: bool, update_fields, **kwargs) -> None:
    if update_fields is not None and set(update_fields) <= User.UNCACHED_FIELDS:
        return
    user_changed(instance, created=created)


def _user_deleted(sender, instance: User, **kwargs) -> None:
    user_changed(instance, deleted=True)


def _token_saved_or_deleted(sender, instance: Token, **kwargs) -> None:
    token_changed(instance)


def connect() -> None:
    """Called once, from ``UsersConfig.ready``. The admin edits tokens as
    ``TokenProxy``, whose signals name the proxy, not ``Token``."""
    post_save.connect(_user_saved, sender=User, dispatch_uid="users.user_saved")
    post_delete.connect(_user_deleted, sender=User, dispatch_uid="users.user_deleted")
    for model in (Token, TokenProxy):
        name = model.__name__
        post_save.connect(_token_saved_or_deleted, sender=model, dispatch_uid=f"users.{name}_saved")
        post_delete.connect(
            _token_saved_or_deleted, sender=model, dispatch_uid=f"users.{name}_deleted"
        )

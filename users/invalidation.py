"""How a change to a row the cache is made from reaches the cache, whoever makes it.

The keys a change owns are the registry's (``users.cache.kinds.keys_of``): every
kind says which rows its entries are made from. Two ways in:

* **Saves and deletes through the ORM** (the services, the admin, Django's and
  DRF's own commands and forms): the model signals of every model a kind reads,
  connected here, call ``rows_changed`` inside the write's transaction:

  1. the keys are recorded in the outbox, in the same transaction;
  2. after the commit, they are deleted (with their leases), or, for a kind that
     stores a saved row (``CachedKind.entry_of``: a create, and every save under
     ``UPDATE_STRATEGY`` "write-through"), that one entry is filled with the
     committed state (``store.write``: whatever the circuit breakers say, node
     by node, and confirmed by a replica where the node has one);
  3. the keys a node missed in step 2, or that no replica confirmed, the outbox
     replays as deletions (``users.cache.outbox``).

* **Everything else** (``QuerySet.update()``, raw SQL, another application):
  ``follow_binlog`` reads MySQL's binary log and calls ``rows_changed_elsewhere``,
  which deletes at once; the follower retries until it succeeds.

A deletion is safe whenever it lands: a reader that loaded the old row finds its
lease gone and its fill refused. A fill is not, by itself: the after-commit
steps of two writes can reach Redis in either order. So a write that fills takes
the entry's lease inside its transaction, under the row lock it holds, with a
token of its own; the lease replaces any reader's and any older write's, and the
write's fill stands only while its lease does. A later write replaces the lease
in turn, and then the fill deletes the entry instead of storing: a late
after-commit step never leaves a state older than the last committed one.

A save outside a transaction (Django's commands run in autocommit) has already
committed when its signal fires, with no row lock left to order it against
other writes: its keys are only ever deleted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

from django.db import connection, transaction
from django.db.models import Model
from django.db.models.signals import post_delete, post_save

from .cache import kinds, store
from .cache.kinds import RowChange
from .cache.outbox import outbox
from .cache.transport import CacheUnavailable
from .conf import user_cache_settings

# Keys in one pipelined round trip of ``rows_changed_elsewhere``.
_KEYS_PER_CALL = 500


def rows_changed(
    changes: Sequence[RowChange], *, saved: Model | None = None, created: bool = False
) -> None:
    """Steps 1 to 3 for rows changed in the current transaction. ``saved``: the
    instance a save wrote (``created``: inserted), whose entry a kind may store
    instead of deleting."""
    keys = kinds.keys_of(changes)
    if not keys:
        return
    fill = None if saved is None else _fill_of(saved, keys, created=created)
    if fill is not None:
        with contextlib.suppress(CacheUnavailable):
            store.take_lease(fill.kind.key(fill.ident), fill.token)
    with transaction.atomic():
        entry_id = outbox.record(keys)
        transaction.on_commit(
            lambda: outbox.complete(entry_id, keys, lambda: store.write(keys, fill=fill))
        )


def _fill_of(saved: Model, keys: list[str], *, created: bool) -> store.WriteFill | None:
    """The entry a save stores after its commit, if any: for a kind that stores
    saved rows (keyed by the row's primary key), on a create or under
    write-through, inside a transaction (whose row lock orders the writes)."""
    if not connection.in_atomic_block or not (
        created or user_cache_settings.UPDATE_STRATEGY == "write-through"
    ):
        return None
    model = type(saved)._meta.concrete_model
    for kind in kinds.registered():
        if kind.entry_of is not None and model in kind.sources and kind.key(saved.pk) in keys:
            entry = kind.entry_of(saved)
            return store.WriteFill(kind, saved.pk, entry, store.new_lease_token())
    return None


def rows_changed_elsewhere(changes: Iterable[RowChange]) -> None:
    """Deletes the keys of rows that changed where no signal saw it (raw SQL,
    ``QuerySet.update()``, another application), as a write's after-commit step
    does (``store.write``: past the breakers, confirmed by a replica where there
    is one). Nothing is recorded in the outbox: the caller retries until this
    returns. Raises ``CacheUnavailable`` when Redis does not take them all,
    ``DatabaseError`` when MySQL does not answer (a kind may ask it which entries
    a change touches: a user's tokens)."""
    keys = kinds.keys_of(changes)
    for start in range(0, len(keys), _KEYS_PER_CALL):
        store.write(keys[start : start + _KEYS_PER_CALL])


def row_images(instance: Model) -> dict:
    """An instance's columns as a change of its row names them."""
    fields = instance._meta.concrete_fields
    return {field.attname: getattr(instance, field.attname) for field in fields}


def _saved(sender, instance: Model, created: bool, update_fields, **kwargs) -> None:
    model = sender._meta.concrete_model
    before = None if created else getattr(instance, "_loaded_values", None)
    after = row_images(instance)
    if update_fields is not None and before is not None:
        # Only these columns were written: the others hold what was loaded.
        written = {model._meta.get_field(name).attname for name in update_fields}
        after = {**before, **{column: after[column] for column in written}}
    instance._loaded_values = after
    change = RowChange(model, before, after, known_before=created or before is not None)
    rows_changed([change], saved=instance, created=created)


def _deleted(sender, instance: Model, **kwargs) -> None:
    model = sender._meta.concrete_model
    rows_changed([RowChange(model, row_images(instance), None)])


def connect() -> None:
    """Called from ``UsersConfig.ready``, once the kinds are registered, and again
    whenever one is: the signals of every model a kind reads, and of its proxies
    (the admin edits tokens as ``TokenProxy``, whose signals name the proxy)."""
    from django.apps import apps

    watched = set(kinds.watched_models())
    for model in apps.get_models():
        if model._meta.concrete_model in watched:
            uid = f"users.cache.{model._meta.label_lower}"
            post_save.connect(_saved, sender=model, dispatch_uid=f"{uid}.saved")
            post_delete.connect(_deleted, sender=model, dispatch_uid=f"{uid}.deleted")

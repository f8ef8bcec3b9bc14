"""Random reads, creates, updates, deletes and re-creates on a handful of ids from
several threads, against the real MySQL and Redis; afterwards every entry must
equal MySQL.

Every reader pauses for a random moment between its MySQL load and its Redis
fill, and every write's after-commit cache step for a random moment before it
runs, which makes the stale-set race and late after-commit steps frequent. The
same load with the protection switched off must leave stale entries: that is
how we know the check can fail. STRESS_SECONDS sets the protected run's length
(default 3).
"""

import os
import random
import threading
import time

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection

from config.database import WriteConflict
from tests.helpers import UNGUARDED_FILL, pausing_fills
from users import entries, reads, services
from users.cache import keys, kinds, outbox, scripts
from users.models import User

THREADS = 6
IDS = 5
# Creates stop adding ids at this many, so that reads keep meeting writes.
MAX_IDS = 12
STRESS_SECONDS = float(os.environ.get("STRESS_SECONDS", 3))


def _widen_fill_window(kind, loaded) -> None:
    time.sleep(random.uniform(0, 0.002))


@pytest.fixture
def widened_window():
    with pausing_fills(_widen_fill_window):
        yield


@pytest.fixture
def late_after_commit_steps(monkeypatch):
    """Every write's after-commit cache step waits a random moment, so that the steps
    of several writes reach Redis out of order."""
    complete = outbox.outbox.complete

    def late_complete(*args, **kwargs):
        time.sleep(random.uniform(0, 0.03))
        return complete(*args, **kwargs)

    monkeypatch.setattr(outbox.outbox, "complete", late_complete)


def _identity(user_id: int) -> dict:
    return {"username": f"s{user_id}", "email": f"s{user_id}@example.com"}


def _worker(user_ids: list[int], stop: threading.Event, errors: list) -> None:
    """``user_ids`` is shared: creates add the ids they get, so later operations of
    every thread pick them too."""
    rng = random.Random()
    try:
        while not stop.is_set():
            user_id = rng.choice(user_ids)
            roll = rng.random()
            try:
                if roll < 0.6:
                    reads.user_get(user_id=user_id)
                elif roll < 0.85:
                    services.user_update(
                        actor=None, user_id=user_id, data={"first_name": f"n{rng.randrange(10**6)}"}
                    )
                elif roll < 0.93:
                    services.user_delete(actor=None, user_id=user_id)
                elif roll < 0.96 or len(user_ids) >= MAX_IDS:
                    services.user_save(actor=None, user=User(id=user_id, **_identity(user_id)))
                else:
                    name = f"c{rng.randrange(10**9)}"
                    created = services.user_create(
                        actor=None, username=name, email=f"{name}@example.com"
                    )
                    user_ids.append(created.id)
            except (User.DoesNotExist, IntegrityError, WriteConflict, ValidationError):
                pass  # deleting a deleted user, re-creating a live one, a 409
    except Exception as exc:  # surfaced by the test, not swallowed
        errors.append(exc)
    finally:
        connection.close()


def _run_load(user_ids: list[int], seconds: float) -> None:
    stop, errors = threading.Event(), []
    threads = [
        threading.Thread(target=_worker, args=(user_ids, stop, errors)) for _ in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def _stale_entries(redis_client, user_ids: list[int]) -> list[str]:
    """Entries that differ from MySQL: a wrong state, a deleted user, a false absence."""
    stale = []
    for user_id in user_ids:
        raw = redis_client.hgetall(keys.user_key(user_id))
        if not raw:
            continue
        fields = {k.decode(): v.decode() for k, v in raw.items() if k.decode() != kinds.EXPIRES}
        row = entries.load(User.objects.filter(pk=user_id)).get(user_id)
        if row is None:
            if kinds.ABSENT not in fields:
                stale.append(f"user {user_id} is deleted but cached")
        elif kinds.ABSENT in fields:
            stale.append(f"user {user_id} exists but is cached as absent")
        elif fields != row:
            version = entries.VERSION.name
            stale.append(f"user {user_id}: cache v{fields[version]} != mysql v{row[version]}")
    return stale


@pytest.fixture
def user_ids(transactional_db) -> list[int]:
    first = User.objects.create(**_identity(0)).id
    User.objects.filter(pk=first).delete()
    ids = list(range(first + 1, first + 1 + IDS))
    User.objects.bulk_create([User(id=user_id, **_identity(user_id)) for user_id in ids])
    return ids


@pytest.mark.parametrize("strategy", ["invalidate", "write-through"])
def test_no_stale_entries_under_concurrent_load(
    settings, strategy, widened_window, late_after_commit_steps, user_ids, redis_client
):
    settings.USERS_CACHE = {**settings.USERS_CACHE, "UPDATE_STRATEGY": strategy}
    rounds = 3
    for _ in range(rounds):
        _run_load(user_ids, STRESS_SECONDS / rounds)
        assert _stale_entries(redis_client, user_ids) == []


def test_the_same_load_without_protection_finds_stale_entries(
    monkeypatch, widened_window, user_ids, redis_client
):
    monkeypatch.setattr(scripts, "FILL", UNGUARDED_FILL)
    found: list[str] = []
    # Up to 30 s: the race is likely, not certain, in any half second.
    for _ in range(60):
        _run_load(user_ids, 0.5)
        found = _stale_entries(redis_client, user_ids)
        if found:
            break
    assert found, "without the lease check the race should leave stale entries"

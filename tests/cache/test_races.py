"""The stale-set race, driven step by step with a reader paused between its MySQL
load and its Redis fill, as "Scaling Memcache at Facebook" describes it:

    reader: miss, load v1 from MySQL ......................... fill v1
    writer:                           commit v2, invalidate

Without protection the reader stores v1 after the writer is done, and the cache
serves v1 until its TTL. With the lease, the writer revokes the reader's right
to fill, and the late fill is refused.
"""

import threading
import time

import pytest
from django.db import connection

from tests.helpers import UNGUARDED_FILL, blocked_user_inserts, cached_entry, pausing_fills
from users import reads, services
from users.cache import keys, readthrough, scripts, store
from users.models import User


@pytest.fixture(params=["invalidate", "write-through"])
def strategy(request, settings):
    settings.USERS_CACHE = {**settings.USERS_CACHE, "UPDATE_STRATEGY": request.param}
    return request.param


@pytest.fixture
def protection_off(monkeypatch):
    monkeypatch.setattr(scripts, "FILL", UNGUARDED_FILL)


class PausedReader:
    """Runs ``user_get`` in a thread that stops right after its MySQL load."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.loaded = threading.Event()
        self.release = threading.Event()
        self.result: reads.UserRead | None = None
        self.thread = threading.Thread(target=self._run)

    def _pause(self, kind, loaded) -> None:
        if threading.current_thread() is self.thread:
            self.loaded.set()
            assert self.release.wait(timeout=30)

    def _run(self) -> None:
        try:
            self.result = reads.user_get(user_id=self.user_id)
        finally:
            connection.close()

    def __enter__(self) -> "PausedReader":
        self._pausing = pausing_fills(self._pause)
        self._pausing.__enter__()
        self.thread.start()
        assert self.loaded.wait(timeout=30), "the reader never reached its fill"
        return self

    def __exit__(self, *exc_info) -> None:
        self.release.set()
        self.thread.join(timeout=30)
        self._pausing.__exit__(*exc_info)


@pytest.fixture
def user(transactional_db) -> User:
    return User.objects.create(username="racer", email="racer@example.com", first_name="v1")


def _cached_first_name(redis_client, user_id: int) -> bytes | None:
    first_name = cached_entry(redis_client, user_id).get("first_name")
    return None if first_name is None else first_name.encode()


class TestUpdateRace:
    def test_the_readers_older_load_never_lands(self, strategy, user, redis_client):
        with PausedReader(user.id) as reader:
            services.user_update(actor=None, user_id=user.id, data={"first_name": "v2"})

        assert reader.result.value["first_name"] == "v1"
        assert _cached_first_name(redis_client, user.id) in {None, b"v2"}
        assert reads.user_get(user_id=user.id).value["first_name"] == "v2"

    def test_without_protection_the_race_leaves_the_cache_stale(
        self, strategy, protection_off, user, redis_client
    ):
        with PausedReader(user.id):
            services.user_update(actor=None, user_id=user.id, data={"first_name": "v2"})

        assert _cached_first_name(redis_client, user.id) == b"v1"
        assert reads.user_get(user_id=user.id).value["first_name"] == "v1"


class TestDeleteRace:
    def test_a_deleted_user_is_not_resurrected(self, strategy, user, redis_client):
        with PausedReader(user.id) as reader:
            services.user_delete(actor=None, user_id=user.id)

        assert reader.result.value["username"] == "racer"
        assert _cached_first_name(redis_client, user.id) is None
        assert reads.user_get(user_id=user.id).value is None

    def test_without_protection_the_deleted_user_comes_back(
        self, strategy, protection_off, user, redis_client
    ):
        with PausedReader(user.id):
            services.user_delete(actor=None, user_id=user.id)

        assert reads.user_get(user_id=user.id).value["username"] == "racer"


class TestCreateRace:
    def test_a_readers_cached_absence_does_not_outlive_the_create(self, transactional_db):
        probe = User.objects.create(username="probe", email="probe@example.com")
        next_id = probe.id + 1
        probe.delete()
        with PausedReader(next_id) as reader:
            created = services.user_create(actor=None, username="late", email="late@example.com")

        assert reader.result.value is None
        assert created.id == next_id
        assert reads.user_get(user_id=next_id).value["username"] == created.username


class TestRecreateRace:
    """Re-creating an id (explicit ids only, as the admin or a fixture can) while its
    delete is in flight: the delete's tombstone must not outrank the new row."""

    def test_the_new_row_is_cached_not_its_predecessors_tombstone(self, settings, user):
        from django.db import transaction

        settings.USERS_CACHE = {**settings.USERS_CACHE, "UPDATE_STRATEGY": "write-through"}
        locked, release = threading.Event(), threading.Event()

        def delete_after_holding_the_row():
            try:
                with transaction.atomic():
                    User.objects.select_for_update().get(pk=user.id)
                    locked.set()
                    assert release.wait(timeout=30)
                    services.user_delete(actor=None, user_id=user.id)
            finally:
                connection.close()

        def recreate():
            try:
                reborn = User(id=user.id, username="reborn", email="reborn@example.com")
                services.user_save(actor=None, user=reborn)
            finally:
                connection.close()

        deleter = threading.Thread(target=delete_after_holding_the_row)
        deleter.start()
        assert locked.wait(timeout=30)
        creator = threading.Thread(target=recreate)
        creator.start()
        deadline = time.monotonic() + 30
        while blocked_user_inserts() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert blocked_user_inserts() == 1, "the re-create should wait on the deleted row"
        release.set()
        deleter.join(timeout=30)
        creator.join(timeout=30)

        assert User.objects.get(pk=user.id).username == "reborn"
        assert reads.user_get(user_id=user.id).value["username"] == "reborn"


class TestLateAfterCommitSteps:
    """A write's after-commit cache step may reach Redis after a later write's: the
    process stalled, the network was slow. Whatever the order, Redis must not end up
    holding a state older than the last committed one."""

    @pytest.fixture
    def steps(self, django_capture_on_commit_callbacks):
        def capture(*, execute: bool = False):
            return django_capture_on_commit_callbacks(execute=execute)

        return capture

    def test_a_create_landing_after_the_delete_does_not_bring_the_user_back(
        self, strategy, db, steps
    ):
        with steps() as create_steps:
            created = services.user_create(actor=None, username="late", email="late@example.com")
        with steps(execute=True):
            services.user_delete(actor=None, user_id=created.id)

        for step in create_steps:
            step()

        assert reads.user_get(user_id=created.id).value is None

    def test_an_older_update_landing_on_an_absent_entry_is_not_stored(
        self, strategy, db, steps, redis_client
    ):
        user = User.objects.create(username="racer", email="racer@example.com", first_name="v1")
        with steps() as older:
            services.user_update(actor=None, user_id=user.id, data={"first_name": "v2"})
        with steps(execute=True):
            services.user_update(actor=None, user_id=user.id, data={"first_name": "v3"})
        redis_client.delete(keys.user_key(user.id))  # evicted, expired or flushed

        for step in older:
            step()

        assert reads.user_get(user_id=user.id).value["first_name"] == "v3"

    def test_a_read_whose_lease_outlived_the_writes_does_not_store_the_old_row(
        self, strategy, db, steps, redis_client
    ):
        """The write's own lease expired before its commit (it lives
        ``LEASE_TTL_MS``; or the writing process's breaker skipped it) and a reader
        took the entry's lease with the row as it was: the write's after-commit
        step must drop that lease too, or the reader stores the old row for the
        entry's whole TTL (failed on the previous main under write-through: the
        step deleted the entry and left the reader's lease)."""
        user = User.objects.create(username="racer", email="racer@example.com", first_name="v1")
        old = readthrough.load(reads.USERS, [user.id])[user.id]
        with steps() as update_steps:
            services.user_update(actor=None, user_id=user.id, data={"first_name": "v2"})
        redis_client.delete(keys.lease_key(keys.user_key(user.id)))  # the write's lease ran out
        [(state, _)] = store.lease_many(reads.USERS, [user.id], "reader", mode="take")
        assert state == scripts.LEASED

        for step in update_steps:
            step()
        stored = store.fill_many(reads.USERS, "reader", {user.id: old})

        assert stored == [False]
        assert reads.user_get(user_id=user.id).value["first_name"] == "v2"

    def test_an_older_update_landing_after_a_delete_does_not_bring_the_user_back(
        self, strategy, db, steps
    ):
        user = User.objects.create(username="racer", email="racer@example.com")
        with steps() as update_steps:
            services.user_update(actor=None, user_id=user.id, data={"first_name": "v2"})
        with steps(execute=True):
            services.user_delete(actor=None, user_id=user.id)

        for step in update_steps:
            step()

        assert reads.user_get(user_id=user.id).value is None

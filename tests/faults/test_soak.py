"""The soak's verdict watches its own load (tests/soak.py): a load thread that dies,
returns early or does nothing fails the run, and a run whose threads all work
passes, however few users the writer in SQL starts with.

Both runs share one stack of real servers and are a few seconds long. The broken
threads are made from outside, by wrapping the soak's own classes: the soak has
no switch for it.
"""

import itertools
import random
import threading

import pytest

from tests import soak

pytestmark = pytest.mark.slow

# Short runs on few users: the writer in SQL starts with as many as it changes at once.
SHORT = ["--seconds", "8", "--threads", "3", "--users", "3"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with soak.soak_stack(tmp_path_factory.mktemp("soak")) as stack:
        yield stack


def _stop_after(progress: soak.Progress, operations: int) -> threading.Event:
    """An event set once ``progress`` has recorded that many operations."""
    done = threading.Event()
    record = progress.record

    def counting(kind: str) -> None:
        record(kind)
        if sum(map(len, progress.times.values())) >= operations:
            done.set()

    progress.record = counting
    return done


def test_a_thread_that_dies_returns_early_or_does_nothing_fails_the_run(stack, monkeypatch):
    write, run = soak.BypassWriter._write, soak.Worker.run
    writes = iter(range(5, -1, -1))

    def dying_write(self, *args) -> None:
        if not next(writes):
            raise RuntimeError("the writer's injected death")
        write(self, *args)

    def broken_run(self, stop: threading.Event, mysql_down: threading.Event) -> None:
        if self.seed == 1:  # its loop ends early, as if it had seen the end of the run
            run(self, _stop_after(self.progress, 20), mysql_down)
        elif self.seed == 2:  # alive to the end, doing nothing
            stop.wait()
        else:
            run(self, stop, mysql_down)

    monkeypatch.setattr(soak.BypassWriter, "_write", dying_write)
    monkeypatch.setattr(soak.Worker, "run", broken_run)
    report = soak.run(soak.arguments([*SHORT, "--faults", "redis-pause"]), stack, print)

    failures = "\n".join(report.failures)
    print(failures)
    assert not report.ok
    assert "sql-writer died at" in failures
    assert "RuntimeError: the writer's injected death" in failures
    assert "in dying_write" in failures  # the traceback
    assert "client-1 returned at" in failures
    assert "client-2 did nothing in quiet 1" in failures
    assert "client-0" not in failures
    assert [phase.name for phase in report.load.phases] == ["quiet 1", "redis-pause", "quiet 2"]


def test_a_run_whose_threads_all_work_passes_and_counts_each_phase(stack):
    report = soak.run(soak.arguments([*SHORT, "--faults", "redis-pause"]), stack, print)

    print("\n".join(report.lines + report.failures))
    assert report.ok, report.failures
    load = report.load
    phases = {phase.name: n for phase, n in zip(load.phases, load.counts, strict=True)}
    assert list(phases) == ["quiet 1", "redis-pause", "quiet 2"]
    assert all(phases[name][soak.SQL_WRITES] for name in ("quiet 1", "quiet 2"))
    assert all(counts[soak.READS] for counts in phases.values())
    assert phases["redis-pause"][soak.FAULTS_INJECTED] == 1
    # It started at the floor of its band, so its first change of membership created a user.
    shapes = next(line for line in report.lines if line.startswith("- writes in SQL"))
    assert "insert: " in shapes


def test_the_writer_in_sql_keeps_its_users_in_a_band_however_long_it_writes():
    """The old writer only deleted, and died once fewer users were left than it
    changes at once."""
    population = soak.Population([1, 2, 3], spread=3)
    rng, new_ids, sizes = random.Random(7), itertools.count(4), []
    for _ in range(10_000):
        changed = population.sample(rng, 3)[0]
        if population.next_change_deletes(rng):
            population.deleted(changed)
        else:
            population.created(next(new_ids))
        sizes.append(len(population))
    assert (min(sizes), max(sizes)) == (3, 6)

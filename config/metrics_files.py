"""The gunicorn workers' metric files in ``PROMETHEUS_MULTIPROC_DIR``: read at
each scrape, and the files of workers that exited merged into one archive per
metric type.

Each worker writes its samples to files of its own (``counter_<pid>.db``,
``histogram_<pid>.db``, a ``gauge_live*_<pid>.db`` per gauge mode), and a scrape
adds up every file of the folder. When a worker exits, its gauges go with it, but
its counts must stay, or the counters would go backwards; kept as they are, the
files of every worker ever recycled would be read again at every scrape, which
grows slower without end. So gunicorn's master, when a worker exits, adds its
counter and histogram files to ``counter_archive.db`` and ``histogram_archive.db``
and removes them: the folder holds the live workers' files and two archives.

A scrape must never see a dead worker's counts twice (its file and the new
archive) or not at all (the old archive, its file already gone): Prometheus would
read either as a counter reset. The swap is therefore made under an exclusive
lock on ``scrape.lock`` in the folder, and a scrape reads the folder under a
shared one. The master never waits long for it: a scrape holds it for the time
of one read of the folder, and if scrapes keep it past ``ARCHIVE_LOCK_WAIT``, the
dead worker's files stay until the next worker exits.

Every gauge the service defines combines only live workers (``multiprocess_mode``
``live*``), so no gauge file outlives its worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import time
from collections.abc import Collection, Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

ARCHIVED_TYPES = ("counter", "histogram")
ARCHIVE_LOCK_WAIT = 2.0
_LOCK_FILE = "scrape.lock"
_WORKER_FILE = re.compile(r"^(counter|histogram|gauge_live[a-z]+)_(\d+)\.db$")


class WorkerFilesCollector(Collector):
    """prometheus_client's ``MultiProcessCollector``, reading the folder under the
    shared lock so that it never sees an archive half made."""

    def __init__(self, directory: str) -> None:
        self._files = MultiProcessCollector(None, path=directory)
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        with _locked(self._directory, fcntl.LOCK_SH, wait=None):
            return list(self._files.collect())


def clear(directory: str) -> None:
    """Empties the folder of metric files, a new server's first step: the counts of
    a previous server, and anything left half made, go."""
    for stale in glob.glob(os.path.join(directory, "*.db*")):
        os.remove(stale)


def archive_dead_workers(directory: str, *, live: Collection[int]) -> bool:
    """Merges the counter and histogram files of every process not in ``live`` into
    the archives and removes them and its gauges; False when scrapes held the lock
    too long, leaving everything as it was for the next call."""
    dead_files: dict[str, list[str]] = {typ: [] for typ in ARCHIVED_TYPES}
    dead_pids = set()
    for name in os.listdir(directory):
        match = _WORKER_FILE.match(name)
        if match and int(match[2]) not in live:
            dead_pids.add(int(match[2]))
            if match[1] in dead_files:
                dead_files[match[1]].append(os.path.join(directory, name))
    if not dead_pids:
        return True
    merged = {}
    for typ, files in dead_files.items():
        if files:
            merged[typ] = _merged_archive(directory, typ, files)
    try:
        with _locked(directory, fcntl.LOCK_EX, wait=ARCHIVE_LOCK_WAIT):
            for typ, new_archive in merged.items():
                os.replace(new_archive, _archive(directory, typ))
                for path in dead_files[typ]:
                    os.remove(path)
            for pid in dead_pids:
                mark_process_dead(pid, directory)
    except BlockingIOError:
        for new_archive in merged.values():
            os.remove(new_archive)
        return False
    return True


def _archive(directory: str, typ: str) -> str:
    # The collector reads a file's type from its name up to the first "_".
    return os.path.join(directory, f"{typ}_archive.db")


def _merged_archive(directory: str, typ: str, files: list[str]) -> str:
    """A new archive file beside the current one: its values plus those of
    ``files``. Its name does not end in ``.db``, so no scrape reads it before the
    swap."""
    archive = _archive(directory, typ)
    sources = [*files, *([archive] if os.path.exists(archive) else [])]
    new_archive = archive + ".new"
    with contextlib.suppress(FileNotFoundError):
        os.remove(new_archive)
    merged = MmapedDict(new_archive)
    try:
        # Not accumulated: histogram buckets stay per bucket, as a worker writes them.
        for metric in MultiProcessCollector.merge(sources, accumulate=False):
            for sample in metric.samples:
                key = mmap_key(
                    metric.name, sample.name, sample.labels.keys(), sample.labels.values(),
                    metric.documentation,
                )  # fmt: skip
                merged.write_value(key, sample.value, 0.0)
    finally:
        merged.close()
    return new_archive


@contextlib.contextmanager
def _locked(directory: str, operation: int, *, wait: float | None) -> Iterator[None]:
    """``flock`` on the folder's lock file: blocking when ``wait`` is None, else
    retried until ``wait`` seconds passed, then BlockingIOError."""
    # Read-only is enough for flock, and lets workers that gunicorn runs as another
    # user (its "user" setting) lock the file its master made, and the other way round.
    descriptor = os.open(os.path.join(directory, _LOCK_FILE), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        if wait is None:
            fcntl.flock(descriptor, operation)
        else:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
        yield
    finally:
        os.close(descriptor)

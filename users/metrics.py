"""The user cache's Prometheus metrics, served at ``/metrics`` with the request
durations (``users.middleware``).

Recording one is an in-process operation: no request pays a network round trip
for it. Under gunicorn every worker writes its samples to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR`` (``gunicorn.conf.py`` prepares the folder), and a
scrape, whichever worker answers it, adds up the files of all workers, the
recycled ones' kept in an archive, so counters never go backwards
(``config/metrics_files.py``). Any other process (a command, the binary log
follower) counts in its own memory (``config/metrics_writers.py``).
"""

import functools
import os
import platform
import subprocess
import tomllib

import django
from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.registry import Collector

from config.metrics_files import WorkerFilesCollector
from config.worker_processes import WorkerProcessesCollector

# Redis answers in well under a millisecond when healthy; the top buckets catch
# the read timeout (REDIS_READ_TIMEOUT_MS, 100 ms by default).
_REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_DATABASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

LOOKUPS = Counter(
    "usersvc_cache_lookups",
    "Cached lookups by entity (user, token, username, email) and result: hit, negative_hit "
    "(a cached absence), miss (loaded from MySQL) or bypass (Redis unavailable, MySQL "
    "answered).",
    ["entity", "result"],
)


@functools.cache
def _lookup_counter(entity: str, result: str) -> Counter:
    """``LOOKUPS`` for these labels, resolved once: ``labels()`` takes a lock and builds
    its key on every call, and every read, hit or not, counts itself here."""
    return LOOKUPS.labels(entity, result)


def count_lookup(entity: str, source: str, *, found: bool) -> None:
    """Counts a lookup by where it was answered; a hit on a cached absence is a
    negative hit."""
    result = "negative_hit" if source == "HIT" and not found else source.lower()
    _lookup_counter(entity, result).inc()


REDIS_SECONDS = Histogram(
    "usersvc_redis_call_seconds",
    "Duration of the user cache's Redis calls (one round trip each, pipelines included).",
    buckets=_REDIS_BUCKETS,
)
REDIS_ERRORS = Counter(
    "usersvc_redis_errors",
    "Redis calls of the user cache that failed, by redis-py exception class.",
    ["error"],
)
DATABASE_SECONDS = Histogram(
    "usersvc_database_load_seconds",
    "Duration of the MySQL loads behind cache misses and bypasses, by entity.",
    ["entity"],
    buckets=_DATABASE_BUCKETS,
)
STAMPEDE_WAITS = Counter(
    "usersvc_cache_stampede_waits",
    "Misses that found another reader filling the entry and waited, by how the wait "
    "ended: filled (the other reader's fill arrived), leased (its lease lapsed and this "
    "reader took over) or timed_out (read MySQL without filling).",
    ["entity", "outcome"],
)
STALE_SETS_REJECTED = Counter(
    "usersvc_cache_stale_sets_rejected",
    "Fills refused because a write revoked the reader's lease after its MySQL load.",
    ["entity"],
)
ENTRIES_REFUSED = Counter(
    "usersvc_cache_entries_refused",
    "Cached entries found in Redis that failed their check (a token entry whose "
    "signature or expiry is wrong: written or kept by someone other than this "
    "service), deleted and read again from MySQL, by entity.",
    ["entity"],
)
NEAR_CACHE_LOOKUPS = Counter(
    "usersvc_near_cache_lookups",
    "Entries looked for in the process's near cache, by result: hit or miss.",
    ["result"],
)
NEAR_CACHE_EVICTIONS = Counter(
    "usersvc_near_cache_evictions",
    "Entries the near cache dropped for room (least recently used first).",
)
NEAR_CACHE_INVALIDATIONS = Counter(
    "usersvc_near_cache_invalidations",
    "Invalidations the near cache applied: Redis's messages and the process's own writes.",
)
NEAR_CACHE_SIZE = Gauge(
    "usersvc_near_cache_entries",
    "Entries the near cache holds, summed over the live worker processes.",
    multiprocess_mode="livesum",
)
NEAR_CACHE_TRACKING_CONNECTS = Counter(
    "usersvc_near_cache_tracking_connects",
    "Times the near cache's tracking connections came up: once at start, then once "
    "after each loss (a Redis restart, a failover, a network error).",
)
LOGIN_FAILURES = Counter(
    "usersvc_login_failures",
    "Failed logins at the admin's and the browsable API's login forms.",
)
LOGIN_LOCKOUTS = Counter(
    "usersvc_login_lockouts",
    "Login attempts refused because the account or the client address is locked "
    "out after too many failures, or over its rate of attempts.",
)


# Gauges under gunicorn: each worker writes its own value, and multiprocess_mode
# says how a scrape combines them. "liveall" keeps one sample per live worker
# (label pid), "livemax" one per label set; both forget a worker once it exits.
BREAKER_OPEN = Gauge(
    "usersvc_cache_breaker_open",
    "1 while this process's circuit breaker in front of a Redis node is open (from the "
    "failure that opened it until a call succeeds; meanwhile its reads of that node's keys "
    "bypass the cache), else 0. One sample per worker process (label pid) and node: a "
    "cluster primary's host:port, or server for a single server or Sentinel's primary.",
    ["node"],
    multiprocess_mode="liveall",
)
BREAKER_OPENINGS = Counter(
    "usersvc_cache_breaker_openings",
    "Times a circuit breaker opened after consecutive Redis failures, by node (as "
    "usersvc_cache_breaker_open): a breaker that opens and closes again between two "
    "scrapes shows here only.",
    ["node"],
)
BUILD_INFO = Gauge(
    "usersvc_build_info",
    "The code that runs, always 1: the version in pyproject.toml, the commit "
    "(BUILD_COMMIT, else git's HEAD, else unknown), the Python and Django versions.",
    ["version", "commit", "python", "django"],
    multiprocess_mode="livemax",
)


def build_labels() -> dict[str, str]:
    """``BUILD_INFO``'s labels for the code of this checkout or image."""
    with open(settings.BASE_DIR / "pyproject.toml", "rb") as pyproject:
        version = tomllib.load(pyproject)["project"]["version"]
    return {
        "version": version,
        "commit": os.environ.get("BUILD_COMMIT") or _git_head() or "unknown",
        "python": platform.python_version(),
        "django": django.get_version(),
    }


def _git_head() -> str:
    """The checkout's commit; empty where there is no git or no repository (an image)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


BUILD_INFO.labels(**build_labels()).set(1)


def _registry() -> CollectorRegistry:
    """Under gunicorn, every live worker's metrics and the archive of the exited
    ones' (config/metrics_files.py), with each live worker's memory and CPU
    (config/worker_processes.py); else this process's own."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        registry.register(WorkerFilesCollector(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        registry.register(WorkerProcessesCollector(master=os.getppid()))
        return registry
    return REGISTRY


def exposition(*read_when_scraped: Collector) -> tuple[bytes, str]:
    """Every metric in the text format, and its content type: those recorded in
    process memory (every worker's, under gunicorn), then those that the
    ``read_when_scraped`` collectors read from a store now."""
    scraped = CollectorRegistry()
    for collector in read_when_scraped:
        scraped.register(collector)
    return generate_latest(_registry()) + generate_latest(scraped), CONTENT_TYPE_LATEST


def lookup_totals(entity: str) -> dict[str, float]:
    """Lookups of ``entity`` by result, summed over every worker since they started."""
    totals: dict[str, float] = {}
    for family in _registry().collect():
        if family.name != "usersvc_cache_lookups":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("entity") == entity:
                result = sample.labels["result"]
                totals[result] = totals.get(result, 0.0) + sample.value
    return totals

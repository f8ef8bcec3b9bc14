"""gunicorn settings for the service; every value can be overridden from the environment.

gunicorn reads this file by itself when it starts in the project's root, so a
plain ``gunicorn config.wsgi`` (a platform's default command) runs with it.

gthread workers: a request spends much of its time waiting on Redis or MySQL,
and threads let those waits overlap inside one process while the process
count, two per CPU, keeps the CPUs busy. The CPUs are those this process may
use: a container's CPU quota, not the node's cores (config/cpus.py).

Measured on the 2-core machine of the benchmarks with GET hits, from 2 x 8 to
8 x 4 workers x threads: the configurations at two processes per core were within
the machine's noise of each other, and more processes only added context
switches and a tail several times longer. 4 x 4 keeps a hung thread from
stalling half of the server.

Connections: each thread keeps its own MySQL connection (CONN_MAX_AGE), and each
worker also runs the outbox thread, so one server holds up to
workers x (threads + 1) MySQL connections, 20 with 4 x 4; every server, one-off
command and migration counts against MySQL's max_connections (151 by default).
docs/deployment.md, "Sizing", has the arithmetic for several servers.

gunicorn must not face clients directly: a request that arrives slowly holds a
thread until it is complete. Put the buffering proxy of deploy/nginx in front.
"""

import os
import shutil
import tempfile

from config import metrics_writers
from config.cpus import available_cpus

bind = os.environ.get("BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", available_cpus() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", 4))
keepalive = 5
timeout = 30
graceful_timeout = 30
# Recycle workers now and then (a guard against slow leaks), staggered so they
# never restart all at once. A new worker imports Django and the app, about 1.2 s
# of CPU here; at the ~200 requests/s a worker serves under load, 10,000 requests
# meant a restart every 50 s (a few percent of the machine), 100,000 every 8 min.
max_requests = 100_000
max_requests_jitter = 10_000
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
# gunicorn's lines in the service's format: JSON too with LOG_FORMAT=json.
logger_class = "config.logs.GunicornLogger"
# gunicorn's control socket lives at one path per user (~/.gunicorn/gunicorn.ctl),
# so every server started on a host would take it over from the last one.
control_socket_disable = True

# Prometheus multiprocess mode: every worker writes its metrics to files in this
# folder, and /metrics adds them up. It must be set before a worker imports
# prometheus_client, so here, in the master, which the workers inherit it from;
# each start begins with an empty one. Without it, each worker would count on its
# own, and the workers refuse to start (config/checks.py). Only the workers write
# there: any other process that finds the variable drops it (config/metrics_writers.py).
_own_metrics_dir: str | None = None


def on_starting(server) -> None:
    global _own_metrics_dir
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        metrics_dir = _own_metrics_dir = tempfile.mkdtemp(prefix="usersvc-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.makedirs(metrics_dir, exist_ok=True)
    # Imports prometheus_client: only once the variable is set, which the workers
    # forked from this process inherit with the module.
    from config import metrics_files

    metrics_files.clear(metrics_dir)
    server.log.info(
        "%d workers x %d threads for %d CPUs",
        server.cfg.workers,
        server.cfg.threads,
        available_cpus(),
    )


def post_fork(server, worker) -> None:
    metrics_writers.mark_gunicorn_worker()


def child_exit(server, worker) -> None:
    """A worker exited: its gauges go, its counts join the archive (config/metrics_files.py).
    Whatever goes wrong there (a full disk, a damaged file) is logged and the files
    left for the next exit: an exception here would stop the master."""
    from config import metrics_files

    try:
        archived = metrics_files.archive_dead_workers(
            os.environ["PROMETHEUS_MULTIPROC_DIR"], live=server.WORKERS.keys()
        )
    except Exception:
        server.log.exception("could not archive the metric files of worker %d", worker.pid)
        return
    if not archived:
        server.log.warning(
            "scrapes held the metrics folder for over %.0f s: worker %d's metric files"
            " are archived when the next worker exits",
            metrics_files.ARCHIVE_LOCK_WAIT,
            worker.pid,
        )


def on_exit(server) -> None:
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)

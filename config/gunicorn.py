"""gunicorn settings for the service; every value can be overridden from the environment.

gthread workers: a request spends much of its time waiting on Redis or MySQL,
and threads let those waits overlap inside one process while the process
count, two per core, keeps both cores busy.

Measured on the 2-core machine of the benchmarks, 100,000 cached users, wrk with
16 connections on GET hits, 8 s per configuration, two rounds in turns
(requests/s, p99): 2 workers x 8 threads 829, 52 ms; 4 x 4 836, 75 ms; 4 x 8
828, 64 ms; 3 x 4 694, 66 ms; 8 x 2 811, 469 ms; 8 x 4 588, 544 ms. More than
two processes per core only adds context switches and a long tail; between the
configurations at two per core the spread was within the machine's noise, and
4 x 4 keeps a hung thread from stalling half of the server.
"""

import glob
import multiprocessing
import os
import shutil
import tempfile

bind = os.environ.get("BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
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
# gunicorn's control socket lives at one path per user (~/.gunicorn/gunicorn.ctl),
# so every server started on a host would take it over from the last one.
control_socket_disable = True

# Prometheus multiprocess mode: every worker writes its metrics to files in this
# folder, and /metrics adds them up. It must be set before a worker imports
# prometheus_client, so here, in the master; each start begins with an empty one.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
_metrics_dir_is_ours = not _metrics_dir
if _metrics_dir_is_ours:
    _metrics_dir = tempfile.mkdtemp(prefix="usersvc-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir


def on_starting(server) -> None:
    os.makedirs(_metrics_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(_metrics_dir, "*.db")):
        os.remove(stale)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _metrics_dir_is_ours:
        shutil.rmtree(_metrics_dir, ignore_errors=True)

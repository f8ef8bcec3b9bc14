"""gunicorn settings for the service; every value can be overridden from the environment.

gthread workers: a request spends most of its time waiting on Redis or MySQL,
and threads let those waits overlap inside one process while the process
count, about two per core, keeps both cores busy.
"""

import multiprocessing
import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", 4))
keepalive = 5
timeout = 30
graceful_timeout = 30
# Recycle workers now and then, staggered so they never restart all at once.
max_requests = 10_000
max_requests_jitter = 1_000
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"

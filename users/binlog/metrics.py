"""The follower's Prometheus metrics, served by the follower's own HTTP server
(``FOLLOWER_METRICS_BIND``).

The follower is a process of its own, not a gunicorn worker: it serves its
registry itself, beside the Redis metrics of ``users.metrics`` that its cache
calls record and prometheus_client's process metrics (its memory and CPU). It
keeps them in its own memory even where ``PROMETHEUS_MULTIPROC_DIR`` is in its
environment (``config/metrics_writers.py``). The web service never imports this
module, so its ``/metrics`` carries none of these.
"""

from prometheus_client import Counter, Gauge

EVENTS = Counter(
    "usersvc_binlog_events",
    "Binary log events the follower handled, by type: rows (a row event of the user "
    "or token table), commit, statement (DDL, or DML logged as a statement), rotate "
    "(a new log file) and heartbeat (the server had nothing new).",
    ["type"],
)
ROWS = Counter(
    "usersvc_binlog_rows",
    "Changed rows of the watched tables whose cache entries the follower deleted, by table.",
    ["table"],
)
SECONDS_BEHIND = Gauge(
    "usersvc_binlog_seconds_behind",
    "Seconds between the start on the server of the last change the follower read "
    "and now; 0 once the server says it has nothing newer. While Redis is down it "
    "grows with the change waiting to be applied.",
)
POSITION_FILE = Gauge(
    "usersvc_binlog_position_file",
    "The number of the binary log file the follower has applied up to (binlog.000042: 42).",
)
POSITION_OFFSET = Gauge(
    "usersvc_binlog_position_offset",
    "The offset in that file the follower has applied up to.",
)
CONNECTED = Gauge(
    "usersvc_binlog_connected",
    "1 while the follower reads the server's binary log, 0 while it reconnects.",
)
ERRORS = Counter(
    "usersvc_binlog_errors",
    "Failed attempts, by store: mysql (the stream or a query broke; it reconnects) or "
    "redis (an invalidation failed; it retries without moving on).",
    ["store"],
)

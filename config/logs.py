"""Log formats, and the request id on every line.

``LOG_FORMAT=json`` writes one JSON object a line. The request id is the one
``users.middleware`` gives each request. Nothing here imports
prometheus_client or Django's settings: gunicorn's master loads this module
(``GunicornLogger``) before it prepares the workers' metrics folder.

One record is one line, whatever a client sent: a path, a header or a name a
client chose can hold a newline (``%0a`` in a path), which would otherwise
start a line of the client's making. The plain format escapes the control
characters of the message (C0 and C1, DEL, and the Unicode line and paragraph
separators, as ``\\n``, ``\\x1b``, ``\\u2028``); a traceback, which follows the
message, keeps its lines. In a JSON line, ``json.dumps`` escapes them in every
field, as it escapes everything outside printable ASCII.
"""

import atexit
import contextvars
import datetime
import json
import logging
import logging.handlers
import os
import queue
import re
import sys
import threading
import time

from gunicorn import glogging

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# What a terminal or a log reader may take for the end of a line or a command:
# C0 and DEL, C1 (NEL among them), and the Unicode line and paragraph separators.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with each control character written as its Python escape."""
    return _CONTROL_CHARACTERS.sub(lambda match: match[0].encode("unicode_escape").decode(), text)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class DisallowedHostFilter(logging.Filter):
    """For Django's ``django.security.DisallowedHost`` logger (a request whose Host
    header ``ALLOWED_HOSTS`` does not list): each host's line once an ``interval``,
    without the traceback, which only ever shows Django's host check. Scanners
    that address the service by its IP send such requests all day, each of which
    wrote an error and its traceback; a wrong ``ALLOWED_HOSTS`` still shows at once.

    At most ``max_hosts`` different hosts an interval, so that made-up hosts grow
    neither the log nor this filter's memory without bound. Every such request
    still has its access line and is counted by the request metric (status 400,
    route ``unmatched``)."""

    def __init__(self, interval: float = 60.0, max_hosts: int = 100) -> None:
        super().__init__()
        self.interval, self.max_hosts = interval, max_hosts
        self._lock = threading.Lock()
        self._interval_ends = 0.0
        # The lines let through this interval; Django's names the host.
        self._logged: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        line = record.getMessage()
        now = time.monotonic()
        with self._lock:
            if now >= self._interval_ends:
                self._interval_ends, self._logged = now + self.interval, set()
            if line in self._logged or len(self._logged) >= self.max_hosts:
                return False
            self._logged.add(line)
        record.exc_info = record.exc_text = None
        return True


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


# What an ``extra=`` field may be to be written: a value, not an object whose text
# says more than the line should (Django's ``request``, whose text carries the
# query string and with it what a user searched for, an e-mail address).
_WRITTEN_TYPES = (str, int, float, bool, type(None))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, the fields
    passed with ``extra=`` that are plain values (``_WRITTEN_TYPES``), and the
    traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(
            (name, value)
            for name, value in vars(record).items()
            if name not in _RECORD_ATTRIBUTES and isinstance(value, _WRITTEN_TYPES)
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    """``PLAIN_FORMAT``, the message escaped by ``escape_controls``: one record, one
    line, up to its traceback."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # format() has just set record.message from the record's arguments, and
        # sets it again for every handler.
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``LOG_FORMAT`` (``plain`` or ``json``)."""
    return JsonFormatter() if log_format == "json" else PlainFormatter()


class BackgroundStreamHandler(logging.handlers.QueueHandler):
    """Writes to stderr from a thread of its own: a request's thread only queues its
    records, and the formatting and the write happen after it answered.

    The request id is put on the record on the request's thread
    (``RequestIdFilter``, a filter of this handler); the record is queued as it
    is and its message formatted on the writing thread (the service's records
    carry strings and numbers). What is queued is written before the process
    exits normally (``atexit``); a process killed outright loses what it had
    not written yet, as it would lose what a buffered stream held. A process
    forked from this one starts with an empty queue and a thread of its own.

    The queue holds at most ``QUEUED_LINES`` records: when stderr is slower than
    the lines come (a stalled log collector, or clients making lines as fast as
    they can), a request waits for room as it would have waited on the stream,
    rather than the process's memory growing without end."""

    QUEUED_LINES = 10_000

    def __init__(self, log_format: str = "plain") -> None:
        super().__init__(queue.Queue(self.QUEUED_LINES))
        self._stream = logging.StreamHandler(sys.stderr)
        self._stream.setFormatter(formatter(log_format))
        self._listener: logging.handlers.QueueListener | None = None
        self._open = True
        self._start()
        os.register_at_fork(after_in_child=self._start)
        atexit.register(self.close)

    def _start(self) -> None:
        if not self._open:  # closed (logging configured again) before a fork
            return
        self.queue = queue.Queue(self.QUEUED_LINES)
        self._listener = _Listener(self.queue, self._stream)
        self._listener.start()

    def setStream(self, stream):
        """Where the lines go from now on (``logging.StreamHandler.setStream``)."""
        return self._stream.setStream(stream)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        """Waits for room (``QueueHandler`` would drop the line with a traceback)."""
        self.queue.put(record)

    def close(self) -> None:
        """Writes what is queued, then stops the thread."""
        self._open = False
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        super().close()


class _Listener(logging.handlers.QueueListener):
    """Stops after what is queued even when the queue is full (``QueueListener``
    would raise ``queue.Full`` putting its end marker)."""

    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)


class _NoRequestId(logging.Filter):
    """gunicorn's records: the request id its access line names, else none. Not the
    current one: a gunicorn line written in a worker thread between two requests
    would otherwise carry the previous request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return True


class GunicornLogger(glogging.Logger):
    """gunicorn's own lines (its error log: starts, stops, refused requests; and its
    access log when ``GUNICORN_ACCESS_LOG`` is set) in the service's format, so that
    with ``LOG_FORMAT=json`` every line the server writes is a JSON object.

    The master reads ``LOG_FORMAT`` from the environment: it never loads Django's
    settings, which check the value for the workers."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        service_formatter = formatter(os.environ.get("LOG_FORMAT", "plain"))
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(service_formatter)
                handler.addFilter(_NoRequestId())

    def access(self, resp, req, environ, request_time) -> None:
        """One line a request, with the id the service answered with; the path
        without its query string, which may hold what a user searched for."""
        if not self.access_log_enabled:
            return
        status = int(str(resp.status).split(None, 1)[0])
        answered_id = next(
            (value for name, value in resp.headers if name.lower() == "x-request-id"), "-"
        )
        fields = {
            "request_id": answered_id,
            "remote_addr": environ.get("REMOTE_ADDR", "-"),
            "method": environ.get("REQUEST_METHOD", "-"),
            "path": environ.get("PATH_INFO", "-"),
            "status": status,
            "bytes": resp.sent,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "user_agent": environ.get("HTTP_USER_AGENT", "-"),
        }
        self.access_log.info(
            '%(remote_addr)s "%(method)s %(path)s" %(status)s %(bytes)s %(duration_ms)s ms',
            fields,
            extra=fields,
        )

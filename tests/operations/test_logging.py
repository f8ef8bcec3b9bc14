"""Request ids, the log formats (gunicorn's lines included), one line a record
whatever a client sends, and the line each user lookup logs."""

import contextlib
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token

from config.logs import (
    BackgroundStreamHandler,
    DisallowedHostFilter,
    JsonFormatter,
    PlainFormatter,
    RequestIdFilter,
)
from tests.helpers import database_url, redis_environment
from tests.servers import WebService

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def _logged(formatter: logging.Formatter) -> Iterator[io.StringIO]:
    """Everything logged at DEBUG and above while the block runs, as ``formatter``
    writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


@pytest.fixture
def json_log():
    """The records as the JSON lines LOG_FORMAT=json writes."""
    with _logged(JsonFormatter()) as stream:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def plain_log():
    """The records as the plain format writes them."""
    with _logged(PlainFormatter()) as stream:
        yield stream.getvalue


class TestRequestId:
    def test_a_new_id_for_a_request_without_one(self, reader_client, reader):
        response = reader_client.get(f"/api/user/{reader.id}")
        assert len(response["X-Request-ID"]) == 32
        assert response["X-Request-ID"] != reader_client.get("/api/user")["X-Request-ID"]

    def test_the_callers_id_is_kept(self, reader_client, reader):
        response = reader_client.get(f"/api/user/{reader.id}", HTTP_X_REQUEST_ID="lb-1234.abc")
        assert response["X-Request-ID"] == "lb-1234.abc"

    @pytest.mark.parametrize("bad", ["with space", "x" * 129, "-leading", "new\\nline", "é"])
    def test_an_unlikely_id_is_replaced(self, reader_client, reader, bad):
        response = reader_client.get(f"/api/user/{reader.id}", HTTP_X_REQUEST_ID=bad)
        assert response["X-Request-ID"] != bad
        assert len(response["X-Request-ID"]) == 32

    def test_djangos_own_lines_about_the_response_carry_it(self, client, db, json_log):
        client.get("/no-such-page", HTTP_X_REQUEST_ID="req-404")
        [entry] = [entry for entry in json_log() if entry["logger"] == "django.request"]
        assert (entry["message"], entry["request_id"]) == ("Not Found: /no-such-page", "req-404")


class TestAccessLog:
    def test_one_line_a_request_with_its_id_route_status_and_duration(
        self, reader_client, reader, json_log
    ):
        reader_client.get(f"/api/user/{reader.id}?fields=x", HTTP_X_REQUEST_ID="req-access")
        reader_client.get("/no-such-page", HTTP_X_REQUEST_ID="req-missing")

        lines = {
            entry["request_id"]: entry
            for entry in json_log()
            if entry["logger"] == "usersvc.access"
        }
        assert set(lines) == {"req-access", "req-missing"}
        found, missing = lines["req-access"], lines["req-missing"]
        assert (found["level"], found["method"], found["route"], found["status"]) == (
            "INFO", "GET", "user-detail", 200
        )  # fmt: skip
        assert found["path"] == f"/api/user/{reader.id}"  # no query string
        assert found["duration_ms"] >= 0
        assert found["message"] == f"GET /api/user/{reader.id} 200 {found['duration_ms']} ms"
        assert (missing["route"], missing["status"]) == ("unmatched", 404)

    def test_probes_and_metrics_write_none(self, client, db, json_log):
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(path).status_code == 200
        assert not [entry for entry in json_log() if entry["logger"] == "usersvc.access"]


class TestDisallowedHost:
    """A request whose Host header ALLOWED_HOSTS does not list."""

    def test_each_host_is_logged_once_without_the_traceback(self, client, db, json_log):
        # Hosts of this test's own: the filter remembers the hosts other tests sent.
        first, second = (f"{uuid.uuid4().hex}.example" for _ in range(2))
        for host in (first, first, first, second, first):
            assert client.get("/api/user", HTTP_HOST=host).status_code == 400

        lines = [e for e in json_log() if e["logger"] == "django.security.DisallowedHost"]
        assert [line["message"].split("'")[1] for line in lines] == [first, second]
        assert not [line for line in lines if "exception" in line]
        assert all(line["level"] == "ERROR" and line["request_id"] != "-" for line in lines)
        refused = [e for e in json_log() if e["logger"] == "usersvc.access"]
        assert [line["status"] for line in refused] == [400] * 5

    def test_a_host_is_logged_again_after_the_interval(self):
        refusals = DisallowedHostFilter(interval=0.05)
        assert refusals.filter(_host_record("again.example"))
        time.sleep(0.1)
        assert refusals.filter(_host_record("again.example"))

    def test_at_most_so_many_hosts_an_interval(self):
        refusals = DisallowedHostFilter(interval=3600, max_hosts=2)
        passed = [refusals.filter(_host_record(f"{n}.example")) for n in range(4)]
        assert passed == [True, True, False, False]


# A client's attempt at a line of its own, and what each character is written as.
_FORGED = "\n1999-01-01 00:00:00,000 INFO usersvc.access [x] FORGED"
_RECORD_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8},[0-9]{3} [A-Z]+ [\w.]+ \[")
_ESCAPES = {
    "%0a": "\\n", "%0d": "\\r", "%1b": "\\x1b", "%7f": "\\x7f",
    "%c2%85": "\\x85", "%e2%80%a8": "\\u2028", "%e2%80%a9": "\\u2029",
}  # fmt: skip


class TestOneRecordOneLine:
    """Whatever a client puts in a path, a header or a form, each record is one line."""

    @pytest.mark.parametrize("encoded", sorted(_ESCAPES))
    def test_a_control_character_in_the_path_is_escaped(self, reader_client, plain_log, encoded):
        reader_client.get(f"/api/user/{encoded}FORGED", HTTP_X_REQUEST_ID="req-forged")

        lines = plain_log().splitlines()
        assert not [line for line in lines if line.startswith("FORGED")]
        [access] = [line for line in lines if " usersvc.access [req-forged] " in line]
        assert f" GET /api/user/{_ESCAPES[encoded]}FORGED 404 " in access

    def test_a_forged_line_stays_in_its_record(self, client, db, plain_log):
        client.get("/api/user/" + _FORGED.replace("\n", "%0a").replace(" ", "%20"))
        client.post("/admin/login/", {"username": "root" + _FORGED, "password": "wrong"})
        client.post("/api-auth/login/", {"username": "root" + _FORGED, "password": "wrong"})

        records = plain_log().splitlines()
        assert records and all(_RECORD_START.match(line) for line in records), records
        assert not [line for line in records if line.startswith("1999-01-01")]

    def test_a_traceback_keeps_its_lines(self):
        try:
            raise ValueError("boom")
        except ValueError:
            record = logging.getLogger("test").makeRecord(
                "test", logging.ERROR, __file__, 1, "failed at %s", ("/a\nb",), sys.exc_info()
            )
        record.request_id = "-"
        first, *traceback = PlainFormatter().format(record).splitlines()
        assert first.endswith(" ERROR test [-] failed at /a\\nb")
        assert traceback[0] == "Traceback (most recent call last):"
        assert traceback[-1] == "ValueError: boom"

    def test_json_lines_escape_every_control_character(self):
        controls = "".join(map(chr, range(0x20))) + "\x7f" + "".join(map(chr, range(0x80, 0xA0)))
        controls += "\u2028\u2029"
        record = logging.makeLogRecord({"name": "test", "msg": controls, "agent": controls})
        line = JsonFormatter().format(record)
        assert not [character for character in controls if character in line]
        assert json.loads(line)["message"] == json.loads(line)["agent"] == controls


def _host_record(host: str) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "django.security.DisallowedHost", "msg": f"Invalid HTTP_HOST header: {host!r}."}
    )


class TestLookupLog:
    def test_each_user_lookup_logs_its_cache_result_with_the_request_id(
        self, reader_client, reader, json_log
    ):
        first = reader_client.get(f"/api/user/{reader.id}", HTTP_X_REQUEST_ID="req-1")
        reader_client.get(f"/api/user/{reader.id}", HTTP_X_REQUEST_ID="req-2")
        reader_client.get("/api/user/987654", HTTP_X_REQUEST_ID="req-3")

        lookups = [entry for entry in json_log() if entry["logger"] == "users.reads"]
        assert [(e["request_id"], e["cache"], e["found"]) for e in lookups] == [
            ("req-1", "MISS", True),
            ("req-2", "HIT", True),
            ("req-3", "MISS", False),
        ]
        assert all(entry["user_id"] in (reader.id, 987654) for entry in lookups)
        assert all(entry["duration_ms"] >= 0 for entry in lookups)
        assert lookups[0]["message"].startswith(f"user lookup {reader.id}: MISS in ")
        assert lookups[0]["level"] == "DEBUG"
        assert first.status_code == 200

    def test_no_token_password_or_hash_is_ever_logged(
        self, staff_client, staff, json_log, django_capture_on_commit_callbacks
    ):
        password = "a-Long-passphrase-7"
        with django_capture_on_commit_callbacks(execute=True):
            created = staff_client.post(
                "/api/user",
                {"username": "logged", "email": "logged@x.io", "password": password},
                format="json",
            )
        staff_client.get(f"/api/user/{created.json()['id']}")
        staff_client.get("/api/user/1", HTTP_AUTHORIZATION="Token not-a-real-token")

        logged = json.dumps(json_log())
        from users.models import User

        secrets = [password, User.objects.get(username="logged").password, staff.password]
        secrets += [Token.objects.get(user=staff).key, "not-a-real-token"]
        assert "user lookup" in logged
        for secret in secrets:
            assert secret not in logged


class _TenLines(BackgroundStreamHandler):
    QUEUED_LINES = 10


def test_a_stalled_log_stream_holds_the_logger_back_not_the_memory():
    """Lines are written on a thread of their own; when stderr does not keep up (a
    pipe nobody reads), the queue stops at its bound and the logger waits, as it
    would on the stream itself. Once the stream moves, every line arrives."""
    read_end, write_end = os.pipe()
    handler = _TenLines()
    handler.addFilter(RequestIdFilter())
    handler.setStream(os.fdopen(write_end, "w", buffering=1))
    logger = logging.getLogger("tests.stalled")
    logger.propagate = False
    logger.addHandler(handler)
    lines = 1_000
    logging_thread = threading.Thread(
        target=lambda: [logger.warning("%05d %s", n, "x" * 1_000) for n in range(lines)]
    )
    logging_thread.start()
    try:
        deadline = time.monotonic() + 60
        while handler.queue.qsize() < _TenLines.QUEUED_LINES and logging_thread.is_alive():
            assert time.monotonic() < deadline, "the queue never filled"
            time.sleep(0.01)
        assert handler.queue.qsize() <= _TenLines.QUEUED_LINES
        # A thousand lines queue in milliseconds where nothing bounds them.
        logging_thread.join(timeout=2)
        assert logging_thread.is_alive(), "the logger ran on past its bound"
    finally:
        with os.fdopen(read_end) as reading:
            received = []
            reader = threading.Thread(target=lambda: received.extend(reading))
            reader.start()
            logging_thread.join(timeout=60)
            logger.removeHandler(handler)
            handler.close()
            handler._stream.stream.close()
            reader.join(timeout=60)
    numbers = [re.search(r" (\d{5}) x", line).group(1) for line in received]
    assert numbers == [f"{n:05d}" for n in range(lines)]


def test_json_formatter_carries_extras_and_the_traceback():
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("test").makeRecord(
            "test", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info(),
            extra={"user_id": 7},
        )  # fmt: skip
    entry = json.loads(formatter.format(record))
    assert entry["message"] == "failed here"
    assert (entry["level"], entry["logger"], entry["user_id"]) == ("ERROR", "test", 7)
    assert "ValueError: boom" in entry["exception"]
    assert entry["time"].endswith("+00:00")


def test_json_lines_leave_out_the_request_and_its_query_string(rf):
    """Django logs every 4xx with the request as an extra field, whose text holds the
    query string (``?email=``): the access line leaves it out, so must the JSON
    formatter (failed on the previous main: the address was in the line)."""
    request = rf.get("/api/user", {"email": "alice@example.com"})
    record = logging.getLogger("django.request").makeRecord(
        "django.request", logging.WARNING, __file__, 1, "Not Found: %s", (request.path,), None,
        extra={"request": request, "status_code": 404},
    )  # fmt: skip

    line = JsonFormatter().format(record)

    assert "alice" not in line
    assert json.loads(line)["status_code"] == 404


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Runs ``code`` after ``django.setup()`` in a fresh process with these variables."""
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.local", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_log_format_json_is_one_object_a_line():
    result = _python("import logging; logging.getLogger('ops').warning('hello')", LOG_FORMAT="json")
    [line] = [line for line in result.stderr.splitlines() if line.startswith("{")]
    entry = json.loads(line)
    assert (entry["message"], entry["logger"], entry["request_id"]) == ("hello", "ops", "-")


def test_an_unknown_log_format_is_refused():
    result = _python("pass", LOG_FORMAT="xml")
    assert result.returncode != 0
    assert "LOG_FORMAT is 'xml'; use 'plain' or 'json'." in result.stderr


@pytest.mark.slow
def test_under_gunicorn_every_line_is_json_a_malformed_request_included(tmp_path, transactional_db):
    """gunicorn's own lines (start, workers, a request it refuses to parse, stop) and
    its access log, as well as the service's, with LOG_FORMAT=json."""
    web = WebService(
        tmp_path,
        database_url=database_url(),
        **redis_environment(),
        LOG_FORMAT="json",
        GUNICORN_ACCESS_LOG="-",
    )
    web.start()
    try:
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n")
            refused = connection.recv(1024)
        status, headers, _ = web.request("GET", "/api/user", token=None)
    finally:
        web.stop()

    lines = [line for line in (tmp_path / "web.log").read_text().splitlines() if line]
    not_json = [line for line in lines if not _is_json_object(line)]
    assert not not_json, not_json[:5]
    entries = [json.loads(line) for line in lines]
    assert refused.startswith(b"HTTP/1.1 400")
    assert any(
        entry["logger"] == "gunicorn.error" and "Invalid request" in entry["message"]
        for entry in entries
    )
    [access] = [
        entry
        for entry in entries
        if entry["logger"] == "gunicorn.access" and entry["request_id"] == headers["x-request-id"]
    ]
    assert (status, access["status"], access["method"], access["path"]) == (
        401, 401, "GET", "/api/user"
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_under_gunicorn_a_forged_path_or_header_stays_in_its_line(
    tmp_path, transactional_db, log_format
):
    """gunicorn's access line (its path, and its User-Agent, which gunicorn decodes
    as latin-1: byte 0x85 is NEL) and the service's own, in both formats."""
    web = WebService(
        tmp_path,
        database_url=database_url(),
        **redis_environment(),
        LOG_FORMAT=log_format,
        GUNICORN_ACCESS_LOG="-",
    )
    web.start()
    try:
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as connection:
            connection.sendall(
                b"GET /api/user/%0aFORGED%e2%80%a8FORGED HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"User-Agent: agent\x85FORGED\tx\r\nX-Request-ID: req-forged\r\n"
                b"Connection: close\r\n\r\n"
            )
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
    finally:
        web.stop()

    assert answer.startswith(b"HTTP/1.1 404")
    log = (tmp_path / "web.log").read_text()
    lines = [line for line in log.splitlines() if line]
    record_start = re.compile("{") if log_format == "json" else _RECORD_START
    assert lines and not [line for line in lines if not record_start.match(line)]
    assert not [character for character in "\x85\u2028" if character in log]
    if log_format == "json":
        entries = [json.loads(line) for line in lines]
        forged = [entry for entry in entries if entry["request_id"] == "req-forged"]
        [gunicorn] = [entry for entry in forged if entry["logger"] == "gunicorn.access"]
        [service] = [entry for entry in forged if entry["logger"] == "usersvc.access"]
        assert gunicorn["user_agent"] == "agent\x85FORGED\tx"
        # Django decodes PATH_INFO in the environ gunicorn logs from.
        assert gunicorn["path"] == service["path"] == "/api/user/\nFORGED\u2028FORGED"
    else:
        [gunicorn] = [line for line in lines if " gunicorn.access [req-forged] " in line]
        [service] = [line for line in lines if " usersvc.access [req-forged] " in line]
        assert '"GET /api/user/\\nFORGED\\u2028FORGED" 404 ' in gunicorn
        assert " GET /api/user/\\nFORGED\\u2028FORGED 404 " in service


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False

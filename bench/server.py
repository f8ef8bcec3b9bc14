"""gunicorn with the production configuration, on a free loopback port, for one bench run."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 15


def free_loopback_port() -> int:
    """A port nothing listens on now (the kernel's pick), for a server or a closed endpoint."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Gunicorn:
    """``gunicorn APP`` in the project root, which reads gunicorn.conf.py: the service
    (``config.wsgi``) as scripts/run and the Dockerfile start it, or a peer or a
    variant of the service under bench/ with the same workers, threads and settings.

    Used as a context manager: the server is stopped on leaving the block, whatever
    ends it (an error, Ctrl-C). It runs in a session of its own, so a Ctrl-C in the
    terminal reaches only the driver, which then stops it in order.
    """

    def __init__(
        self,
        *,
        name: str,
        log_dir: Path,
        app: str = "config.wsgi",
        token: str | None = None,
        ready_path: str = "/bench/floor",
        **environment: str,
    ):
        self.name = name
        self.port = free_loopback_port()
        self.token = token
        self._app = app
        self._ready_path = ready_path
        self._log_path = log_dir / f"gunicorn-{name}.log"
        self._environment = {**os.environ, "BIND": f"127.0.0.1:{self.port}", **environment}
        self._process: subprocess.Popen | None = None

    @property
    def headers(self) -> dict[str, str]:
        """What every bench request sends: the token (to the service), and the header of
        the TLS-terminating proxy production sits behind (without it, production
        redirects to https)."""
        headers = {"X-Forwarded-Proto": "https"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        return headers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Gunicorn:
        gunicorn = Path(sys.executable).with_name("gunicorn")
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [str(gunicorn), self._app],
                cwd=settings.BASE_DIR,
                env=self._environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def get(self, path: str) -> tuple[int, str | None]:
        """One GET as the bench sends them: the status and the ``X-Cache`` header."""
        client = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            client.request("GET", path, headers=self.headers)
            response = client.getresponse()
            response.read()
            return response.status, response.getheader("X-Cache")
        finally:
            client.close()

    def near_cache_lookups(self) -> tuple[float, float]:
        """The service's near-cache lookups so far, hits and misses, summed over its
        workers (its ``/metrics``, which answers a direct loopback caller)."""
        client = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            client.request("GET", "/metrics", headers={"X-Forwarded-Proto": "https"})
            response = client.getresponse()
            text = response.read().decode()
        finally:
            client.close()
        if response.status != 200:
            raise RuntimeError(f"{self.name} /metrics: {response.status}")
        totals = {"hit": 0.0, "miss": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "usersvc_near_cache_lookups_total":
                    totals[sample.labels["result"]] += sample.value
        return totals["hit"], totals["miss"]

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"gunicorn ({self.name}) exited:\n{self.log_tail()}")
            try:
                if self.get(self._ready_path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn ({self.name}) did not serve in time:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """A quick shutdown (SIGINT to the arbiter), then SIGKILL to what is left of its group."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_STOP_TIMEOUT_S)
        # Whatever is left of the group (a stuck arbiter, an orphaned worker) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

"""The benchmark suite's command line: ``./scripts/bench [options]`` (docs/benchmarks.md).

Starts a MariaDB and a Redis of its own, loads the users, starts the service and
its peers under gunicorn on loopback, drives them with wrk, times the in-process
calls, and writes the Markdown table and the chart to docs/benchmarks/. With
``--breakdown``, times the stages of one request in process instead
(``bench/breakdown.py``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import django

from . import stores
from .environment import service_environment

_DEFAULTS = {
    "users": 100_000,
    "bulk_users": 1_000_000,
    "burst_ids": 10_000,
    "duration": 10.0,
    "repeat": 3,
    "connections": 16,
}
# A smoke run: every scenario and peer once, for a couple of seconds, on small data.
_QUICK = {"users": 2_000, "bulk_users": 20_000, "burst_ids": 500, "duration": 2.0, "repeat": 1}
_MICRO_CALLS = 10_000
_QUICK_MICRO_CALLS = 2_000


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./scripts/bench",
        description="Benchmarks the user service end to end; see docs/benchmarks.md.",
    )
    parser.add_argument(
        "--users",
        type=int,
        help=f"users the reads draw from (default {_DEFAULTS['users']:,})",
    )
    parser.add_argument(
        "--bulk-users",
        type=int,
        help=f"users the warm and the flush are timed on (default {_DEFAULTS['bulk_users']:,})",
    )
    parser.add_argument(
        "--burst-ids",
        type=int,
        help=f"cold ids of each burst (default {_DEFAULTS['burst_ids']:,})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        help=f"seconds of each wrk run (default {_DEFAULTS['duration']:g})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"passes; figures are their medians (default {_DEFAULTS['repeat']})",
    )
    parser.add_argument(
        "--connections",
        type=int,
        help=f"wrk's open connections (default {_DEFAULTS['connections']})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {_QUICK['users']:,} users, {_QUICK['duration']:g} s runs, one pass,"
        " results to a temporary folder instead of docs/benchmarks/",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="instead of the suite: where a hot GET's and the authenticated floor's time"
        " goes, stage by stage, in process (bench/breakdown.py)",
    )
    arguments = parser.parse_args(argv)
    for name, default in _DEFAULTS.items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, _QUICK.get(name, default) if arguments.quick else default)
    if min(arguments.users, arguments.bulk_users, arguments.burst_ids, arguments.repeat) < 1:
        parser.error("--users, --bulk-users, --burst-ids and --repeat must be positive")
    if arguments.duration <= 0:
        parser.error("--duration must be positive")
    if arguments.connections < 2:
        parser.error("--connections must be at least 2 (one per wrk thread)")
    return arguments


def _say(message: str) -> None:
    print(f"==> {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _interrupt(signum, frame) -> None:
    # A SIGTERM unwinds like a Ctrl-C, so the servers are stopped and the data removed.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    arguments = _parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="usersvc-bench-stores-") as folder:
            _say("starting a MariaDB and a Redis of the bench's own")
            with stores.private_stores(Path(folder)) as (database_url, redis_url):
                os.environ.update(
                    service_environment(database_url=database_url, redis_url=redis_url)
                )
                django.setup()
                if arguments.breakdown:
                    from . import breakdown

                    return breakdown.main(arguments.quick, _say)
                return _suite(arguments)
    except KeyboardInterrupt:
        _say("interrupted: servers stopped, bench data removed")
        return 130


def _suite(arguments: argparse.Namespace) -> int:
    # The bench's own modules import the project's models: only now can they load.
    from django.conf import settings

    from . import report, suite

    options = suite.Options(
        users=arguments.users,
        bulk_users=arguments.bulk_users,
        burst_ids=arguments.burst_ids,
        duration_s=arguments.duration,
        repeat=arguments.repeat,
        connections=arguments.connections,
        micro_calls=_QUICK_MICRO_CALLS if arguments.quick else _MICRO_CALLS,
    )
    if arguments.quick:
        output = Path(tempfile.gettempdir()) / "usersvc-bench-quick"
    else:
        output = Path(settings.BASE_DIR) / "docs" / "benchmarks"
    machine = report.machine_info()
    passes = suite.run(options, _say)
    machine["load_after"] = report.load_average()
    text = report.markdown(passes, options, machine)
    output.mkdir(parents=True, exist_ok=True)
    (output / "latest.md").write_text(text)
    report.chart(passes, options, machine, output / "latest.png")
    print(text)
    _say(f"written: {output / 'latest.md'}, {output / 'latest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark suite's command line: ``./scripts/bench [options]`` (docs/benchmarks.md).

Loads N users into a database of its own, starts gunicorn with the production
configuration on loopback, drives it with wrk, times the in-process calls, and
writes the Markdown table and the chart to docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

import django

from .environment import service_environment

_DEFAULTS = {"users": 100_000, "duration": 10.0, "repeat": 3, "connections": 16}
# A smoke run that CI can afford: every step once, on a small data set.
_QUICK = {"users": 2_000, "duration": 2.0, "repeat": 1}
_MICRO_CALLS = 20_000
_QUICK_MICRO_CALLS = 2_000


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./scripts/bench",
        description="Benchmarks the user service end to end; see docs/benchmarks.md.",
    )
    parser.add_argument("--users", type=int, help=f"users to load (default {_DEFAULTS['users']:,})")
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
    arguments = parser.parse_args(argv)
    for name, default in _DEFAULTS.items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, _QUICK.get(name, default) if arguments.quick else default)
    if arguments.users < 1 or arguments.repeat < 1 or arguments.duration <= 0:
        parser.error("--users, --repeat and --duration must be positive")
    if arguments.connections < 2:
        parser.error("--connections must be at least 2 (one per wrk thread)")
    return arguments


def _say(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def _interrupt(signum, frame) -> None:
    # A SIGTERM unwinds like a Ctrl-C, so the servers are stopped and the data removed.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    arguments = _parse(argv)
    os.environ.update(
        service_environment(
            database_url=os.environ.get("DATABASE_URL", "mysql://root@127.0.0.1:3306/usersvc"),
            redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        )
    )
    django.setup()
    # The bench's own modules import the project's models: only now can they load.
    from django.conf import settings

    from . import report, suite

    signal.signal(signal.SIGTERM, _interrupt)
    options = suite.Options(
        users=arguments.users,
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
    try:
        passes = suite.run(options, _say)
    except KeyboardInterrupt:
        _say("interrupted: servers stopped, bench data removed")
        return 130
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

"""The run's figures as a Markdown table and a PNG chart, with the machine they came from.

Every figure is the median over the passes; every ratio is computed within each
pass (the two sides measured minutes apart on the same warm machine) and then
its median taken, so a slow spell between passes does not skew a ratio.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from django.conf import settings
from matplotlib.figure import Figure

from users.conf import user_cache_settings

from . import dataset, keys
from .cache_commands import FLUSH_COMMAND, WARM_COMMAND
from .load import WRK_THREADS
from .suite import BATCH_SIZE, HOT_USERS, SCENARIOS, Options, PassResult, turn_count

_WARM_TARGET_USERS = 1_000_000
# One per scenario: floors grey, cached GETs blue (near cache off paler), the
# database red, the rest their own.
_COLORS = ["#555555", "#888888", "#2a7ab9", "#7fb3d9", "#1f5f8f", "#a9cce3", "#c0504d"]
_COLORS += ["#e6b0aa", "#9bbb59", "#4f81bd", "#8064a2"]
# Units a target's figure keeps two decimals of.
_FRACTIONAL_UNITS = ("x", "per request")


def machine_info() -> dict[str, str]:
    """What the figures depend on, for the reader who compares them with their own."""
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    memory_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    commit = _git("rev-parse", "--short", "HEAD")
    # The results this writes are tracked files: changed, they say nothing of the code.
    if _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/benchmarks"):
        commit += " with uncommitted changes"
    redis_info = keys.bench_client().info("server")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "unknown",
        # Anything else running on the machine skews the figures; this says how busy it
        # was before the run (and after it: see load_after).
        "load": load_average(),
        "cpu": f"{cpu_model}, {os.cpu_count()} cores",
        "memory": f"{memory_kib / 2**20:.0f} GiB",
        "os": f"{platform.freedesktop_os_release().get('PRETTY_NAME', 'Linux')},"
        f" kernel {platform.release()}",
        "python": platform.python_version(),
        "django": metadata.version("django"),
        "djangorestframework": metadata.version("djangorestframework"),
        "gunicorn": metadata.version("gunicorn"),
        "redis": redis_info["redis_version"],
        "mysql": dataset.server_version(),
        "wrk": wrk_version,
    }


def _git(*arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=settings.BASE_DIR, capture_output=True, text=True
    ).stdout.strip()


def load_average() -> str:
    """The 1-minute load average: how many processes wanted the cores, the bench's included."""
    return f"{os.getloadavg()[0]:.2f}"


def _median(values) -> float:
    return statistics.median(values)


def _http(passes: list[PassResult], scenario: str, figure: Callable) -> float:
    return _median(figure(one.http[scenario]) for one in passes)


def _ratios(passes: list[PassResult], scenario: str, baseline: str) -> list[float]:
    return [
        one.http[scenario].requests_per_second / one.http[baseline].requests_per_second
        for one in passes
    ]


def _rps_ratio(passes: list[PassResult], scenario: str, baseline: str) -> float:
    return _median(_ratios(passes, scenario, baseline))


def _commands_beyond_background(one: PassResult, scenario: str) -> float:
    """Redis commands per request that the requests caused. The authenticated floor
    reads nothing from Redis once its token is in the near cache, so its commands/s
    are the background's (rate counts added every RATE_SYNC_MS, tracking PINGs),
    which run per second whatever the request rate."""
    result, floor = one.http[scenario], one.http["floor"]
    return (result.redis_commands_per_second - floor.redis_commands_per_second) / (
        result.requests_per_second
    )


@dataclasses.dataclass(frozen=True)
class _Target:
    text: str
    per_pass: list[float]
    unit: str
    met: Callable[[float], bool]

    def rounded(self, value: float) -> float:
        """The value as the table shows it, which is also what the target is held to."""
        return round(value, 2) if self.unit in _FRACTIONAL_UNITS else round(value)

    def format(self, value: float) -> str:
        value = self.rounded(value)
        if self.unit == "x":
            return f"{value:.2f}x"
        if self.unit in _FRACTIONAL_UNITS:
            return f"{value:.2f} {self.unit}"
        return f"{value:,} {self.unit}"

    def row(self) -> list[str]:
        median = _median(self.per_pass)
        return [
            self.text,
            self.format(median),
            ", ".join(self.format(value) for value in self.per_pass),
            "pass" if self.met(self.rounded(median)) else "**fail**",
        ]


def _targets(passes: list[PassResult], options: Options) -> list[_Target]:
    def rps_ratios(scenario: str, baseline: str) -> list[float]:
        return _ratios(passes, scenario, baseline)

    warm_at = "" if options.users >= _WARM_TARGET_USERS else f" (run at {options.users:,} users)"
    return [
        _Target(
            f"hot GET (Zipf over {HOT_USERS:,} users) ≥ 0.9 x true framework floor",
            rps_ratios("hot", "true-floor"),
            "x",
            lambda ratio: ratio >= 0.9,
        ),
        _Target(
            "hot GET: Redis commands per request, beyond the background's, ≤ 0.05",
            [_commands_beyond_background(one, "hot") for one in passes],
            "per request",
            lambda count: count <= 0.05,
        ),
        _Target(
            "uniform GET, near cache on ≥ 0.95 x near cache off (no slower)",
            rps_ratios("hit", "hit-near-off"),
            "x",
            lambda ratio: ratio >= 0.95,
        ),
        _Target(
            "GET hit ≥ 2 x database only",
            rps_ratios("hit", "database"),
            "x",
            lambda ratio: ratio >= 2,
        ),
        _Target(
            f"{BATCH_SIZE} cached users by `?ids=` ≥ 10 x single GET hits (users/s)",
            [ratio * BATCH_SIZE for ratio in rps_ratios("batch", "hit")],
            "x",
            lambda ratio: ratio >= 10,
        ),
        _Target(
            "`get_user` hit ≤ 1.3 x raw HGETALL (medians)",
            [one.user_get.median_us / one.hgetall.median_us for one in passes],
            "x",
            lambda ratio: ratio <= 1.3,
        ),
        _Target(
            f"warm of 1,000,000 users ≥ 100,000 users/s{warm_at}",
            [one.warm_users_per_s for one in passes],
            "users/s",
            lambda rate: rate >= 100_000,
        ),
        _Target(
            "flush ≥ 200,000 keys/s",
            [one.flush_keys_per_s for one in passes],
            "keys/s",
            lambda rate: rate >= 200_000,
        ),
        _Target(
            "≤ 200 bytes of Redis memory per cached user (`INFO memory` delta)",
            [one.used_memory_per_user_bytes for one in passes],
            "B",
            lambda size: size <= 200,
        ),
    ]


def _table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    separators = ["---:" if side == "r" else "---" for side in align]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(separators) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def markdown(passes: list[PassResult], options: Options, machine: dict[str, str]) -> str:
    http_rows = []
    for scenario in SCENARIOS:
        key = scenario.key
        http_rows.append(
            [
                scenario.title,
                f"{_http(passes, key, lambda result: result.requests_per_second):,.0f}",
                f"{_http(passes, key, lambda result: result.p50_ms):.2f}",
                f"{_http(passes, key, lambda result: result.p99_ms):.2f}",
                f"{_http(passes, key, lambda result: result.p999_ms):.2f}",
                f"{_rps_ratio(passes, key, 'true-floor'):.2f}",
                f"{_rps_ratio(passes, key, 'floor'):.2f}",
                f"{_rps_ratio(passes, key, 'database'):.2f}",
                f"{_http(passes, key, lambda result: result.redis_commands_per_second):,.0f}",
                f"{_http(passes, key, lambda result: result.redis_commands_per_request):.2f}",
                f"{_http(passes, key, lambda result: result.socket_errors):.0f}",
            ]
        )

    def timing_row(title: str, timing: Callable) -> list[str]:
        return [
            title,
            f"{_median(timing(one).median_us for one in passes):.1f}",
            f"{_median(timing(one).p99_us for one in passes):.1f}",
        ]

    near_bytes = _median(one.near_bytes_per_entry for one in passes)
    near_size = user_cache_settings.NEAR_CACHE_SIZE
    lines = [
        "# Benchmarks",
        "",
        f"Taken {machine['date']} on {machine['cpu']}, {machine['memory']} of memory,"
        f" {machine['os']}: Python {machine['python']}, Django {machine['django']},"
        f" DRF {machine['djangorestframework']}, gunicorn {machine['gunicorn']},"
        f" Redis {machine['redis']}, MySQL {machine['mysql']}, wrk {machine['wrk']};"
        " all on the one machine, over loopback. Service at commit"
        f" `{machine['commit']}`; 1-minute load average before the run {machine['load']},"
        f" at its end {machine['load_after']}.",
        "",
        f"`./scripts/bench --users {options.users} --duration {options.duration_s:g}"
        f" --repeat {options.repeat} --connections {options.connections}`:"
        f" {options.users:,} users; gunicorn with gunicorn.conf.py and the production"
        f" settings; wrk with {WRK_THREADS} threads and {options.connections} connections"
        f" for {options.duration_s:g} s per scenario"
        + (
            f" (all but miss and create in {turn_count(options)} turns each, one after the"
            " other, so that a change in the machine's load reaches them alike)."
            if turn_count(options) > 1
            else "."
        )
        + (
            " One pass: each ratio is computed within it."
            if options.repeat == 1
            else f" Each figure is the median of {options.repeat} passes; each ratio is"
            " computed within a pass, then its median taken."
        ),
        "",
        "## HTTP",
        "",
        *_table(
            [
                "scenario",
                "requests/s",
                "p50 (ms)",
                "p99 (ms)",
                "p99.9 (ms)",
                "x true floor",
                "x auth. floor",
                "x database only",
                "Redis commands/s",
                "Redis commands/request",
                "socket errors",
            ],
            "lrrrrrrrrrr",
            http_rows,
        ),
        "",
        *_table(
            ["compared within each pass", "median"],
            "lr",
            [
                [
                    f"users/s by `?ids=` ({BATCH_SIZE} a request) / users/s by single GET hits",
                    f"{_median(r * BATCH_SIZE for r in _ratios(passes, 'batch', 'hit')):.1f}x",
                ],
                [
                    "requests/s of a 304 (If-None-Match) / of a 200 hit",
                    f"{_median(_ratios(passes, 'not-modified', 'hit')):.2f}x",
                ],
            ],
        ),
        "",
        "## In process",
        "",
        *_table(
            ["call", "median (µs)", "p99 (µs)"],
            "lrr",
            [
                timing_row(
                    "`users.reads.user_get`, hit in Redis (near cache off)",
                    lambda one: one.user_get,
                ),
                timing_row("raw redis-py `HGETALL` round trip", lambda one: one.hgetall),
                timing_row(
                    "`users.reads.user_get`, hit in the near cache", lambda one: one.near_hit
                ),
            ],
        ),
        "",
        *_table(
            ["measure", "value"],
            "lr",
            [
                [
                    f"`{WARM_COMMAND} --all`",
                    f"{_median(one.warm_users_per_s for one in passes):,.0f} users/s",
                ],
                [
                    f"`{FLUSH_COMMAND} --all`",
                    f"{_median(one.flush_keys_per_s for one in passes):,.0f} keys/s",
                ],
                [
                    "Redis memory per cached user, `MEMORY USAGE` (median of a sample)",
                    f"{_median(one.memory_usage_bytes for one in passes):,.0f} B",
                ],
                [
                    "Redis memory per cached user, `INFO memory` `used_memory` delta / users",
                    f"{_median(one.used_memory_per_user_bytes for one in passes):,.0f} B",
                ],
                [
                    "near cache memory per user entry (tracemalloc, per process)",
                    f"{near_bytes:,.0f} B",
                ],
                [
                    f"near cache bound: `NEAR_CACHE_SIZE` {near_size:,} entries per process",
                    f"{near_bytes * near_size / 2**20:,.1f} MiB per process",
                ],
            ],
        ),
        "",
        "## Targets",
        "",
        *_table(
            ["target", "median", "per pass", "result"],
            "lrrl",
            [target.row() for target in _targets(passes, options)],
        ),
        "",
    ]
    return "\n".join(lines)


def chart(passes: list[PassResult], options: Options, machine: dict[str, str], path: Path) -> None:
    """Requests/s (median, with the range over passes) and latency percentiles, per scenario."""
    labels = [scenario.title.split(" (")[0] for scenario in SCENARIOS]
    # A bare Figure (no pyplot): no global state, and PNG output goes through Agg.
    figure = Figure(figsize=(16, 6))
    throughput, latency = figure.subplots(1, 2)

    rates = [[one.http[s.key].requests_per_second for one in passes] for s in SCENARIOS]
    medians = [_median(values) for values in rates]
    positions = range(len(SCENARIOS))
    throughput.bar(
        positions,
        medians,
        yerr=[
            [m - min(values) for m, values in zip(medians, rates, strict=True)],
            [max(values) - m for m, values in zip(medians, rates, strict=True)],
        ],
        color=_COLORS,
        capsize=4,
    )
    for position, value, values in zip(positions, medians, rates, strict=True):
        throughput.annotate(
            f"{value:,.0f}",
            (position, max(values)),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
        )
    throughput.margins(y=0.1)
    throughput.set_xticks(list(positions), labels, rotation=20, ha="right")
    throughput.set_ylabel("requests/s (median; bars: range over passes)")
    throughput.set_title("Throughput")

    width = 0.27
    for offset, (name, figure_of) in enumerate(
        [
            ("p50", lambda result: result.p50_ms),
            ("p99", lambda result: result.p99_ms),
            ("p99.9", lambda result: result.p999_ms),
        ]
    ):
        latency.bar(
            [position + (offset - 1) * width for position in positions],
            [_http(passes, s.key, figure_of) for s in SCENARIOS],
            width,
            label=name,
        )
    latency.set_yscale("log")
    latency.set_xticks(list(positions), labels, rotation=20, ha="right")
    latency.set_ylabel("latency (ms, log scale)")
    latency.set_title("Latency")
    latency.legend()

    figure.suptitle(
        f"user service, {options.users:,} users, {options.connections} connections,"
        f" median of {options.repeat}: {machine['cpu']}, {machine['date']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)

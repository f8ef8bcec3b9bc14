"""Each gunicorn worker's memory and CPU, read from /proc when /metrics is scraped.

In multiprocess mode prometheus_client has no process collector: the one it
registers by default describes only the process that answers the scrape, one
worker out of several, different at each scrape. So the worker that answers
reads every live worker of its master, its siblings and itself
(``/proc/<master>/task/<master>/children``), and reports each under the usual
names with a ``pid`` label: ``process_resident_memory_bytes`` and
``process_cpu_seconds_total``. The master itself, which runs no application
code, is left out; the container's total is the orchestrator's to report
(docs/operations.md, "Worker memory and CPU").
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from pathlib import Path

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = resource.getpagesize()


class WorkerProcessesCollector(Collector):
    """The memory and CPU of every child of ``master``, as the kernel counts them now."""

    def __init__(self, master: int) -> None:
        self._master = master

    def collect(self) -> Iterable[Metric]:
        memory = GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory of each gunicorn worker, in bytes.",
            labels=["pid"],
        )
        cpu = CounterMetricFamily(
            "process_cpu_seconds_total",
            "User and system CPU time each gunicorn worker spent, in seconds.",
            labels=["pid"],
        )
        for pid in self._workers():
            try:
                # The fields after the command's name, which may hold spaces and ")".
                fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:  # it exited since the list was read
                continue
            memory.add_metric([pid], float(fields[21]) * _PAGE)
            cpu.add_metric([pid], (float(fields[11]) + float(fields[12])) / _TICKS)
        return [memory, cpu]

    def _workers(self) -> list[str]:
        try:
            return Path(f"/proc/{self._master}/task/{self._master}/children").read_text().split()
        except OSError:
            return []

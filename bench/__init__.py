"""The benchmark suite: ``./scripts/bench`` runs ``bench/run.py`` (see docs/benchmarks.md).

Also home of the benchmark-only endpoint (``views.py``, ``urls.py``), which
``config/urls.py`` mounts only when ``BENCHMARK_ENDPOINTS`` is set.
"""

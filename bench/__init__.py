"""The benchmark suite: ``./scripts/bench`` runs ``bench/run.py`` (see the README's "Benchmarks").

Also home of the benchmark-only endpoint (``views.py``, ``urls.py``), which
``config/urls.py`` mounts only when ``BENCHMARK_ENDPOINTS`` is set.
"""

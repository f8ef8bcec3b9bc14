"""Which processes write their metrics to ``PROMETHEUS_MULTIPROC_DIR``: the web
service's gunicorn workers, and no other.

The variable is often in an environment every process of a deployment shares (a
pod's ``env``, a systemd ``EnvironmentFile``), so a ``manage.py`` command, a
one-off script calling ``django.setup()`` or the binary log follower would find
it too. prometheus_client decides once, when it is first imported
(``prometheus_client.values``), whether the process writes its samples to files
there, and the web service's ``/metrics`` adds up every file it finds: a command
that exited with its circuit breaker open would show the breaker open until the
service restarted, and the files of every run would slow each scrape down.

So the settings, which every entry point into Django imports before anything
imports prometheus_client, call ``confine_to_gunicorn_workers``: it removes the
variable from the environment of any process that gunicorn's master, started
with ``gunicorn.conf.py``, did not mark as its worker (``post_fork``). Such a
process keeps its metrics in its own memory (the follower serves them itself).
The mark is this module's state, set in the worker's own memory after the fork:
nothing in an environment can forge it, and no process a worker starts inherits it.

This module must not import prometheus_client.
"""

import os

# prometheus_client also honours the lower-case spelling it used to read.
VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")

_gunicorn_worker = False


def mark_gunicorn_worker() -> None:
    """Called by gunicorn.conf.py's ``post_fork`` in each new worker, before the
    worker loads the application."""
    global _gunicorn_worker
    _gunicorn_worker = True


def confine_to_gunicorn_workers() -> None:
    """Leaves ``PROMETHEUS_MULTIPROC_DIR`` only to the processes ``mark_gunicorn_worker``
    marked; must run before prometheus_client is imported."""
    if _gunicorn_worker:
        return
    for variable in VARIABLES:
        os.environ.pop(variable, None)

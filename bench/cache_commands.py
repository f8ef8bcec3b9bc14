"""The warm and flush management commands, timed from call to return."""

import time

from django.core.management import call_command

WARM_COMMAND = "warm_user_cache"
FLUSH_COMMAND = "flush_user_cache"


# What a scheduled job adds: flush --all asks for confirmation unless told not to.
_UNATTENDED = {WARM_COMMAND: [], FLUSH_COMMAND: ["--no-input"]}


def run_timed(name: str) -> float:
    """Seconds ``manage.py <name> --all`` takes, quiet (as a scheduled job runs it)."""
    start = time.perf_counter()
    call_command(name, "--all", *_UNATTENDED[name], verbosity=0)
    return time.perf_counter() - start

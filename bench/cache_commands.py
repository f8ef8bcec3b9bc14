"""The warm and flush management commands, timed when this checkout has them.

Without ``warm_user_cache`` the bench still needs every user cached before the
GET-hit scenario, so it fills the cache itself; that fill is not a figure.
"""

import io
import time

from django.core.management import call_command, get_commands

from users import cache, services
from users.conf import user_cache_settings

from . import keys

WARM_COMMAND = "warm_user_cache"
FLUSH_COMMAND = "flush_user_cache"
_PIPELINE_USERS = 1_000


def command_present(name: str) -> bool:
    """Whether ``manage.py help`` lists the command."""
    return name in get_commands()


def run_timed(name: str) -> float:
    """Seconds ``manage.py <name> --all`` takes, start to finish."""
    start = time.perf_counter()
    call_command(name, "--all", stdout=io.StringIO(), stderr=io.StringIO())
    return time.perf_counter() - start


def fill_user_cache() -> None:
    """Caches every user with the entry a read would write (fields, version, TTL).

    The entry's layout is the service's private business, so this borrows its
    projection instead of copying it; pipelined, it takes seconds for 1M users
    where a read per user would take many minutes.
    """
    client = keys.bench_client()
    ttl_ms = user_cache_settings.TTL * 1000
    with client.pipeline(transaction=False) as pipe:
        for count, row in enumerate(services.user_list().iterator(chunk_size=5_000), start=1):
            key = cache.user_cache_key(row["id"])
            pipe.hset(key, mapping=services._row_to_fields(row))
            pipe.pexpire(key, ttl_ms)
            if count % _PIPELINE_USERS == 0:
                pipe.execute()
        pipe.execute()

"""Where the bench keeps its data, and the environment that points the service there.

MySQL and Redis are shared with development and the tests, so the bench works in
a database of its own (created and dropped by each run) and under a Redis key
prefix of its own (deleted by SCAN and UNLINK), and touches nothing else.
"""

import secrets
from urllib.parse import urlsplit

BENCH_DATABASE = "usersvc_bench"
KEY_PREFIX = "usersvc-bench"
# Every key the service writes for the bench (users.cache.keys.project_pattern).
ALL_KEYS_PATTERN = f"{KEY_PREFIX}:*"


def service_environment(*, database_url: str, redis_url: str) -> dict[str, str]:
    """The production settings, with the bench's database, key prefix and endpoints.

    The driver sets these in its own process before it sets up Django, and every
    gunicorn it starts inherits them, so both see the same data.
    """
    bench_database_url = urlsplit(database_url)._replace(path=f"/{BENCH_DATABASE}").geturl()
    return {
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": bench_database_url,
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": KEY_PREFIX,
        "BENCHMARK_ENDPOINTS": "true",
        # wrk is one client sending thousands of requests a second with one token:
        # the per-user limit is raised out of its way, and still counted in Redis
        # on every request, as in production.
        "THROTTLE_RATE_USER": "1000000000/s",
    }

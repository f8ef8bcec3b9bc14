"""Where the bench keeps its data, and the environment that points the service there.

The bench runs on a MariaDB and a Redis of its own (``stores``): the HTTP
scenarios' users in one database under one key prefix, the bulk measures' users
(warm, flush, memory) in another under another, so that neither disturbs the
other's cache.
"""

import secrets
from urllib.parse import urlsplit

BENCH_DATABASE = "usersvc_bench"
KEY_PREFIX = "usersvc-bench"
BULK_DATABASE = "usersvc_bench_bulk"
BULK_KEY_PREFIX = "usersvc-bulk"


def database_url_of(server_url: str, database: str) -> str:
    return urlsplit(server_url)._replace(path=f"/{database}").geturl()


def service_environment(*, database_url: str, redis_url: str) -> dict[str, str]:
    """The production settings, with the bench's database, key prefix and endpoints.

    The driver sets these in its own process before it sets up Django, and every
    gunicorn it starts inherits them, so both see the same data.
    """
    bench_database_url = database_url_of(database_url, BENCH_DATABASE)
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

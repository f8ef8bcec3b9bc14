"""The cacheops peer: django-cacheops on the user table, explicit ``.cache()`` only."""

from .settings import *  # noqa: F403
from .settings import INSTALLED_APPS, KEY_PREFIX, REDIS_URL

INSTALLED_APPS = [*INSTALLED_APPS, "cacheops"]
CACHEOPS_REDIS = REDIS_URL
CACHEOPS_PREFIX = "bench.peers.settings_cacheops.cacheops_prefix"
# Nothing is cached unless a queryset asks (.cache()); the invalidation on save and
# delete, cacheops's own, is on.
CACHEOPS = {"peers.peeruser": {"ops": (), "timeout": 60 * 60}}


def cacheops_prefix(query) -> str:
    """Every key cacheops writes, its invalidation sets included, under the bench's."""
    return f"{KEY_PREFIX}:cacheops:"

"""The cachalot peer: django-cachalot caching the user table's queries, through the
Django cache (django-redis) the other peers use."""

from .settings import *  # noqa: F403
from .settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "cachalot"]
CACHALOT_ONLY_CACHABLE_TABLES = ["users_user"]
CACHALOT_TIMEOUT = 60 * 60

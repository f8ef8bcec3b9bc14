"""The peers' Django project: Django's defaults as ``startproject`` writes them, DRF
with no authentication, the bench's MySQL and Redis.

Only what a peer needs differs from the defaults; what the service's production
settings add (its middleware, its logging, its access log) is what the
comparison is about. ``./scripts/bench`` sets ``DATABASE_URL``, ``REDIS_URL`` and
``SECRET_KEY`` and ``CACHE_KEY_PREFIX`` for every server it starts, the service's
and the peers' alike.
"""

import os

import environ

SECRET_KEY = os.environ["SECRET_KEY"]
REDIS_URL = os.environ["REDIS_URL"]
# The service's key prefix: the peers' keys go under it, and the HGETALL peer reads
# the service's user hashes there.
KEY_PREFIX = os.environ["CACHE_KEY_PREFIX"]
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "rest_framework",
    "bench.peers",
]
# Django's default middleware, as startproject writes it.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "bench.peers.urls"
WSGI_APPLICATION = "bench.peers.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The service's database settings that apply to any Django project: persistent
# connections (CONN_MAX_AGE's default there) checked before reuse.
DATABASES = {"default": environ.Env.db_url_config(os.environ["DATABASE_URL"])}
DATABASES["default"].setdefault("OPTIONS", {})["charset"] = "utf8mb4"
DATABASES["default"]["CONN_MAX_AGE"] = 60
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# django-redis with its defaults (pickle), under the bench's key prefix.
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"{KEY_PREFIX}:peer",
    }
}
# Where the service keeps its user hashes, which the HGETALL peer reads.
USERS_CACHE = {"KEY_PREFIX": KEY_PREFIX}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "UNAUTHENTICATED_USER": None,
}

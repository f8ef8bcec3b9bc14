"""Settings shared by every environment; environment variables decide the rest.

Every variable read here is listed, with its default, in docs/configuration.md
(tests/operations/test_docs.py holds the two together).
"""

import ipaddress
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from config.env import Env
from config.metrics_writers import confine_to_gunicorn_workers
from config.redis import cache_from_env

BASE_DIR = Path(__file__).resolve().parent.parent.parent

# A variable whose text is no value of its kind (DB_CONNECT_TIMEOUT=2s) stops the
# start with ImproperlyConfigured naming it (config/env.py).
env = Env()
# This checkout's own database account, when scripts/create_database.py made one
# on a MariaDB whose root logs in over its unix socket only (local.env, not in
# git). The environment's own variables win.
env.read_env(BASE_DIR / "local.env")
# Only the web service's gunicorn workers write metrics to PROMETHEUS_MULTIPROC_DIR:
# any other process (a command, a script, the binary log follower) drops it here,
# before anything imports prometheus_client.
confine_to_gunicorn_workers()

# GENERAL
# ------------------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
TIME_ZONE = "UTC"
USE_TZ = True
LANGUAGE_CODE = "en-us"
USE_I18N = True

# DATABASES
# ------------------------------------------------------------------------------
# mysql:// is MySQL or MariaDB; tidb:// selects django-tidb, the backend for TiDB,
# which speaks MySQL's protocol (docs/scaling.md).
environ.Env.DB_SCHEMES["tidb"] = "django_tidb"
DATABASES = {
    "default": env.db("DATABASE_URL", default="mysql://root@127.0.0.1:3306/usersvc"),
}
# A MySQL that does not answer must fail fast (503), not hang the worker.
DATABASES["default"].setdefault("OPTIONS", {}).update(
    {"charset": "utf8mb4", "connect_timeout": env.int("DB_CONNECT_TIMEOUT", default=2, least=1)}
)
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60, least=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# CACHES
# ------------------------------------------------------------------------------
# django-redis owns the connections; users/cache/ borrows its raw client for
# the user hashes. One server, a Redis Cluster or a Sentinel-managed primary,
# as the environment says (config/redis.py).
CACHES = {"default": cache_from_env(env)}

# The user cache. users/conf.py holds every key's meaning, default and valid
# values, and checks them at start; a key is set here, from its variable, only
# when the variable is set (to anything, empty included), so that each default
# is written once.
USERS_CACHE = {
    key: env(variable)
    for key, variable in {
        "KEY_PREFIX": "CACHE_KEY_PREFIX",
        "TTL": "USER_CACHE_TTL",
        "NEGATIVE_TTL": "USER_CACHE_NEGATIVE_TTL",
        "TOKEN_TTL": "TOKEN_CACHE_TTL",
        "UPDATE_STRATEGY": "USER_CACHE_UPDATE_STRATEGY",
        "NEAR_CACHE_SIZE": "NEAR_CACHE_SIZE",
        "NEAR_CACHE_MAX_AGE": "NEAR_CACHE_MAX_AGE",
        "RATE_SYNC_MS": "RATE_SYNC_MS",
    }.items()
    if variable in env.ENVIRON
}

# APPS
# ------------------------------------------------------------------------------
DJANGO_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
THIRD_PARTY_APPS = [
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
]
LOCAL_APPS = [
    "users",
    # The project's own system checks (config/checks.py).
    "config",
]
INSTALLED_APPS = DJANGO_APPS + THIRD_PARTY_APPS + LOCAL_APPS

# AUTHENTICATION
# ------------------------------------------------------------------------------
AUTH_USER_MODEL = "users.User"
# The login limits first: they refuse an attempt before any password is hashed.
AUTHENTICATION_BACKENDS = [
    "users.logins.guard.LoginLimitBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# After /api-auth/login/ without ?next=, the browsable API (Django's default,
# /accounts/profile/, is not a page here).
LOGIN_REDIRECT_URL = "user-list"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# MIDDLEWARE
# ------------------------------------------------------------------------------
MIDDLEWARE = [
    # The project's middleware is users/middleware.py.
    # /healthz, /readyz and /metrics, answered before the host check (users/probes.py).
    "users.middleware.ProbesMiddleware",
    # The request id for the logs, and the request duration for the metrics.
    "users.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every response (CONTENT_SECURITY_POLICY below).
    "users.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Sessions, request.user and messages for the admin and the browsable API;
    # token-authenticated API requests skip them (users/middleware.py).
    "users.middleware.BrowserSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "users.middleware.BrowserAuthenticationMiddleware",
    "users.middleware.BrowserMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Answers a login the limits refused with a 429 (users/logins/).
    "users.middleware.LoginLimitMiddleware",
]
# CSRF failures (the login forms, the admin's) answer JSON, as every error does.
CSRF_FAILURE_VIEW = "config.exceptions.json_csrf_failure"
# /api/user and /api/user/ are both served without a redirect.
APPEND_SLASH = False
# Where a request with a DRF token needs no session middleware (the API, and the
# benchmark's floor endpoint, which must cost what the API costs).
TOKEN_API_PATH_PREFIXES = ("/api/", "/bench/")

# URLS, TEMPLATES, STATIC
# ------------------------------------------------------------------------------
ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Ahead of the apps' own: the browsable API's page without inline script.
        "DIRS": [BASE_DIR / "config" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
STATIC_URL = "static/"
# Where collectstatic writes, and the production settings read the manifest from.
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Writes (PUT, PATCH, DELETE) without If-Match answer 428 when this is on.
REQUIRE_IF_MATCH = env.bool("REQUIRE_IF_MATCH", default=False)
# Who sees X-Cache (HIT, MISS, BYPASS) on cached reads: "staff", "all" or "off". A
# hit tells that someone read the same user, name or e-mail a short while ago.
CACHE_STATUS_HEADER = env("CACHE_STATUS_HEADER", default="staff")
if CACHE_STATUS_HEADER not in ("staff", "all", "off"):
    raise ImproperlyConfigured(
        f"CACHE_STATUS_HEADER is {CACHE_STATUS_HEADER!r}; use 'staff', 'all' or 'off'."
    )

# Request bodies: the API takes small JSON documents only.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BODY_BYTES", default=64 * 1024, least=1)

# DJANGO REST FRAMEWORK
# ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "users.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["config.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "EXCEPTION_HANDLER": "users.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "users.throttling.AnonRateThrottle",
        "users.throttling.UserRateThrottle",
    ],
    # "off" turns a scope off. auth_failure caps failed token checks per address;
    # password_hash the writes that hash a password, per client and per account
    # (counted after the permissions: users.api, users.admin).
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.rate("THROTTLE_RATE_ANON", default="60/min"),
        "user": env.rate("THROTTLE_RATE_USER", default="12000/min"),
        "auth_failure": env.rate("THROTTLE_RATE_AUTH_FAILURE", default="30/min"),
        "password_hash": env.rate("THROTTLE_RATE_PASSWORD_HASH", default="20/min"),
    },
    # Client addresses for throttling come from X-Forwarded-For behind this many proxies.
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0, least=0),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# CONTENT SECURITY POLICY (django-csp)
# ------------------------------------------------------------------------------
# The admin, the browsable API and Swagger UI load everything from the service
# itself and run no inline script; nothing may frame them, and a page cannot
# change its base URL or post a form elsewhere. Inline styles are allowed: the
# browsable API's and Swagger UI's markup carries style attributes and elements,
# and a style runs no code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        # Swagger UI's and the admin's icons, some as data: URLs.
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

# OPENAPI
# ------------------------------------------------------------------------------
# The schema at /api/schema/ and Swagger UI at /api/docs/, served with its own
# copy of Swagger UI (drf-spectacular-sidecar): no CDN, so it works offline too.
SPECTACULAR_SETTINGS = {
    "TITLE": "User service API",
    "DESCRIPTION": (
        "Users in MySQL, read through a Redis cache. `X-Cache` tells where a read was "
        "answered from. Authenticate with `Authorization: Token <key>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Separate request and response components, so write-only fields (password)
    # appear only in requests and read-only ones (id) only in responses.
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # The description names every operation and parameter: for authenticated
    # callers unless API_DOCS_PUBLIC says otherwise.
    "SERVE_PERMISSIONS": [
        "rest_framework.permissions.AllowAny"
        if env.bool("API_DOCS_PUBLIC", default=False)
        else "rest_framework.permissions.IsAuthenticated"
    ],
}

# LOGIN LIMITS (users/logins/)
# ------------------------------------------------------------------------------
# At /admin/login/ and /api-auth/login/, per account and per client address:
# this many failures lock for LOGIN_LOCKOUT_MINUTES after the last of them, and
# attempts, successful or not (each hashes a password), are limited to a rate:
# N/s, N/min, N/hour or N/day.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=10, least=1)
LOGIN_LOCKOUT_MINUTES = env.int("LOGIN_LOCKOUT_MINUTES", default=15, least=1)
LOGIN_RATE_ACCOUNT = env("LOGIN_RATE_ACCOUNT", default="10/min")
LOGIN_RATE_ADDRESS = env("LOGIN_RATE_ADDRESS", default="30/min")
# Every per-address limit (these and the API's rate limits) counts an IPv6
# client by its network of this many bits.
CLIENT_IPV6_PREFIX = env.int("CLIENT_IPV6_PREFIX", default=64, least=1, most=128)

# OPERATOR ENDPOINTS (users/probes.py)
# ------------------------------------------------------------------------------
# /metrics and the details of /readyz answer requests that come straight from
# these networks (not through a proxy, which makes every client look local), or
# that carry "Authorization: Bearer <METRICS_TOKEN>".
try:
    METRICS_ALLOWED_NETWORKS = [
        ipaddress.ip_network(network)
        for network in env.list("METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"])
    ]
except ValueError as exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {exc}") from None
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# BINARY LOG FOLLOWER (users/binlog/; python manage.py follow_binlog)
# ------------------------------------------------------------------------------
# Where the follower, a process of its own, serves its Prometheus metrics.
FOLLOWER_METRICS_BIND = env("FOLLOWER_METRICS_BIND", default="127.0.0.1:9108")

# BENCHMARKS
# ------------------------------------------------------------------------------
# Mounts the benchmark-only endpoints (bench/urls.py) for ./scripts/bench, which sets
# it on the gunicorn it starts; a deployed service never does.
BENCHMARK_ENDPOINTS = env.bool("BENCHMARK_ENDPOINTS", default=False)

# LOGGING
# ------------------------------------------------------------------------------
# LOG_FORMAT=json writes one JSON object a line; every record carries the request id.
LOG_FORMAT = env("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT is {LOG_FORMAT!r}; use 'plain' or 'json'.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "config.logs.RequestIdFilter"},
        "disallowed_host": {"()": "config.logs.DisallowedHostFilter"},
    },
    "formatters": {
        # Control characters a client sent are escaped: one record, one line.
        "plain": {"()": "config.logs.PlainFormatter"},
        "json": {"()": "config.logs.JsonFormatter"},
    },
    "handlers": {
        # To stderr, formatted and written on a thread of its own (config/logs.py).
        "console": {
            "()": "config.logs.BackgroundStreamHandler",
            "log_format": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's own handlers would write its records a second time, in plain text.
        "django": {"handlers": []},
        # A bad Host header: once a host and minute, without the traceback.
        "django.security.DisallowedHost": {"filters": ["disallowed_host"]},
    },
}

"""Start-up checks for mistakes that would otherwise show only request by request.

They run with Django's own checks: in ``manage.py check`` and ``migrate``, and in
every gunicorn worker before it serves (config/wsgi.py), so a server that would
answer 500s, or report one worker's metrics as the whole server's, stops at
start with the reason.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.contrib.staticfiles.storage import ManifestFilesMixin, staticfiles_storage
from django.core.checks import Error, register
from django.utils.module_loading import import_string


@register()
def static_files_manifest_check(app_configs, **kwargs) -> list[Error]:
    """Without DEBUG, a manifest storage resolves every static file's URL through
    the manifest ``collectstatic`` writes: without it, every page of the admin, the
    browsable API and Swagger UI is a 500. (Not tagged ``staticfiles``: collectstatic
    runs those checks first, and it is what writes the manifest.)"""
    if settings.DEBUG or not isinstance(staticfiles_storage, ManifestFilesMixin):
        return []
    manifest = staticfiles_storage.manifest_name
    if staticfiles_storage.exists(manifest):
        return []
    return [
        Error(
            f"No static files manifest at {staticfiles_storage.path(manifest)}:"
            " the admin, the browsable API and Swagger UI would answer 500.",
            hint="Run 'python manage.py collectstatic --no-input' before starting the service.",
            id="usersvc.E001",
        )
    ]


@register()
def metrics_shared_by_workers_check(app_configs, **kwargs) -> list[Error]:
    """Under gunicorn each worker process counts in a registry of its own unless it
    writes to the folder PROMETHEUS_MULTIPROC_DIR names, and /metrics would report
    whichever worker answers the scrape. Only a worker that gunicorn.conf.py's
    master marked keeps that variable (config/metrics_writers.py): gunicorn started
    with another configuration, or with --preload (the application loaded in the
    master, before it makes the folder), has none."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or not _in_gunicorn():
        return []
    workers = _gunicorn_workers()
    if workers < 2:
        return []
    return [
        Error(
            f"gunicorn runs {workers} workers without PROMETHEUS_MULTIPROC_DIR: each would"
            " keep metrics of its own, and /metrics would show one worker's.",
            hint="Start gunicorn with the project's gunicorn.conf.py (it reads it from the"
            " folder it starts in; elsewhere, name it with -c), without --preload: it"
            " gives its workers a folder they share.",
            id="usersvc.E002",
        )
    ]


# Backends that keep values in the process only: nobody else can write what they read.
_IN_PROCESS_CACHES = (
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
)
_DATA_ONLY_SERIALIZERS = (
    "django_redis.serializers.json.JSONSerializer",
    "django_redis.serializers.msgpack.MSGPackSerializer",
)
_PICKLE_SERIALIZER = "django_redis.serializers.pickle.PickleSerializer"


@register()
def cache_serializer_check(app_configs, **kwargs) -> list[Error]:
    """No cache alias may read values back with pickle: a pickle runs code of its
    author's choosing when it is loaded, so whoever could write to the store (a
    Redis ACL user, another application) would run code in the service. Django's
    own Redis, Memcached, database and file caches always pickle; django-redis
    does unless its ``SERIALIZER`` option names a data-only serializer (JSON or
    msgpack). Values kept in the process (local memory, dummy) are allowed."""
    from django_redis.cache import RedisCache

    errors = []
    for alias, configured in settings.CACHES.items():
        backend = configured["BACKEND"]
        if backend in _IN_PROCESS_CACHES:
            continue
        if issubclass(import_string(backend), RedisCache):
            serializer = configured.get("OPTIONS", {}).get("SERIALIZER", _PICKLE_SERIALIZER)
            if _is_data_only(serializer):
                continue
            reason = f"its serializer {serializer} is not a data-only one"
        else:
            reason = f"{backend} stores values with pickle"
        errors.append(
            Error(
                f"The cache {alias!r} would read values back with pickle ({reason}): whoever"
                " can write to its store could run code in the service.",
                hint="Use config.redis_cache.RedisCache with config.redis_cache.JSONSerializer"
                " (config/redis.py builds it), or django-redis with a SERIALIZER of"
                f" {' or '.join(_DATA_ONLY_SERIALIZERS)}.",
                obj=alias,
                id="usersvc.E003",
            )
        )
    return errors


def _is_data_only(serializer: str) -> bool:
    """A serializer that is, or extends, one of django-redis' data-only ones
    (without importing msgpack, which is an optional dependency)."""
    if serializer in _DATA_ONLY_SERIALIZERS:
        return True
    bases = {f"{base.__module__}.{base.__qualname__}" for base in import_string(serializer).__mro__}
    return bool(bases & set(_DATA_ONLY_SERIALIZERS))


def _in_gunicorn() -> bool:
    # gunicorn's master sets it, and its workers inherit it.
    return os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/")


def _gunicorn_workers() -> int:
    """The worker count gunicorn's master settled on. gunicorn does not hand its
    configuration to the application, but a worker inherits everything it was
    made from (the command line, GUNICORN_CMD_ARGS, the configuration file, the
    environment), and gunicorn's own loader reads them again the same way."""
    from gunicorn.app.wsgiapp import WSGIApplication

    return WSGIApplication().cfg.workers

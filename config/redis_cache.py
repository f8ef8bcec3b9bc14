"""Django's cache on Redis, reading back data only.

django-redis stores a value as its serializer writes it, and its default
serializer is pickle: whoever can write a key that Django's cache reads (a
library's counter, a cached session) would run code in the service when it is
read. Here values are JSON (django-redis stores integers as they are, so that
``incr`` is Redis's ``INCRBY``), and a value that is not JSON (a pickle, a
truncated write, anything else planted) is a miss: ``get`` answers its default
and deletes it, so that the next ``add`` writes afresh; ``incr`` of it raises
``ValueError``, as of a missing key. ``config.checks`` refuses any cache alias
that would read pickle.

JSON keeps the types it has: a ``datetime``, a ``Decimal`` or a ``UUID`` is stored
as a string and read back as one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django_redis.cache import RedisCache as DjangoRedisCache
from django_redis.serializers.json import JSONSerializer as DjangoRedisJSONSerializer

logger = logging.getLogger(__name__)

_MISSING = object()


class UndecodableValue(ValueError):
    """A value in the cache that is not JSON."""


class JSONSerializer(DjangoRedisJSONSerializer):
    def loads(self, value: bytes) -> Any:
        try:
            return super().loads(value)
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; deep nesting
        # exhausts the parser's recursion.
        except (ValueError, RecursionError) as exc:
            raise UndecodableValue(f"{len(value)} bytes that are not JSON") from exc


class RedisCache(DjangoRedisCache):
    """django-redis' cache, where a value that does not decode reads as missing."""

    def get(self, key: str, default: Any = None, version: int | None = None, client=None) -> Any:
        try:
            return super().get(key, default, version, client)
        except UndecodableValue as exc:
            logger.warning("cache key %r: %s, deleted and read as a miss", key, exc)
            self.delete(key, version=version)
            return default

    def get_many(self, keys: Iterable[str], version: int | None = None, client=None) -> dict:
        keys = list(keys)
        try:
            return super().get_many(keys, version=version, client=client)
        except UndecodableValue:
            found = {key: self.get(key, _MISSING, version) for key in keys}
            return {key: value for key, value in found.items() if value is not _MISSING}

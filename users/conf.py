"""The user cache's settings, read from ``settings.USERS_CACHE`` with defaults.

Shaped like DRF's ``api_settings``: one lazy object, attribute access, documented
defaults, and a reload when a test overrides ``USERS_CACHE``.
"""

import re
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Every Redis key this project writes starts with this prefix.
    "KEY_PREFIX": "usersvc",
    # Seconds a cached user lives.
    "TTL": 3600,
    # Each entry's TTL is shortened by a random fraction up to this, so users warmed
    # together do not all expire together.
    "TTL_JITTER": 0.1,
    # Seconds an id found in neither store is remembered as absent.
    "NEGATIVE_TTL": 30,
    # Seconds a cached token lookup lives (deleting the token clears it at once).
    "TOKEN_TTL": 300,
    # Milliseconds a reader holds the right to fill a missing entry (its lease).
    "LEASE_TTL_MS": 2000,
    # Milliseconds a reader waits for another reader's fill before it reads MySQL itself.
    "LEASE_WAIT_MS": 200,
    # Milliseconds between two looks at an entry another reader is filling.
    "LEASE_POLL_MS": 5,
    # After a write commits: "invalidate" deletes the entry (the next read refills
    # it), "write-through" stores the new state at once (docs/design.md).
    "UPDATE_STRATEGY": "invalidate",
    # Consecutive Redis failures that open the circuit breaker, and how long it then
    # stays open (every cache call fails fast and reads bypass the cache).
    "BREAKER_FAILURES": 3,
    "BREAKER_COOLDOWN_MS": 500,
    # Milliseconds between two attempts to replay invalidations Redis missed.
    "OUTBOX_RETRY_MS": 100,
    # Seconds between two sweeps of the outbox by every process (0: only after a
    # failure of its own), which replays what a crashed process left behind.
    "OUTBOX_SWEEP_SECONDS": 5,
    # The near cache (users/cache/near.py): user entries and token lookups held in
    # each process, kept coherent by Redis's invalidation messages. Its size in
    # entries (0 turns it off), and the most seconds an entry is held.
    "NEAR_CACHE_SIZE": 10_000,
    "NEAR_CACHE_MAX_AGE": 300,
    # Milliseconds between two additions of the rate-limit counts a process took
    # on near-cache hits to their counters in Redis.
    "RATE_SYNC_MS": 100,
}

UPDATE_STRATEGIES = ("invalidate", "write-through")
# A key prefix goes into SCAN patterns, where * ? [ ] \ are wildcards that would
# reach other applications' keys, and into Redis Cluster hash tags, where { }
# would move entries to the wrong slot: letters, digits and . _ : - only.
_KEY_PREFIX_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


class UserCacheSettings:
    def __init__(self, user_settings: dict[str, Any] | None = None) -> None:
        self._user_settings = user_settings

    @property
    def user_settings(self) -> dict[str, Any]:
        if self._user_settings is None:
            from django.conf import settings

            self._user_settings = getattr(settings, "USERS_CACHE", {})
            unknown = set(self._user_settings) - set(DEFAULTS)
            if unknown:
                raise ImproperlyConfigured(f"Unknown USERS_CACHE settings: {sorted(unknown)}")
            strategy = self._user_settings.get("UPDATE_STRATEGY", DEFAULTS["UPDATE_STRATEGY"])
            if strategy not in UPDATE_STRATEGIES:
                raise ImproperlyConfigured(
                    f"USER_CACHE_UPDATE_STRATEGY (USERS_CACHE['UPDATE_STRATEGY']) is "
                    f"{strategy!r}; use one of {', '.join(UPDATE_STRATEGIES)}."
                )
            prefix = self._user_settings.get("KEY_PREFIX", DEFAULTS["KEY_PREFIX"])
            if not isinstance(prefix, str) or not _KEY_PREFIX_SHAPE.fullmatch(prefix):
                raise ImproperlyConfigured(
                    f"CACHE_KEY_PREFIX (USERS_CACHE['KEY_PREFIX']) is {prefix!r}: use 1 to 64 "
                    "letters, digits, '.', '_', ':' or '-', starting with a letter or digit."
                )
        return self._user_settings

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Invalid USERS_CACHE setting: {name!r}")
        value = self.user_settings.get(name, DEFAULTS[name])
        setattr(self, name, value)
        return value

    def reload(self) -> None:
        for name in DEFAULTS:
            self.__dict__.pop(name, None)
        self._user_settings = None


user_cache_settings = UserCacheSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "USERS_CACHE":
        user_cache_settings.reload()


setting_changed.connect(_reload)

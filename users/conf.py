"""The user cache's settings, read from ``settings.USERS_CACHE`` with defaults.

Shaped like DRF's ``api_settings``: one lazy object, attribute access, documented
defaults, and a reload when a test overrides ``USERS_CACHE``. This module is the
one place the defaults are written: the settings set a key only when its
environment variable is set (``VARIABLES``). Every value is checked when the
settings are first read, which ``UsersConfig.ready`` does at every start: a
value the cache cannot use stops the process with ``ImproperlyConfigured``.
"""

import contextlib
import dataclasses
import math
import re
from collections.abc import Mapping
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

# The environment variable config/settings/base.py sets each of these keys from,
# when it is set (config/ cannot import this module: it stays below the apps).
# Named in errors; tests/operations/test_docs.py holds the two lists together.
VARIABLES = {
    "KEY_PREFIX": "CACHE_KEY_PREFIX",
    "TTL": "USER_CACHE_TTL",
    "NEGATIVE_TTL": "USER_CACHE_NEGATIVE_TTL",
    "TOKEN_TTL": "TOKEN_CACHE_TTL",
    "UPDATE_STRATEGY": "USER_CACHE_UPDATE_STRATEGY",
    "NEAR_CACHE_SIZE": "NEAR_CACHE_SIZE",
    "NEAR_CACHE_MAX_AGE": "NEAR_CACHE_MAX_AGE",
    "RATE_SYNC_MS": "RATE_SYNC_MS",
}

UPDATE_STRATEGIES = ("invalidate", "write-through")
# A key prefix goes into SCAN patterns, where * ? [ ] \ are wildcards that would
# reach other applications' keys, and into Redis Cluster hash tags, where { }
# would move entries to the wrong slot: letters, digits and . _ : - only.
_KEY_PREFIX_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


@dataclasses.dataclass(frozen=True, slots=True)
class _Number:
    """What a numeric setting may be: at least ``least`` and, when ``below`` is
    given, less than it; ``whole`` when it is a count, a size, or a time that
    Redis takes as a whole number (a TTL, a lease's milliseconds). A string (as
    the environment gives values) is read as a number first."""

    least: float
    below: float | None = None
    whole: bool = True

    def checked(self, name: str, value: Any) -> int | float:
        number = value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = _parsed(value, whole=self.whole)
        allowed = int if self.whole else int | float
        if (
            isinstance(number, bool)
            or not isinstance(number, allowed)
            or not math.isfinite(number)
            or number < self.least
            or (self.below is not None and number >= self.below)
        ):
            raise ImproperlyConfigured(f"{_named(name)} is {value!r}: use {self}.")
        return number

    def __str__(self) -> str:
        what = "a whole number" if self.whole else "a number"
        if self.below is None:
            return f"{what} of {self.least:g} or more"
        return f"{what} from {self.least:g} up to, not including, {self.below:g}"


def _parsed(text: str, *, whole: bool) -> int | float:
    """A number as the environment writes it: a whole number stays an int."""
    try:
        return int(text)
    except ValueError:
        if whole:
            raise
        return float(text)


# Every numeric key's bounds: the values whose use would fail (a TTL of 0 is an
# error in Redis), spin (a poll every 0 ms) or mean nothing (a negative size).
_NUMBERS = {
    "TTL": _Number(1),
    "TTL_JITTER": _Number(0, below=1, whole=False),
    "NEGATIVE_TTL": _Number(1),
    "TOKEN_TTL": _Number(1),
    "LEASE_TTL_MS": _Number(1),
    "LEASE_WAIT_MS": _Number(0, whole=False),
    "LEASE_POLL_MS": _Number(1, whole=False),
    "BREAKER_FAILURES": _Number(1),
    "BREAKER_COOLDOWN_MS": _Number(0, whole=False),
    "OUTBOX_RETRY_MS": _Number(1, whole=False),
    "OUTBOX_SWEEP_SECONDS": _Number(0, whole=False),
    "NEAR_CACHE_SIZE": _Number(0),
    "NEAR_CACHE_MAX_AGE": _Number(1, whole=False),
    "RATE_SYNC_MS": _Number(1, whole=False),
}


def _named(name: str) -> str:
    """A key as the operator set it: its variable, where it has one, and the key."""
    key = f"USERS_CACHE[{name!r}]"
    return f"{VARIABLES[name]} ({key})" if name in VARIABLES else key


def checked(user_settings: Mapping[str, Any]) -> dict[str, Any]:
    """``USERS_CACHE`` as given, each value checked (numbers read from strings);
    raises ``ImproperlyConfigured`` at the first key that is unknown or has a
    value the cache cannot use."""
    unknown = set(user_settings) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(f"Unknown USERS_CACHE settings: {sorted(unknown)}")
    values = dict(user_settings)
    for name, number in _NUMBERS.items():
        if name in values:
            values[name] = number.checked(name, values[name])
    strategy = values.get("UPDATE_STRATEGY", DEFAULTS["UPDATE_STRATEGY"])
    if strategy not in UPDATE_STRATEGIES:
        raise ImproperlyConfigured(
            f"{_named('UPDATE_STRATEGY')} is {strategy!r}; use one of "
            f"{', '.join(UPDATE_STRATEGIES)}."
        )
    prefix = values.get("KEY_PREFIX", DEFAULTS["KEY_PREFIX"])
    if not isinstance(prefix, str) or not _KEY_PREFIX_SHAPE.fullmatch(prefix):
        raise ImproperlyConfigured(
            f"{_named('KEY_PREFIX')} is {prefix!r}: use 1 to 64 letters, digits, '.', '_', "
            "':' or '-', starting with a letter or digit."
        )
    return values


class UserCacheSettings:
    def __init__(self, user_settings: dict[str, Any] | None = None) -> None:
        self._user_settings = None if user_settings is None else checked(user_settings)

    @property
    def user_settings(self) -> dict[str, Any]:
        if self._user_settings is None:
            from django.conf import settings

            self._user_settings = checked(getattr(settings, "USERS_CACHE", {}))
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

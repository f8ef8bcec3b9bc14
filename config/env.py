"""The environment as the settings read it: django-environ's ``Env``, whose parse
errors stop the start as every other configuration error does.

django-environ casts a variable's text with the type asked for (``env.int``) or
the default's (``env("X", default=2)``), and a text that is no such value raises
the cast's ``ValueError`` (``invalid literal for int() with base 10: '1k'``),
which names neither the variable nor what to give it. A number it reads is a
number of any size, so ``env.int`` takes the range the setting allows too (a
negative count of proxies or a timeout of 0 would be taken silently and act
strangely later), and ``env.rate`` a rate limit's form.
"""

from __future__ import annotations

import re

import environ
from django.core.exceptions import ImproperlyConfigured

# DRF's rate form (it reads the period's first letter), or "off" for no limit.
_RATE = re.compile(r"(?:[1-9][0-9]*/(?:s|sec|second|m|min|minute|h|hour|d|day))|off")


class Env(environ.Env):
    def get_value(
        self, var: str, cast=None, default=environ.Env.NOTSET, parse_default: bool = False
    ) -> object:
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{var} is {self.ENVIRON.get(var)!r}: not a value of its type ({exc})."
            ) from None

    def int(
        self,
        var: str,
        default=environ.Env.NOTSET,
        *,
        least: int | None = None,
        most: int | None = None,
    ) -> int:
        """The variable as a whole number, from ``least`` to ``most`` when given."""
        return in_range(var, super().int(var, default=default), least=least, most=most)

    def rate(self, var: str, default: str) -> str | None:
        """A rate limit: ``N/s``, ``N/min``, ``N/hour`` or ``N/day`` (N at least 1),
        or ``off`` (None) for none."""
        value = self.str(var, default=default)
        if not _RATE.fullmatch(value):
            raise ImproperlyConfigured(
                f"{var} is {value!r}: use N/s, N/min, N/hour or N/day (N at least 1), or off."
            )
        return None if value == "off" else value


def in_range(var: str, value: int, *, least: int | None = None, most: int | None = None) -> int:
    """``value``, read from ``var``, when it is from ``least`` to ``most`` (each when
    given); else ``ImproperlyConfigured`` naming the variable and the range. Also
    for a caller given another ``environ.Env`` than this module's."""
    if (least is None or value >= least) and (most is None or value <= most):
        return value
    if most is None:
        allowed = f"a whole number of {least} or more"
    elif least is None:
        allowed = f"a whole number of {most} or less"
    else:
        allowed = f"a whole number from {least} to {most}"
    raise ImproperlyConfigured(f"{var} is {str(value)!r}: use {allowed}.")

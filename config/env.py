"""The environment as the settings read it: django-environ's ``Env``, whose parse
errors stop the start as every other configuration error does.

django-environ casts a variable's text with the type asked for (``env.int``) or
the default's (``env("X", default=2)``), and a text that is no such value raises
the cast's ``ValueError`` (``invalid literal for int() with base 10: '1k'``),
which names neither the variable nor what to give it.
"""

from __future__ import annotations

import environ
from django.core.exceptions import ImproperlyConfigured


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

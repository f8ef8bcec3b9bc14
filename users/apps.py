from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "users"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The modules that register the cached kinds (users.cache.kinds).
        from . import invalidation, logins, lookups, reads, tokens  # noqa: F401
        from .cache import kinds
        from .conf import user_cache_settings

        # Read (and so checked) at every start, whatever the entry point: a bad
        # key prefix fails here rather than in the first flush.
        user_cache_settings.user_settings  # noqa: B018
        invalidation.connect()
        kinds.on_change(invalidation.connect)
        logins.connect()

from django.apps import AppConfig


class UsersConfig(AppConfig):
    name = "users"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import invalidation, logins
        from .conf import user_cache_settings

        # Read (and so checked) at every start, whatever the entry point: a bad
        # key prefix fails here rather than in the first flush.
        user_cache_settings.user_settings  # noqa: B018
        invalidation.connect()
        logins.connect()

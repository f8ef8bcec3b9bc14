from django.apps import AppConfig


class ServiceConfig(AppConfig):
    """The project's own system checks (config/checks.py)."""

    name = "config"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)

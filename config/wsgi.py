"""WSGI entry point for gunicorn.

Each worker runs Django's system checks, the project's own (config/checks.py)
included, before it serves: on an error it stops with the reason, and gunicorn
stops with it ("Worker failed to boot"), rather than answering 500s.
"""

import os

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

application = get_wsgi_application()

_errors = [message for message in checks.run_checks() if message.is_serious()]
if _errors:
    raise ImproperlyConfigured(
        "System check failed:\n" + "\n".join(str(error) for error in _errors)
    )

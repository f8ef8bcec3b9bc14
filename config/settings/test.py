"""Settings for the test suite: the real MySQL and Redis, with keys kept apart.

Every test run writes its Redis keys under its own prefix, so a run never reads
another's entries and the session teardown removes exactly what it wrote.
"""

import hashlib
import uuid

from .base import *  # noqa: F403
from .base import BASE_DIR, CACHES, DATABASES, MIDDLEWARE, USERS_CACHE

SECRET_KEY = "test-only-not-a-secret"
# Tests read X-Cache to see where an answer came from, whoever asks;
# tests/api/test_api.py holds the default ("staff") on its own.
CACHE_STATUS_HEADER = "all"
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

TEST_RUN_PREFIX = f"usersvc-test-{uuid.uuid4().hex[:12]}"
CACHES["default"]["KEY_PREFIX"] = TEST_RUN_PREFIX
# A loaded CI machine can take longer than production's 100 ms to answer; a test
# that wants a timeout (tests/faults/test_redis_outage.py) sets its own.
CACHES["default"]["OPTIONS"]["SOCKET_CONNECT_TIMEOUT"] = 2
CACHES["default"]["OPTIONS"]["SOCKET_TIMEOUT"] = 2
USERS_CACHE["KEY_PREFIX"] = TEST_RUN_PREFIX
# No periodic outbox sweep: a background thread replaying rows behind a test's
# back would make outage tests racy. Tests that need the sweep turn it on.
USERS_CACHE["OUTBOX_SWEEP_SECONDS"] = 0

# Static files come from the apps' folders: no collectstatic run, no manifest.
MIDDLEWARE = [name for name in MIDDLEWARE if not name.startswith("whitenoise.")]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# One test database per checkout: runs from different clones or worktrees share
# the MySQL server without dropping each other's database mid-run.
_CHECKOUT = hashlib.sha1(str(BASE_DIR).encode()).hexdigest()[:8]
DATABASES["default"]["TEST"]["NAME"] = f"test_{DATABASES['default']['NAME']}_{_CHECKOUT}"

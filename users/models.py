"""The user row in MySQL/TiDB, and the outbox that keeps Redis honest."""

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """The project's ``AUTH_USER_MODEL``.

    ``version`` grows on every write made through ``users.services`` (see
    ``services._next_version``); the cache compares versions so that an older
    state can never overwrite a newer one.
    """

    email = models.EmailField("email address", unique=True)
    updated_at = models.DateTimeField(auto_now=True)
    version = models.PositiveBigIntegerField(default=1)

    REQUIRED_FIELDS = ["email"]

    class Meta:
        db_table = "users_user"
        verbose_name = "user"
        verbose_name_plural = "users"

    def __str__(self) -> str:
        return self.username


class CacheInvalidation(models.Model):
    """Redis keys to invalidate, written in the same transaction as the change.

    After the commit the keys are dropped from Redis and the row deleted. If
    Redis did not answer, the row stays and is replayed once Redis answers again
    (``users.outbox``), so an invalidation is never lost to an outage or a crash.
    """

    keys = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "users_cache_invalidation"

    def __str__(self) -> str:
        return f"invalidate {len(self.keys)} key(s) recorded {self.created_at:%Y-%m-%d %H:%M:%S}"

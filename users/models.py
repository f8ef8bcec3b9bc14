"""The user row in MySQL/TiDB, and the outbox that keeps Redis honest."""

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """The project's ``AUTH_USER_MODEL``.

    ``version`` grows by one on every write made through ``users.services``; the
    cache compares versions so that an older state can never overwrite a newer one.
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

"""The service's user table as a peer's own model would see it."""

from django.contrib.auth.validators import UnicodeUsernameValidator
from django.db import models
from django.utils import timezone


class PeerUser(models.Model):
    """``users_user``, unmanaged: the peers read and write the bench's rows, and never
    migrate. The columns a create must fill get the defaults a user without a
    usable password has."""

    username = models.CharField(
        max_length=150, unique=True, validators=[UnicodeUsernameValidator()]
    )
    email = models.EmailField(unique=True)
    first_name = models.CharField(max_length=150, blank=True)
    last_name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    password = models.CharField(max_length=128, default="!", editable=False)
    is_staff = models.BooleanField(default=False, editable=False)
    is_superuser = models.BooleanField(default=False, editable=False)
    version = models.PositiveBigIntegerField(default=1, editable=False)

    class Meta:
        managed = False
        db_table = "users_user"
        app_label = "peers"

    def __str__(self) -> str:
        return self.username

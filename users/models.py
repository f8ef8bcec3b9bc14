"""The user row in MySQL/TiDB, and the outbox that keeps Redis honest."""

import functools
import operator
import time

from django.apps import apps
from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models
from django.db.models import Q

from . import identity

LOOKALIKE_MESSAGE = "A user with a username that looks like this one already exists."
# The keys of a username's looks (users.identity.username_skeletons), in that order,
# and the unique indexes that hold them.
SKELETON_FIELDS = ("username_skeleton", "username_folded_skeleton", "username_upper_skeleton")
SKELETON_INDEXES = {field: f"users_user_{field}_uniq" for field in SKELETON_FIELDS}


class UserManager(DjangoUserManager):
    @classmethod
    def normalize_email(cls, email: str | None) -> str:
        """Every path that makes or cleans a user (``create_user``, the admin's forms,
        ``createsuperuser``, the services) goes through here: ``users.identity``."""
        return identity.normalize_email(email or "")

    def bulk_create(self, objs, *args, **kwargs) -> list:
        """Sets each user's skeletons first, as ``User.save`` does."""
        users = list(objs)
        for user in users:
            set_skeletons(user)
        return super().bulk_create(users, *args, **kwargs)


def next_version(current: int) -> int:
    """The version a save gives the row: above the current one, and at least the
    current time in microseconds.

    Counting alone would restart at 1 when a deleted id is created again; the
    clock keeps versions growing across a delete and re-create. Under the row
    lock the services hold, ``current + 1`` keeps them growing whatever the
    clocks of different hosts say.
    """
    return max(current + 1, time.time_ns() // 1000)


def kept_apart(skeleton: str, user_id: int) -> str:
    """The key stored for a user whose name already looked like an earlier user's
    when look-alikes began to be refused (``users/migrations/0005``): the skeleton
    made unique by the user's id ("#" is in no skeleton of a valid username). The
    user keeps it while its name keeps the same skeleton, as any user may take a
    look-alike of its own name."""
    suffix = f"#{user_id}"
    return skeleton[: identity.SKELETON_LENGTH - len(suffix)] + suffix


def stored_skeletons(
    user: models.Model, fields: tuple[str, ...] = SKELETON_FIELDS
) -> dict[str, str]:
    """What a save stores for ``user``'s name (a ``User``, or a migration's
    historical one, which has the first ``fields``): its skeletons, or those it has
    where it is kept apart."""
    stored = {}
    keys = identity.username_skeletons(user.username)
    for field, key in zip(fields, keys[: len(fields)], strict=True):
        current = getattr(user, field, None)
        kept = user.pk is not None and current == kept_apart(key, user.pk)
        stored[field] = current if kept else key
    return stored


def set_skeletons(user: models.Model, fields: tuple[str, ...] = SKELETON_FIELDS) -> None:
    for field, key in stored_skeletons(user, fields).items():
        setattr(user, field, key)


def _violated_key(error: IntegrityError) -> str:
    """The unique key named by a duplicate-entry error: "... for key 'name'", the
    name prefixed by the table's on MySQL 8 and TiDB."""
    message = str(error.args[-1]) if error.args else ""
    return message.rpartition("for key '")[2].rstrip("'").rpartition(".")[2]


class User(AbstractUser):
    """The project's ``AUTH_USER_MODEL``.

    ``version`` grows on every save that changes a cached field, whoever saves
    (the services, the admin, ``changepassword``): it is the row's ETag and what
    tells a cached entry's age. Setting a password revokes the user's API tokens
    on save, as a new password ends the user's sessions, on every path: a token
    that leaked with the old password must not outlive it.

    The username's skeletons are computed on every save that writes the name, and
    unique indexes hold them: a name that looks like another's
    (``users.identity``) is refused by the database whichever path writes it, the
    second of two concurrent creates included, and a save that loses that way
    raises a ``ValidationError`` on the username (``createsuperuser`` shows it as
    its error). ``validate_unique`` checks the same before a save, for the
    admin's forms and ``full_clean``.
    """

    username = models.CharField(
        "username",
        max_length=150,
        unique=True,
        help_text="Required. 150 characters or fewer. Letters of one script, digits and "
        "@/./+/-/_ only.",
        validators=[UnicodeUsernameValidator(), identity.SingleScriptValidator()],
        error_messages={"unique": "A user with that username already exists."},
    )
    email = models.EmailField("email address", unique=True)
    # NULL for a row written by SQL, outside the ORM (another application, an old
    # release during a deploy): not computed, and many NULLs fit a unique index.
    username_skeleton = models.CharField(  # noqa: DJ001
        max_length=identity.SKELETON_LENGTH,
        null=True,
        editable=False,
        db_collation="utf8mb4_bin",
    )
    # Compared by the username's collation (users/migrations/0005).
    username_folded_skeleton = models.CharField(  # noqa: DJ001
        max_length=identity.SKELETON_LENGTH, null=True, editable=False
    )
    username_upper_skeleton = models.CharField(  # noqa: DJ001
        max_length=identity.SKELETON_LENGTH,
        null=True,
        editable=False,
        db_collation="utf8mb4_bin",
    )
    updated_at = models.DateTimeField(auto_now=True)
    version = models.PositiveBigIntegerField(default=1)

    objects = UserManager()

    REQUIRED_FIELDS = ["email"]
    # Saves limited to these fields (a login's last_login) change nothing cached.
    UNCACHED_FIELDS = frozenset({"last_login"})

    class Meta:
        db_table = "users_user"
        verbose_name = "user"
        verbose_name_plural = "users"
        constraints = [
            models.UniqueConstraint(fields=[field], name=name)
            for field, name in SKELETON_INDEXES.items()
        ]

    def __str__(self) -> str:
        return self.username

    def lookalikes(self) -> Q:
        """The users holding a key that saving this one would store: whose names look
        like its name, itself included."""
        return functools.reduce(
            operator.or_, (Q(**{field: key}) for field, key in stored_skeletons(self).items())
        )

    def validate_unique(self, exclude=None) -> None:
        """Django's checks, then a name that looks like another user's: an error on
        the username, unless it already has one (a name that is taken)."""
        errors = {}
        try:
            super().validate_unique(exclude)
        except ValidationError as exc:
            errors = exc.update_error_dict(errors)
        if "username" not in (exclude or ()) and "username" not in errors and self.username:
            others = User._default_manager.filter(self.lookalikes()).exclude(pk=self.pk)
            if others.exists():
                errors["username"] = [LOOKALIKE_MESSAGE]
        if errors:
            raise ValidationError(errors)

    @classmethod
    def from_db(cls, db, field_names, values):
        """Keeps the columns as loaded: a save's change then names the old values
        too (a renamed user's old username), whose cached entries it drops."""
        instance = super().from_db(db, field_names, values)
        instance._loaded_values = dict(zip(field_names, values, strict=True))
        return instance

    @classmethod
    def normalize_username(cls, username: str) -> str:
        return identity.normalize_username(username)

    def set_password(self, raw_password: str | None) -> None:
        super().set_password(raw_password)
        self._password_set = True

    def set_unusable_password(self) -> None:
        super().set_unusable_password()
        self._password_set = True

    def set_hashed_password(self, hashed: str, raw_password: str | None) -> None:
        """``set_password`` with the hash made beforehand (``make_password``), so that
        a write can hash before it opens its transaction and locks the row."""
        self.password = hashed
        self._password = raw_password
        self._password_set = True

    def _rehashed_on_check(self) -> bool:
        """Whether the password was set by Django's ``check_password``, which rehashes a
        correct password whose hasher settings changed (more iterations after an
        upgrade) and clears ``_password`` to say that this is no change: the first
        login after such an upgrade must not revoke the user's tokens."""
        return self._password is None and self.has_usable_password()

    def save(self, *args, **kwargs) -> None:
        update_fields = kwargs.get("update_fields")
        if update_fields is None or not set(update_fields) <= self.UNCACHED_FIELDS:
            self.version = next_version(self.version)
            if update_fields is not None:
                kwargs["update_fields"] = {*update_fields, "version"}
        if update_fields is None or "username" in update_fields:
            set_skeletons(self)
            if update_fields is not None:
                kwargs["update_fields"] = {*kwargs["update_fields"], *SKELETON_FIELDS}
        revoke_tokens = (
            getattr(self, "_password_set", False)
            and not self._state.adding
            and not self._rehashed_on_check()
        )
        try:
            super().save(*args, **kwargs)
        except IntegrityError as exc:
            if _violated_key(exc) in SKELETON_INDEXES.values():
                raise ValidationError({"username": [LOOKALIKE_MESSAGE]}) from exc
            raise
        self._password_set = False
        if revoke_tokens:
            apps.get_model("authtoken", "Token").objects.filter(user_id=self.pk).delete()


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


class BinlogPosition(models.Model):
    """How far ``follow_binlog`` has applied the server's binary log (one row).

    Written only after the invalidations up to ``log_file``:``log_pos`` reached
    Redis, so a follower that restarts, or crashed, resumes here and misses
    nothing; what it applies twice was a deletion, harmless. ``server`` names the
    server the file and offset belong to (its ``server_uuid``, MariaDB's
    ``server_uid``): another server's binary log has other files at those names.

    ``seconds_behind`` is the follower's lag when it saved the row, which a running
    follower does at least every ``users.binlog.server.REPORT_SECONDS``; None once
    it stopped. The admin's overview reads it: the follower's own metrics are
    served on its host, which the web process may not reach.
    """

    server = models.CharField(max_length=64)
    log_file = models.CharField(max_length=255)
    log_pos = models.PositiveBigIntegerField()
    seconds_behind = models.FloatField(null=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "users_binlog_position"

    def __str__(self) -> str:
        return f"{self.log_file}:{self.log_pos}"

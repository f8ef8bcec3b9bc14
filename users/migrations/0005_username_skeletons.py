# Keys of the usernames' looks (users.identity.username_skeletons), held by unique
# indexes so that the database refuses a look-alike name on every path.
#
# Existing users whose names already look alike all keep their names: the first of
# each group (the lowest id) keeps its key, the others get theirs made unique by
# their id (users.models.kept_apart). They then block no new name; the first one
# still does.

from django.db import migrations, models

import users.models

BATCH = 1000
# The keys this migration adds (later ones add more: users.models.SKELETON_FIELDS).
FIELDS = ("username_skeleton", "username_folded_skeleton")


def _fold_as_usernames(schema_editor) -> None:
    """The folded skeleton is compared as usernames are: by the collation migration
    0003 gave the username column, whichever this server had."""
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA ="
            " DATABASE() AND TABLE_NAME = 'users_user' AND COLUMN_NAME = 'username'"
        )
        (collation,) = cursor.fetchone()
    quote = schema_editor.quote_name
    schema_editor.execute(
        f"ALTER TABLE {quote('users_user')} MODIFY {quote('username_folded_skeleton')} "
        f"varchar(768) NULL COLLATE {collation}"
    )


def _fill(User) -> None:
    batch = []
    rows = User.objects.only("pk", "username", *FIELDS).order_by("pk")
    for user in rows.iterator(chunk_size=BATCH):
        users.models.set_skeletons(user, FIELDS)
        batch.append(user)
        if len(batch) == BATCH:
            User.objects.bulk_update(batch, FIELDS)
            batch = []
    User.objects.bulk_update(batch, FIELDS)


def _keep_apart_existing_lookalikes(User, schema_editor) -> None:
    """Groups by each key as its column compares (GROUP BY uses the collation), so
    what the unique index would refuse is exactly what is found here."""
    quote = schema_editor.quote_name
    for field in FIELDS:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT MIN({quote('id')}) FROM {quote('users_user')} WHERE {quote(field)}"
                f" IS NOT NULL GROUP BY {quote(field)} HAVING COUNT(*) > 1"
            )
            firsts = [first for (first,) in cursor.fetchall()]
        for first in firsts:
            key = User.objects.values_list(field, flat=True).get(pk=first)
            later = User.objects.filter(**{field: key}).exclude(pk=first)
            for user_id, own_key in later.values_list("pk", field):
                User.objects.filter(pk=user_id).update(
                    **{field: users.models.kept_apart(own_key, user_id)}
                )


def forwards(apps, schema_editor):
    User = apps.get_model("users", "User")
    _fold_as_usernames(schema_editor)
    _fill(User)
    _keep_apart_existing_lookalikes(User, schema_editor)


class Migration(migrations.Migration):

    dependencies = [
        ("users", "0004_binlog_position"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="username_skeleton",
            field=models.CharField(
                db_collation="utf8mb4_bin", editable=False, max_length=768, null=True
            ),
        ),
        migrations.AddField(
            model_name="user",
            name="username_folded_skeleton",
            field=models.CharField(editable=False, max_length=768, null=True),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop, atomic=False),
        migrations.AddConstraint(
            model_name="user",
            constraint=models.UniqueConstraint(
                fields=("username_skeleton",), name="users_user_username_skeleton_uniq"
            ),
        ),
        migrations.AddConstraint(
            model_name="user",
            constraint=models.UniqueConstraint(
                fields=("username_folded_skeleton",),
                name="users_user_username_folded_skeleton_uniq",
            ),
        ),
    ]

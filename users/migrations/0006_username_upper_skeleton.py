# The third key of a username's looks (users.identity.username_skeletons): the
# skeleton of the upper-cased name, compared exactly, so that "KATE" spelt in
# Greek capitals is refused beside "kate". Existing look-alikes by this key are kept
# apart as migration 0005 keeps them (users.models.kept_apart).

from django.db import migrations, models

import users.models

BATCH = 1000
FIELD = "username_upper_skeleton"
FIELDS = ("username_skeleton", "username_folded_skeleton", FIELD)


def forwards(apps, schema_editor):
    User = apps.get_model("users", "User")
    batch = []
    for user in User.objects.only("pk", "username", *FIELDS).order_by("pk").iterator(BATCH):
        setattr(user, FIELD, users.models.stored_skeletons(user, FIELDS)[FIELD])
        batch.append(user)
        if len(batch) == BATCH:
            User.objects.bulk_update(batch, [FIELD])
            batch = []
    User.objects.bulk_update(batch, [FIELD])
    quote = schema_editor.quote_name
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"SELECT MIN({quote('id')}) FROM {quote('users_user')} WHERE {quote(FIELD)}"
            f" IS NOT NULL GROUP BY {quote(FIELD)} HAVING COUNT(*) > 1"
        )
        firsts = [first for (first,) in cursor.fetchall()]
    for first in firsts:
        key = User.objects.values_list(FIELD, flat=True).get(pk=first)
        for user_id, own_key in (
            User.objects.filter(**{FIELD: key}).exclude(pk=first).values_list("pk", FIELD)
        ):
            User.objects.filter(pk=user_id).update(
                **{FIELD: users.models.kept_apart(own_key, user_id)}
            )


class Migration(migrations.Migration):

    dependencies = [
        ("users", "0005_username_skeletons"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name=FIELD,
            field=models.CharField(
                db_collation="utf8mb4_bin", editable=False, max_length=768, null=True
            ),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop, atomic=False),
        migrations.AddConstraint(
            model_name="user",
            constraint=models.UniqueConstraint(
                fields=(FIELD,), name="users_user_username_upper_skeleton_uniq"
            ),
        ),
    ]

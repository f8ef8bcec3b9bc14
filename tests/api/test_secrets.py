"""Neither a password hash nor a token ever reaches Redis or a response."""

from django.conf import settings
from rest_framework.authtoken.models import Token

from users.models import User


def test_no_password_hash_or_token_in_redis_or_responses(
    staff_client, staff, redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        created = staff_client.post(
            "/api/user",
            {"username": "secretive", "email": "s@example.com", "password": "a-Long-passphrase-7"},
            format="json",
        )
    user = User.objects.get(pk=created.json()["id"])
    responses = [
        created,
        staff_client.get(f"/api/user/{user.id}"),
        staff_client.get(f"/api/user/{user.id}"),
        staff_client.get(f"/api/user/{staff.id}"),
        staff_client.get("/api/user"),
    ]
    secrets = [user.password, staff.password, Token.objects.get(user=staff).key]
    assert all(s for s in secrets)

    keys = list(redis_client.scan_iter(match=f"{settings.TEST_RUN_PREFIX}*"))
    assert len(keys) >= 3, "the user, staff and token entries should be cached"
    dumped = b"".join(
        key + b"".join(k + v for k, v in redis_client.hgetall(key).items())
        for key in keys
        if redis_client.type(key) == b"hash"
    )
    for secret in secrets:
        assert secret.encode() not in dumped
        for response in responses:
            assert secret.encode() not in response.content

"""What clients send: the serializers that validate the API's request bodies, and
the bounds of its query parameters."""

from django.contrib.auth.validators import UnicodeUsernameValidator
from rest_framework import serializers

# A user id is a positive BIGINT; a batch read takes up to MAX_IDS distinct ones.
MAX_ID = 2**63 - 1
MAX_IDS = 100


class UserCreateSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150, validators=[UnicodeUsernameValidator()])
    email = serializers.EmailField(max_length=254)
    # Spaces are part of a password, as Django's own forms keep them.
    password = serializers.CharField(
        required=False,
        write_only=True,
        max_length=128,
        trim_whitespace=False,
        style={"input_type": "password"},
    )
    first_name = serializers.CharField(required=False, allow_blank=True, max_length=150)
    last_name = serializers.CharField(required=False, allow_blank=True, max_length=150)


class UserUpdateSerializer(UserCreateSerializer):
    """PUT needs username and email; PATCH any subset. Omitted fields keep their value."""

    is_active = serializers.BooleanField(required=False)



"""The peers' views: each what a developer would write with the library it stands for.

The read views answer the service's public shape of a user (the same fields, the
same JSON), so that each renders what the service renders.
"""

from django.core.cache import cache
from django.http import Http404
from django_redis import get_redis_connection
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bench.user_shape import CONSTANT_USER
from users.cache.keys import user_key
from users.entries import to_public

from .models import PeerUser

_PUBLIC = ("id", "username", "email", "first_name", "last_name", "is_active", "date_joined",
           "updated_at")  # fmt: skip
_CACHE_TTL_S = 60 * 60


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = PeerUser
        fields = _PUBLIC


class UserWriteSerializer(serializers.ModelSerializer):
    """A create's and a PATCH's fields, validated as the model says (the username's
    characters, the e-mail's form, both unique), answered in the public shape."""

    class Meta:
        model = PeerUser
        fields = ("username", "email", "first_name", "last_name", "is_active")

    def to_representation(self, instance: PeerUser) -> dict:
        return UserSerializer(instance).data


class ConstantView(APIView):
    """Plain DRF: a constant dict of a user's shape, no I/O."""

    def get(self, request: Request) -> Response:
        return Response(CONSTANT_USER)


class HgetallView(APIView):
    """One ``HGETALL`` of the user's hash as the service caches it; 404 when absent."""

    def get(self, request: Request, pk: int) -> Response:
        entry = get_redis_connection("default").hgetall(user_key(pk))
        if not entry:
            raise Http404
        return Response(to_public(pk, {k.decode(): v.decode() for k, v in entry.items()}))


class DjangoCacheView(APIView):
    """Cache-aside with Django's cache API: ``cache.get``, else the row and ``cache.set``."""

    def get(self, request: Request, pk: int) -> Response:
        key = f"user:{pk}"
        user = cache.get(key)
        if user is None:
            try:
                user = dict(UserSerializer(PeerUser.objects.get(pk=pk)).data)
            except PeerUser.DoesNotExist:
                raise Http404 from None
            cache.set(key, user, _CACHE_TTL_S)
        return Response(user)


class CacheopsView(APIView):
    """django-cacheops: ``.cache().get()``, then the serializer."""

    def get(self, request: Request, pk: int) -> Response:
        try:
            return Response(UserSerializer(PeerUser.objects.cache().get(pk=pk)).data)
        except PeerUser.DoesNotExist:
            raise Http404 from None


class CachalotView(APIView):
    """django-cachalot: a plain ``.get()`` (cachalot caches the query), then the serializer."""

    def get(self, request: Request, pk: int) -> Response:
        try:
            return Response(UserSerializer(PeerUser.objects.get(pk=pk)).data)
        except PeerUser.DoesNotExist:
            raise Http404 from None


class UserCreateView(generics.CreateAPIView):
    """A plain ``ModelSerializer`` create: through cacheops or cachalot, whichever
    the process runs, which invalidate on save."""

    queryset = PeerUser.objects.all()
    serializer_class = UserWriteSerializer


class UserUpdateView(generics.UpdateAPIView):
    """A plain ``ModelSerializer`` update (PATCH: partial)."""

    queryset = PeerUser.objects.all()
    serializer_class = UserWriteSerializer

"""The framework floor: what a request to the API costs before the service does any work."""

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from users.api import UserViewSet

# The size and shape of a user's representation, so rendering costs what it costs there.
_CONSTANT_USER = {
    "id": 1,
    "username": "user0000001",
    "email": "user0000001@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "is_active": True,
    "date_joined": "2024-01-01T00:00:00.000000Z",
    "updated_at": "2024-01-01T00:00:00.000000Z",
}


class TrueFloorView(APIView):
    """The framework's own floor: DRF with the production middleware and renderer,
    answering the same constant, with no authentication, no throttle and no I/O."""

    authentication_classes = []
    permission_classes = []
    throttle_classes = []

    def get(self, request: Request) -> Response:
        return Response(_CONSTANT_USER)


class FrameworkFloorView(APIView):
    """Authenticates, checks permissions and renders exactly as ``GET /api/user/<id>`` does,
    then answers a constant: the ceiling a cached read can approach.

    Its only I/O is the token lookup (which counts the request against the rate
    limit in the same call), itself a cache hit once warm.
    """

    permission_classes = UserViewSet.permission_classes

    def get(self, request: Request) -> Response:
        return Response(_CONSTANT_USER)

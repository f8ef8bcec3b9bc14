"""The framework floor: what a request to the API costs before the service does any work."""

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from users.api import UserViewSet

from .user_shape import CONSTANT_USER


class TrueFloorView(APIView):
    """The framework's own floor: DRF with the production middleware and renderer,
    answering the same constant, with no authentication, no throttle and no I/O."""

    authentication_classes = []
    permission_classes = []
    throttle_classes = []

    def get(self, request: Request) -> Response:
        return Response(CONSTANT_USER)


class FrameworkFloorView(APIView):
    """Authenticates, checks permissions and renders exactly as ``GET /api/user/<id>`` does,
    then answers a constant: the ceiling a cached read can approach.

    Its only I/O is the token lookup (which counts the request against the rate
    limit in the same call), itself a cache hit once warm.
    """

    permission_classes = UserViewSet.permission_classes

    def get(self, request: Request) -> Response:
        return Response(CONSTANT_USER)

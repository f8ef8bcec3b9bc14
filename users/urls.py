"""The API's URLs: ``/api/user`` and ``/api/user/<id>``, with or without a trailing
slash and without a redirect."""

from rest_framework.routers import SimpleRouter

from .api import UserViewSet

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("user", UserViewSet, basename="user")

urlpatterns = router.urls

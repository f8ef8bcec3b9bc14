"""The API's URLs: ``/api/user``, ``/api/user/batch`` and ``/api/user/<id>``, with or
without a trailing slash and without a redirect; and ``/api/schema/``, the API's
OpenAPI description. ``batch`` is no id: the detail route takes digits only
(``UserViewSet.lookup_value_regex``)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from .api import UserViewSet
from .schema.view import SchemaView

router = SimpleRouter()
router.trailing_slash = "/?"
router.register("user", UserViewSet, basename="user")

urlpatterns = [*router.urls, path("schema/", SchemaView.as_view(), name="schema")]

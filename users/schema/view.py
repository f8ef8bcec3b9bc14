"""``/api/schema/``: the description, built once per process and form.

drf-spectacular builds the whole description again at every request, tens of
milliseconds of CPU that a client may ask for as often as its rate lets it, at
a cost of one. The description is a function of the code and the settings
alone (``SERVE_PUBLIC``: no caller's permissions go into it), so each process
keeps each form it served: per renderer and version, which takes only the
values the settings allow, so the forms kept are few. It is written in one
language, ``LANGUAGE_CODE``'s: ``?lang=`` is not read (Django knows a hundred
languages, each of which would be a build and a form kept). Each
form is rendered as its renderer's own media type: parameters a client adds to
``Accept`` (``indent=``) are not honoured here.
"""

from __future__ import annotations

import threading

from django.conf import settings
from django.http import HttpResponse
from django.utils import translation
from drf_spectacular.settings import spectacular_settings
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SCHEMA_KWARGS, SpectacularAPIView
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings

_built: dict[tuple, bytes] = {}
_building = threading.Lock()


class SchemaView(SpectacularAPIView):
    """The description, from ``_built`` after its first request in each form. Its
    errors (a 401 for a caller without credentials) are JSON like every other
    error of the API: drf-spectacular's YAML renderer, the default here, writes
    DRF's ``ErrorDetail`` as a mapping of ``string`` and ``code`` instead of the
    message."""

    @extend_schema(**SCHEMA_KWARGS)
    def get(self, request, *args, **kwargs):
        assert self.custom_settings is None and spectacular_settings.SERVE_PUBLIC, (
            "SchemaView keeps one description per form: it must not depend on the caller"
        )
        version = self.api_version or request.version or self._get_version_parameter(request)
        renderer = request.accepted_renderer
        key = (type(renderer), version)
        content = _built.get(key)
        if content is None:
            with _building:
                content = _built.get(key)
                if content is None:
                    with translation.override(settings.LANGUAGE_CODE):
                        schema = self._get_schema_response(request).data
                    content = _built[key] = renderer.render(
                        schema, renderer.media_type, self.get_renderer_context()
                    )
        answer = HttpResponse(content, content_type=_content_type(renderer))
        answer["Content-Disposition"] = f'inline; filename="{self._get_filename(request, version)}"'
        return answer

    def _get_version_parameter(self, request) -> str | None:
        """``?version=``, only when ``ALLOWED_VERSIONS`` names it: drf-spectacular
        takes any text when none are listed, which would make every request a new
        form of the description."""
        version = request.GET.get("version")
        return version if version in (api_settings.ALLOWED_VERSIONS or ()) else None

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return response


def _content_type(renderer) -> str:
    """As DRF's ``Response`` writes it for the renderer's own media type."""
    if renderer.charset:
        return f"{renderer.media_type}; charset={renderer.charset}"
    return renderer.media_type

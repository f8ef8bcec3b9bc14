"""How errors reach API clients: always JSON with a ``detail``, never a traceback.

DRF handles its own exceptions; this handler adds the ones raised below it:
Django's ``ValidationError`` from services (400 with per-field messages), a body
over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (413), a write that kept conflicting with
concurrent ones (409), and a database that cannot be reached (503, so clients
retry instead of giving up).

Errors Django answers before or around a view are JSON too (``config/urls.py``'s
handlers and ``CSRF_FAILURE_VIEW``): a ``Host`` that ``ALLOWED_HOSTS`` does not list
or another suspicious request (400), a permission refused outside DRF (403), a
form posted without its CSRF token (403), an unknown path (404), a crash (500).
"""

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from config.database import WriteConflict

logger = logging.getLogger(__name__)


class RequestBodyTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The user was being changed concurrently; retry the request."
    default_code = "conflict"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The database is unavailable; try again shortly."
    default_code = "service_unavailable"


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            detail = exc.message_dict
        else:
            detail = {"non_field_errors": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = RequestBodyTooLarge(f"Request body is larger than {limit} bytes.")
    elif isinstance(exc, WriteConflict):
        exc = Conflict()
    elif isinstance(exc, OperationalError | InterfaceError):
        logger.warning("database unavailable: %s", exc)
        exc = ServiceUnavailable()
    response = exception_handler(exc, context)
    if isinstance(exc, ServiceUnavailable) and response is not None:
        response["Retry-After"] = "1"
    return response


def json_bad_request(request, exception=None) -> JsonResponse:
    return JsonResponse({"detail": "Bad request."}, status=400)


def json_permission_denied(request, exception=None) -> JsonResponse:
    return JsonResponse(
        {"detail": "You do not have permission to perform this action."}, status=403
    )


def json_csrf_failure(request, reason: str = "") -> JsonResponse:
    """``CSRF_FAILURE_VIEW``, in the words DRF uses for the same refusal."""
    return JsonResponse({"detail": f"CSRF Failed: {reason}"}, status=403)


def json_not_found(request, exception=None) -> JsonResponse:
    return JsonResponse({"detail": "Not found."}, status=404)


def json_server_error(request) -> JsonResponse:
    return JsonResponse({"detail": "Internal server error."}, status=500)

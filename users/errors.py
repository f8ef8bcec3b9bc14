"""How the API answers the users' domain errors: the services raise what happened
(``User.DoesNotExist``, ``services.PreconditionFailed``), this maps it to an HTTP
answer, and ``config.exceptions`` does the rest (every error JSON, the database's
errors as 503 or 409)."""

from rest_framework import exceptions, status
from rest_framework.response import Response

from config.exceptions import api_exception_handler as answer_generically

from .models import User
from .services import PreconditionFailed


class PreconditionFailedError(exceptions.APIException):
    status_code = status.HTTP_412_PRECONDITION_FAILED
    default_detail = "The user has changed since the ETag in If-Match: read it again."
    default_code = "precondition_failed"


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    """``REST_FRAMEWORK["EXCEPTION_HANDLER"]``."""
    if isinstance(exc, PreconditionFailed):
        exc = PreconditionFailedError()
    elif isinstance(exc, User.DoesNotExist):
        exc = exceptions.NotFound("No user with this id.")
    return answer_generically(exc, context)

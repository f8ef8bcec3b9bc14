"""The admin's page of login lockouts: what ``manage.py unlock_login --list`` shows,
each with an unlock button, for superusers and staff with ``change_user``."""

from __future__ import annotations

import re

from django.contrib import messages
from django.contrib.admin import ModelAdmin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse

from ..cache.transport import CacheUnavailable
from . import limits
from .addresses import named_group
from .lockouts import lockouts as listed_lockouts
from .lockouts import unlock


def login_lockouts(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_change_permission(request):
        raise PermissionDenied
    if request.method == "POST":
        _unlock(request)
        return HttpResponseRedirect(request.path)
    try:
        lockouts, error = listed_lockouts(), None
    except CacheUnavailable as exc:
        lockouts, error = [], str(exc)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Login lockouts",
        "opts": model_admin.opts,
        "lockouts": lockouts,
        "error": error,
    }
    return TemplateResponse(request, "admin/users/user/login_lockouts.html", context)


def _unlock(request: HttpRequest) -> None:
    """Unlocks the row posted, after checking that it names an account's digest or
    an address group: nothing else under the prefix can be reached from here."""
    kind, subject = request.POST.get("kind"), request.POST.get("subject", "")
    if kind == limits.ACCOUNT:
        valid = re.fullmatch(r"[0-9a-f]{64}", subject) is not None
    else:
        try:
            valid = kind == limits.ADDRESS and named_group(subject) == subject
        except ValueError:
            valid = False
    if not valid:
        messages.error(request, "That is no account or address the limits count.")
        return
    try:
        removed = unlock(kind=kind, subject=subject)
    except CacheUnavailable as exc:
        messages.error(request, f"Redis is unavailable: {exc}")
        return
    if removed:
        done = "; ".join(f"{lockout.count} {lockout.counted}" for lockout in removed)
        messages.success(request, f"Unlocked {kind} {removed[0].shown} ({done} removed).")
    else:
        messages.info(request, "Nothing to remove: that lockout had ended.")

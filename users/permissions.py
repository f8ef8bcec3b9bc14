"""Who may write which user: Django's permission model, and one rule on top of it.

* Reading is for any authenticated, active user. Writing is for active staff
  holding the model permission for it (``users.add_user``, ``change_user``,
  ``delete_user``; a superuser holds all), as in the admin.
* Only a superuser may change, deactivate, delete or set the password of a
  superuser, or of another staff account: a permission to manage users must not
  become a way to take over the accounts that manage them.

The API checks ``is_staff`` from the cached principal first (no SQL, a quick 403
for everyone else); the services then read the writer's permissions from
MySQL, inside the write's transaction and with the target's row locked, so a
permission revoked or a target promoted a moment ago is never missed.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from rest_framework import permissions
from rest_framework.request import Request

from .models import User

PERMISSIONS = {
    "add": "users.add_user",
    "change": "users.change_user",
    "delete": "users.delete_user",
}


def may_write(actor: User, action: str, target: User | None = None) -> bool:
    """Whether ``actor`` may ``action`` ("add", "change", "delete") ``target``."""
    if not (actor.is_active and actor.is_staff and actor.has_perm(PERMISSIONS[action])):
        return False
    if target is None or actor.is_superuser:
        return True
    return not (target.is_superuser or (target.is_staff and target.pk != actor.pk))


def check_write(actor: User | None, action: str, target: User | None = None) -> None:
    """Raises ``PermissionDenied`` unless ``actor`` may write; ``None`` is the system
    itself (management commands, data migrations), which may."""
    if actor is not None and not may_write(actor, action, target):
        raise PermissionDenied("You do not have permission to perform this action.")


class IsStaffOrReadOnly(permissions.BasePermission):
    """The API's first gate, from the cached principal: reads for everyone
    authenticated, writes only for staff (the services check the rest)."""

    def has_permission(self, request: Request, view) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(request.user.is_staff)

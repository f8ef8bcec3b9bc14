"""DRF's token admin, limited to the tokens of the users the viewer may manage: an
API token is its user's identity, so it follows ``users.permissions`` as the
user does."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from rest_framework.authtoken.admin import TokenAdmin as DRFTokenAdmin
from rest_framework.authtoken.models import TokenProxy

from ..models import User
from ..permissions import may_write

admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class TokenAdmin(DRFTokenAdmin):
    """DRF's token admin, limited to the tokens of users the viewer may manage."""

    def get_queryset(self, request):
        tokens = super().get_queryset(request)
        if request.user.is_superuser:
            return tokens
        return tokens.filter(_manageable_users(request.user, prefix="user__"))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = User.objects.filter(_manageable_users(request.user))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_change_permission(self, request, obj: TokenProxy | None = None) -> bool:
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or may_write(request.user, "change", obj.user))

    def has_delete_permission(self, request, obj: TokenProxy | None = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or may_write(request.user, "change", obj.user))

    def save_model(self, request, obj: TokenProxy, form, change: bool) -> None:
        if not may_write(request.user, "change", obj.user):
            raise PermissionDenied
        super().save_model(request, obj, form, change)


def _manageable_users(actor: User, prefix: str = "") -> Q:
    """The users a staff account that is no superuser may act for: itself, and
    those that are neither staff nor superusers."""
    return Q(**{f"{prefix}pk": actor.pk}) | Q(
        **{f"{prefix}is_staff": False, f"{prefix}is_superuser": False}
    )

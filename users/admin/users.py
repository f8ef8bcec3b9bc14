"""The user admin: its forms, who may see and change what, and the saves and
deletes, which go through ``users.services``; a password form's post counts
against the rate of writes that hash (``users.throttling.PasswordHashThrottle``).
What it shows and does of the cache is ``users.admin.cache``'s."""

import math

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm, UserCreationForm
from django.http import HttpResponse
from django.urls import path
from django.utils.html import format_html

from .. import services
from ..logins.pages import login_lockouts
from ..models import User
from ..permissions import may_write
from ..throttling import PasswordHashThrottle
from .cache import UserCacheAdmin, UserChangeList

# The user list's filters, and nothing else a URL may ask the changelist to filter by
# (Django's default takes any lookup on any field: a regex that MySQL refuses is
# a 500, a prefix of a password hash an oracle).
_LIST_LOOKUPS = frozenset(
    {
        "is_active__exact",
        "is_staff__exact",
        "is_superuser__exact",
        "date_joined__gte",
        "date_joined__lt",
        "date_joined__isnull",
    }
)
_PRIVILEGE_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")


class UserAddForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")


class UserPasswordChangeForm(AdminPasswordChangeForm):
    """Saves through the service. The admin's view has just checked that the
    logged-in user may change this one (``UserAdmin.has_change_permission``); the
    form is given no request, so the save runs as the system."""

    def save(self, commit: bool = True) -> User:
        user = super().save(commit=False)
        if commit:
            services.user_save(actor=None, user=user)
        return user


@admin.register(User)
class UserAdmin(UserCacheAdmin, DjangoUserAdmin):
    add_form = UserAddForm
    change_password_form = UserPasswordChangeForm
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Important dates", {"fields": ("last_login", "date_joined", "updated_at")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("username", "email", "password1", "password2")}),
    )
    readonly_fields = ("last_login", "date_joined", "updated_at")
    # The cache state early, and no more columns than fit beside both sidebars at
    # 1,400 px: a wider list scrolls its last columns out of sight. First and last
    # names are on the change page, and searched; change_list.html bounds the text
    # columns' widths.
    list_display = ("id", "username", "cache_state", "email_address", "active", "staff")
    list_filter = ("is_active", "is_staff", "is_superuser", "date_joined")
    search_fields = ("username", "email", "first_name", "last_name")
    ordering = ("id",)
    actions = UserCacheAdmin.cache_actions

    def get_changelist(self, request, **kwargs):
        return UserChangeList

    def lookup_allowed(self, lookup, value, request=None) -> bool:
        return lookup in _LIST_LOOKUPS and super().lookup_allowed(lookup, value, request)

    def has_change_permission(self, request, obj: User | None = None) -> bool:
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or may_write(request.user, "change", obj))

    def has_delete_permission(self, request, obj: User | None = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or may_write(request.user, "delete", obj))

    def get_readonly_fields(self, request, obj: User | None = None) -> tuple:
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if request.user.is_superuser else (*fields, *_PRIVILEGE_FIELDS)

    @admin.display(description="email address", ordering="email")
    def email_address(self, user: User) -> str:
        """Cut short in the list when long (change_list.html): whole on hovering."""
        return format_html('<span title="{}">{}</span>', user.email, user.email)

    @admin.display(description="active", boolean=True, ordering="is_active")
    def active(self, user: User) -> bool:
        return user.is_active

    @admin.display(description="staff", boolean=True, ordering="is_staff")
    def staff(self, user: User) -> bool:
        return user.is_staff

    def get_urls(self):
        lockouts = path(
            "login-lockouts/",
            self.admin_site.admin_view(self.login_lockouts_view),
            name="users_user_login_lockouts",
        )
        return [*self.cache_urls(), lockouts, *super().get_urls()]

    def login_lockouts_view(self, request):
        return login_lockouts(self, request)

    def add_view(self, request, form_url="", extra_context=None):
        refused = _hash_refused(request, "password1", account=None)
        return refused or super().add_view(request, form_url, extra_context)

    def user_change_password(self, request, id, form_url=""):
        """Counted against the user's rate only once the viewer may change the user."""
        user = self.get_object(request, unquote(id))
        if user is not None and self.has_change_permission(request, user):
            refused = _hash_refused(request, "password1", account=str(user.pk))
            if refused is not None:
                return refused
        return super().user_change_password(request, id, form_url)

    def save_model(self, request, obj: User, form, change: bool) -> None:
        services.user_save(actor=request.user, user=obj)

    def delete_model(self, request, obj: User) -> None:
        services.user_delete(actor=request.user, user_id=obj.pk)

    def delete_queryset(self, request, queryset) -> None:
        for user_id in queryset.values_list("pk", flat=True):
            services.user_delete(actor=request.user, user_id=user_id)


def _hash_refused(request, field: str, *, account: str | None) -> HttpResponse | None:
    """A 429 when this form's post would hash a password past the rate of the API's
    writes that do (``PasswordHashThrottle``), per staff account and per user."""
    if request.method != "POST" or not request.POST.get(field):
        return None
    wait = PasswordHashThrottle().hash_wait(request, account=account)
    if wait is None:
        return None
    refused = HttpResponse(
        "Too many password changes: try again in a minute.", status=429, content_type="text/plain"
    )
    refused["Retry-After"] = str(max(1, math.ceil(wait)))
    return refused

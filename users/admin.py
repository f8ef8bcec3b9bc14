"""The Django admin for users. Every save and delete goes through ``users.services``,
so an edit in the admin never leaves the cache stale; the cache column, the two
cache actions and the overview page go through ``users.maintenance``."""

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm, UserCreationForm
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path

from . import cache, maintenance, services
from .models import User


class UserAddForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")


class UserPasswordChangeForm(AdminPasswordChangeForm):
    """Saves through the service: a new password changes the row's version and
    ``updated_at``, which the cached entry carries."""

    def save(self, commit: bool = True) -> User:
        user = super().save(commit=False)
        if commit:
            services.user_save(user=user)
        return user


class UserChangeList(ChangeList):
    """Reads the cache entries of the whole page in one Redis round trip, and hands
    each user its own for the cache column."""

    def get_results(self, request) -> None:
        super().get_results(request)
        # Evaluates the page's queryset; the template then iterates this same result.
        users = list(self.result_list)
        entries = maintenance.user_cache_entries(user_ids=[user.pk for user in users])
        for user in users:
            user.cache_entry = None if entries is None else entries[user.pk]


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
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
    list_display = (
        "id",
        "username",
        "email",
        "first_name",
        "last_name",
        "is_active",
        "is_staff",
        "cache_state",
    )
    list_filter = ("is_active", "is_staff", "is_superuser", "date_joined")
    search_fields = ("username", "email", "first_name", "last_name")
    ordering = ("id",)
    actions = ["warm_cache", "evict_from_cache"]

    def get_changelist(self, request, **kwargs):
        return UserChangeList

    @admin.display(description="cache")
    def cache_state(self, user: User) -> str:
        return describe_cache_entry(getattr(user, "cache_entry", None))

    @admin.action(description="Warm cache", permissions=["change"])
    def warm_cache(self, request, queryset) -> None:
        user_ids = list(queryset.values_list("pk", flat=True))
        report = self._on_cache(request, lambda: maintenance.cache_warm(user_ids=user_ids))
        if report is None:
            return
        message = f"Cached {report.filled} of {len(user_ids)} users."
        if report.refused:
            message += f" {report.refused} changed meanwhile; their write updated the cache."
        self.message_user(request, message, messages.SUCCESS)

    @admin.action(description="Evict from cache", permissions=["change"])
    def evict_from_cache(self, request, queryset) -> None:
        user_ids = list(queryset.values_list("pk", flat=True))
        report = self._on_cache(request, lambda: maintenance.cache_flush(user_ids=user_ids))
        if report is None:
            return
        self.message_user(
            request,
            f"Evicted {len(user_ids)} users: {report.removed} keys removed.",
            messages.SUCCESS,
        )

    def _on_cache(self, request, action):
        """Runs a bulk cache action; None, after telling the operator, when Redis is away."""
        try:
            return action()
        except cache.CacheUnavailable as exc:
            self.message_user(request, f"Redis is unavailable: {exc}", messages.ERROR)
            return None

    def get_urls(self):
        # Ahead of the model's own URLs, whose "<path:object_id>/" would take "cache/".
        overview = path(
            "cache/",
            self.admin_site.admin_view(self.cache_overview_view),
            name="users_user_cache",
        )
        return [overview, *super().get_urls()]

    def cache_overview_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "User cache",
            "opts": self.opts,
            "overview": maintenance.cache_overview(),
        }
        return TemplateResponse(request, "admin/users/user/cache_overview.html", context)

    def save_model(self, request, obj: User, form, change: bool) -> None:
        services.user_save(user=obj)

    def delete_model(self, request, obj: User) -> None:
        services.user_delete(user_id=obj.pk)

    def delete_queryset(self, request, queryset) -> None:
        for user_id in queryset.values_list("pk", flat=True):
            services.user_delete(user_id=user_id)


def describe_cache_entry(entry: cache.EntryInfo | None) -> str:
    """The cache column's text: whether the user is cached, and for how long yet."""
    if entry is None:
        return "Redis unavailable"
    if not entry.exists:
        return "not cached"
    if entry.fields is None:
        return f"malformed ({entry.type})"
    state = "absent" if cache.ABSENT_FIELD in entry.fields else "cached"
    if entry.ttl_ms < 0:
        return f"{state}, no expiry"
    return f"{state}, {_duration(entry.ttl_ms / 1000)} left"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"

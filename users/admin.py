"""The Django admin for users and their API tokens.

Every save and delete goes through ``users.services``, and the cache follows
every change of a user or a token whatever path makes it (``users.invalidation``);
the cache column, the two cache actions (on the list's selection, and on one
user from its change page), the change page's cache section and the overview
page go through ``users.maintenance``.

Who may change whom follows ``users.permissions`` here as in the API: a staff
account with ``change_user`` cannot edit, set the password of or delete a
superuser or another staff account, and only a superuser grants privileges
(staff status, superuser status, groups, permissions). An API token is its
user's identity, so tokens follow the same rule, and their keys are shown only
for the users the viewer may manage.
"""

import math

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm, UserCreationForm
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.http import require_POST
from rest_framework.authtoken.admin import TokenAdmin as DRFTokenAdmin
from rest_framework.authtoken.models import TokenProxy

from . import services
from .cache.flush import cache_flush
from .cache.inspection import EntryInfo
from .cache.kinds import ABSENT
from .cache.transport import CacheUnavailable
from .logins.pages import login_lockouts
from .maintenance.overview import cache_overview, duration, user_cache_entries, user_cache_state
from .maintenance.warm import cache_warm
from .models import User
from .permissions import may_write
from .throttling import PasswordHashThrottle

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
# The most users the two cache actions handle inside a request: a page or two of
# the list. More (a "select all" of the whole table) would hold a worker thread,
# and the browser, for as long as the whole selection takes, however large; the
# commands stream any number in batches, and the refusal says which to run.
CACHE_ACTION_MAX = 1000
# A refusal names the selected ids in the command up to this many; past it, --all.
_IDS_IN_COMMAND_MAX = 2000


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


class UserChangeList(ChangeList):
    """Reads the cache entries of the whole page in one Redis round trip, and hands
    each user its own for the cache column."""

    def get_results(self, request) -> None:
        super().get_results(request)
        # Evaluates the page's queryset; the template then iterates this same result.
        users = list(self.result_list)
        entries = user_cache_entries(user_ids=[user.pk for user in users])
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
    # The cache state early, and no more columns than fit beside both sidebars at
    # 1,400 px: a wider list scrolls its last columns out of sight. First and last
    # names are on the change page, and searched; change_list.html bounds the text
    # columns' widths.
    list_display = ("id", "username", "cache_state", "email_address", "active", "staff")
    list_filter = ("is_active", "is_staff", "is_superuser", "date_joined")
    search_fields = ("username", "email", "first_name", "last_name")
    ordering = ("id",)
    actions = ["warm_cache", "evict_from_cache"]

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

    @admin.display(description="cache")
    def cache_state(self, user: User) -> str:
        return describe_cache_entry(getattr(user, "cache_entry", None))

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

    @admin.action(description="Warm cache", permissions=["change"])
    def warm_cache(self, request, queryset) -> None:
        user_ids = self._bounded_selection(request, queryset, "Warming", "warm_user_cache")
        if user_ids is not None:
            self._warm(request, user_ids, f"{len(user_ids)} users")

    @admin.action(description="Evict from cache", permissions=["change"])
    def evict_from_cache(self, request, queryset) -> None:
        user_ids = self._bounded_selection(request, queryset, "Evicting", "flush_user_cache")
        if user_ids is not None:
            self._evict(request, user_ids, f"{len(user_ids)} users")

    def _warm(self, request, user_ids: list[int], who: str) -> None:
        report = self._on_cache(request, lambda: cache_warm(user_ids=user_ids))
        if report is None:
            return
        message = f"Cached {report.filled} of {who}."
        if report.refused:
            message += f" {report.refused} changed meanwhile; their write updated the cache."
        self.message_user(request, message, messages.SUCCESS)

    def _evict(self, request, user_ids: list[int], who: str) -> None:
        report = self._on_cache(request, lambda: cache_flush(model=User, pks=user_ids))
        if report is not None:
            self.message_user(
                request, f"Evicted {who}: {report.removed} keys removed.", messages.SUCCESS
            )

    def _may_manage_cache(self, request) -> bool:
        """What the list's two cache actions ask (``permissions=["change"]``): the
        model's change permission. Warming or evicting changes no user, so it is
        not limited to the users the viewer may edit."""
        return self.has_change_permission(request)

    def _bounded_selection(self, request, queryset, doing: str, command: str) -> list[int] | None:
        """The selected ids; None, after telling the operator which command to run
        instead, when there are more than ``CACHE_ACTION_MAX``."""
        selected = queryset.count()
        if selected <= CACHE_ACTION_MAX:
            return list(queryset.values_list("pk", flat=True))
        if selected == User.objects.count():
            run = f"python manage.py {command} --all"
        elif selected <= _IDS_IN_COMMAND_MAX:
            user_ids = queryset.order_by("pk").values_list("pk", flat=True)
            run = f"python manage.py {command} --ids {' '.join(map(str, user_ids))}"
        else:
            run = f"python manage.py {command} --all (every user, not only these {selected})"
        self.message_user(
            request,
            f"{doing} {selected} users is more than the admin does in a request (at most "
            f"{CACHE_ACTION_MAX}); nothing was done. Run instead: {run}",
            messages.WARNING,
        )
        return None

    def _on_cache(self, request, action):
        """Runs a bulk cache action; None, after telling the operator, when Redis is away."""
        try:
            return action()
        except CacheUnavailable as exc:
            self.message_user(request, f"Redis is unavailable: {exc}", messages.ERROR)
            return None

    def get_urls(self):
        # Ahead of the model's own URLs, whose "<path:object_id>/" would take "cache/".
        overview = path(
            "cache/",
            self.admin_site.admin_view(self.cache_overview_view),
            name="users_user_cache",
        )
        lockouts = path(
            "login-lockouts/",
            self.admin_site.admin_view(self.login_lockouts_view),
            name="users_user_login_lockouts",
        )
        one_user = [
            path(
                f"<int:user_id>/cache/{operation}/",
                self.admin_site.admin_view(self.user_cache_view),
                {"operation": operation},
                name=f"users_user_cache_{operation}",
            )
            for operation in ("warm", "evict")
        ]
        return [overview, lockouts, *one_user, *super().get_urls()]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and not add:
            context["user_cache"] = user_cache_state(user_id=obj.pk)
            context["may_manage_cache"] = self._may_manage_cache(request)
        return super().render_change_form(request, context, add, change, form_url, obj)

    @method_decorator(require_POST)
    def user_cache_view(self, request, user_id: int, operation: str):
        """Warm or Evict on one user's change page: the list's actions on a selection
        of one, under the same permission."""
        if not self._may_manage_cache(request):
            raise PermissionDenied
        user = self.get_object(request, str(user_id))
        if user is None:
            raise Http404(f"No user with id {user_id}.")
        who = f"1 user ({user.username})"
        if operation == "warm":
            self._warm(request, [user.pk], who)
        else:
            self._evict(request, [user.pk], who)
        return HttpResponseRedirect(reverse("admin:users_user_change", args=[user.pk]) + "#cache")

    def cache_overview_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "User cache",
            "opts": self.opts,
            "overview": cache_overview(),
        }
        return TemplateResponse(request, "admin/users/user/cache_overview.html", context)

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


def _manageable_users(actor: User, prefix: str = "") -> Q:
    """The users a staff account that is no superuser may act for: itself, and
    those that are neither staff nor superusers."""
    return Q(**{f"{prefix}pk": actor.pk}) | Q(
        **{f"{prefix}is_staff": False, f"{prefix}is_superuser": False}
    )


def describe_cache_entry(entry: EntryInfo | None) -> str:
    """The cache column's text: whether the user is cached, and for how long yet."""
    if entry is None:
        return "Redis unavailable"
    if not entry.exists:
        return "not cached"
    if entry.fields is None:
        return f"malformed ({entry.type})"
    state = "absent" if ABSENT in entry.fields else "cached"
    if entry.ttl_ms < 0:
        return f"{state}, no expiry"
    return f"{state}, {duration(entry.ttl_ms / 1000)} left"

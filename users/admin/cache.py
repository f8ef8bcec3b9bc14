"""What the user admin shows and does of the cache, apart from who may edit whom:
the list's cache column (a page's entries in one round trip), its two actions
(Warm and Evict on a selection, bounded), the same two on one user's change
page, the change page's cache section and the overview page. All of it goes
through ``users.maintenance`` and ``users.cache.flush``; ``UserCacheAdmin`` is
mixed into ``users.admin.users.UserAdmin``.
"""

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from ..cache.flush import cache_flush
from ..cache.inspection import EntryInfo
from ..cache.kinds import ABSENT
from ..cache.transport import CacheUnavailable
from ..maintenance.overview import cache_overview, duration
from ..maintenance.user_state import user_cache_entries, user_cache_state
from ..maintenance.warm import cache_warm
from ..models import User

# The most users the two cache actions handle inside a request: a page or two of
# the list. More (a "select all" of the whole table) would hold a worker thread,
# and the browser, for as long as the whole selection takes, however large; the
# commands stream any number in batches, and the refusal says which to run.
CACHE_ACTION_MAX = 1000
# A refusal names the selected ids in the command up to this many; past it, --all.
_IDS_IN_COMMAND_MAX = 2000


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


class UserCacheAdmin:
    """The cache's part of the user admin (a mixin of ``admin.ModelAdmin``)."""

    cache_actions = ["warm_cache", "evict_from_cache"]

    @admin.display(description="cache")
    def cache_state(self, user: User) -> str:
        return describe_cache_entry(getattr(user, "cache_entry", None))

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

    def cache_urls(self) -> list:
        """Ahead of the model's own URLs, whose "<path:object_id>/" would take "cache/"."""
        overview = path(
            "cache/",
            self.admin_site.admin_view(self.cache_overview_view),
            name="users_user_cache",
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
        return [overview, *one_user]

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

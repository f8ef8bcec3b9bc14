"""The admin's own password change, under the login limits: its form checks the
old password, which is a guess like a login's. Without the limits a stolen staff
session could guess its account's password without end, a hash a guess."""

import math

from django.contrib import admin
from django.contrib.admin.forms import AdminPasswordChangeForm
from django.contrib.auth.views import PasswordChangeView
from django.core.exceptions import ValidationError
from django.urls import reverse_lazy

from . import limits
from .addresses import client_address


class LimitedPasswordChangeForm(AdminPasswordChangeForm):
    """Counts the old password's check as a login attempt of the account, from the
    request's address: refused over a limit before any hash, a failure counted."""

    def __init__(self, user, *args, request, **kwargs) -> None:
        super().__init__(user, *args, **kwargs)
        self.request = request

    def clean_old_password(self) -> str:
        attempt = limits.attempt_check(
            name=self.user.get_username(), address=client_address(self.request)
        )
        if attempt.refusal is not None:
            minutes = math.ceil(attempt.refusal.retry_after / 60)
            raise ValidationError(
                f"Too many attempts: try again in {minutes} minute(s).", code="too_many"
            )
        try:
            old_password = super().clean_old_password()
        except ValidationError:
            limits.attempt_failed(attempt)
            raise
        limits.attempt_succeeded(attempt)
        return old_password


class LimitedPasswordChangeView(PasswordChangeView):
    form_class = LimitedPasswordChangeForm
    template_name = "registration/password_change_form.html"
    success_url = reverse_lazy("admin:password_change_done")

    def get_form_kwargs(self) -> dict:
        return {**super().get_form_kwargs(), "request": self.request}

    def get_context_data(self, **kwargs) -> dict:
        return {**admin.site.each_context(self.request), **super().get_context_data(**kwargs)}


password_change = admin.site.admin_view(LimitedPasswordChangeView.as_view())

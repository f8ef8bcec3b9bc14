"""The admin's password change, ahead of the admin's own URL for it
(``config/urls.py``): ``password_change.password_change``."""

from django.urls import path

from .password_change import password_change

urlpatterns = [path("", password_change)]

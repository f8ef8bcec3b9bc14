"""Every peer's paths; each peer's server is driven on its own."""

from django.urls import path

from . import views

urlpatterns = [
    path("constant", views.ConstantView.as_view()),
    path("hgetall/<int:pk>", views.HgetallView.as_view()),
    path("cache/<int:pk>", views.DjangoCacheView.as_view()),
    path("cacheops/<int:pk>", views.CacheopsView.as_view()),
    path("cachalot/<int:pk>", views.CachalotView.as_view()),
    path("users", views.UserCreateView.as_view()),
    path("users/<int:pk>", views.UserUpdateView.as_view()),
]

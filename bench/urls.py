"""Benchmark-only URLs, mounted under /bench/ when ``BENCHMARK_ENDPOINTS`` is set."""

from django.urls import path

from .views import FrameworkFloorView, TrueFloorView

urlpatterns = [
    path("floor", FrameworkFloorView.as_view(), name="bench-floor"),
    path("true-floor", TrueFloorView.as_view(), name="bench-true-floor"),
]

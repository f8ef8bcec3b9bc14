from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerSplitView

# The API first: Django tries the patterns in order on every request. Its schema,
# at api/schema/, comes with it (users.urls).
urlpatterns = [
    path("api/", include("users.urls")),
    # Swagger UI's page and its start-up script apart (?script): no inline script,
    # so the Content-Security-Policy can refuse them all.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    # The admin's own password change, under the login limits (users.logins).
    path("admin/password_change/", include("users.logins.urls")),
    path("admin/", admin.site.urls),
    path("api-auth/", include("rest_framework.urls")),
]
# Benchmark-only endpoints, for the gunicorn that ./scripts/bench starts.
if settings.BENCHMARK_ENDPOINTS:
    urlpatterns.append(path("bench/", include("bench.urls")))

# Every error is JSON, the ones Django answers outside the API's views included.
handler400 = "config.exceptions.json_bad_request"
handler403 = "config.exceptions.json_permission_denied"
handler404 = "config.exceptions.json_not_found"
handler500 = "config.exceptions.json_server_error"

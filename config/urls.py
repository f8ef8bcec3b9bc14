from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerView

# The API first: Django tries the patterns in order on every request. Its schema,
# at api/schema/, comes with it (users.urls).
urlpatterns = [
    path("api/", include("users.urls")),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("admin/", admin.site.urls),
    path("api-auth/", include("rest_framework.urls")),
]
# Benchmark-only endpoints, for the gunicorn that ./scripts/bench starts.
if settings.BENCHMARK_ENDPOINTS:
    urlpatterns.append(path("bench/", include("bench.urls")))

handler404 = "config.exceptions.json_not_found"
handler500 = "config.exceptions.json_server_error"

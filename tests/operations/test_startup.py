"""What stops the service at start-up rather than request by request
(config/checks.py): static files never collected, and several gunicorn workers
without shared metrics. The checks run in every gunicorn worker before it serves
(config/wsgi.py), and gunicorn then exits with the reason."""

import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings

from config.checks import metrics_shared_by_workers_check, static_files_manifest_check
from tests.helpers import database_url, redis_environment
from tests.servers import PROJECT_ROOT, WebService, collected_static_files

MANIFEST_STORAGE = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}


def _gunicorn(web: WebService, *args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    """gunicorn run to its end: these configurations must not get as far as serving.
    (Its exit status is 3, or 1 when two workers fail at once and the second
    failure interrupts the master's shutdown.)"""
    return subprocess.run(
        [str(Path(web.python).parent / "gunicorn"), *args, "config.wsgi"],
        cwd=cwd, env=web.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


class TestStaticFilesManifest:
    def test_missing_under_the_manifest_storage_is_an_error(self, tmp_path):
        with override_settings(DEBUG=False, STORAGES=MANIFEST_STORAGE, STATIC_ROOT=tmp_path):
            errors = static_files_manifest_check(None)

        assert [error.id for error in errors] == ["usersvc.E001"]
        assert str(tmp_path / "staticfiles.json") in errors[0].msg
        assert "collectstatic" in errors[0].hint

    def test_collected_is_fine(self):
        static_root = collected_static_files()
        with override_settings(DEBUG=False, STORAGES=MANIFEST_STORAGE, STATIC_ROOT=static_root):
            assert static_files_manifest_check(None) == []

    def test_not_needed_with_debug_on(self, tmp_path):
        with override_settings(DEBUG=True, STORAGES=MANIFEST_STORAGE, STATIC_ROOT=tmp_path):
            assert static_files_manifest_check(None) == []

    def test_not_needed_by_a_storage_without_a_manifest(self, tmp_path):
        """The test settings' storage serves the apps' own files."""
        with override_settings(DEBUG=False, STATIC_ROOT=tmp_path):
            assert static_files_manifest_check(None) == []

    @pytest.mark.slow
    def test_gunicorn_refuses_to_start_without_it(self, tmp_path):
        web = WebService(
            tmp_path, database_url=database_url(), **redis_environment(), STATIC_ROOT=str(tmp_path)
        )

        result = _gunicorn(web)

        assert result.returncode != 0
        assert "Worker failed to boot" in result.stderr
        assert "usersvc.E001" in result.stderr
        assert "Run 'python manage.py collectstatic --no-input'" in result.stderr

    @pytest.mark.slow
    def test_collected_the_admin_browsable_api_and_swagger_ui_answer(self, tmp_path):
        """The production settings, as deployed: the pages and the static files they
        name (by their hashed names, from the manifest) are served."""
        # Swagger UI opened to anonymous callers: this is about its static files.
        web = WebService(
            tmp_path, database_url=database_url(), API_DOCS_PUBLIC="true", **redis_environment()
        )
        web.start()
        try:
            pages = {path: _get(web, path) for path in ("/admin/login/", "/api/docs/")}
            browsable = _get(web, "/api-auth/login/")
            stylesheet = next(
                word.split('"')[1]
                for word in pages["/admin/login/"][1].split("href=")[1:]
                if word.startswith('"/static/admin/css/base.')
            )
            static = _get(web, stylesheet)
        finally:
            web.stop()

        assert {path: status for path, (status, _) in pages.items()} == {
            "/admin/login/": 200,
            "/api/docs/": 200,
        }
        assert browsable[0] == 200
        assert static[0] == 200


def _get(web: WebService, path: str) -> tuple[int, str]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
    try:
        connection.request("GET", path, headers={"Accept": "text/html"})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


class TestMetricsSharedByWorkers:
    @pytest.fixture
    def in_gunicorn(self, monkeypatch):
        """What a gunicorn worker's process looks like: gunicorn's SERVER_SOFTWARE
        in the environment and gunicorn's command line in sys.argv."""
        monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/27.0.1")
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)

        def command_line(*args: str) -> None:
            monkeypatch.setattr(sys, "argv", ["gunicorn", *args, "config.wsgi"])

        return command_line

    def test_several_workers_without_a_shared_folder_is_an_error(self, in_gunicorn):
        in_gunicorn("-w", "3")

        errors = metrics_shared_by_workers_check(None)

        assert [error.id for error in errors] == ["usersvc.E002"]
        assert "gunicorn runs 3 workers without PROMETHEUS_MULTIPROC_DIR" in errors[0].msg
        assert "gunicorn.conf.py" in errors[0].hint

    def test_one_worker_is_fine(self, in_gunicorn):
        in_gunicorn("-w", "1")

        assert metrics_shared_by_workers_check(None) == []

    def test_a_shared_folder_is_fine(self, in_gunicorn, monkeypatch, tmp_path):
        in_gunicorn("-w", "3")
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

        assert metrics_shared_by_workers_check(None) == []

    def test_not_under_gunicorn_is_fine(self, monkeypatch):
        monkeypatch.delenv("SERVER_SOFTWARE", raising=False)
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

        assert metrics_shared_by_workers_check(None) == []

    @pytest.mark.slow
    def test_gunicorn_without_its_configuration_refuses_to_start(self, tmp_path):
        """A platform's default command run outside the project's root, where
        gunicorn finds no gunicorn.conf.py: two workers that would each count alone."""
        web = WebService(tmp_path, database_url=database_url(), **redis_environment())
        web.env.pop("PROMETHEUS_MULTIPROC_DIR", None)

        result = _gunicorn(web, "--chdir", str(PROJECT_ROOT), "-w", "2", cwd=tmp_path)

        assert result.returncode != 0
        assert "Worker failed to boot" in result.stderr
        assert "usersvc.E002" in result.stderr
        assert "gunicorn runs 2 workers without PROMETHEUS_MULTIPROC_DIR" in result.stderr

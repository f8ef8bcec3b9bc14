"""The API as a client generated from its OpenAPI schema sees it.

openapi-python-client, the generator API consumers reach for, makes a client from
the schema ``manage.py spectacular`` writes; ``tests/api/generated_client_calls.py``
calls every operation with it. mypy --strict type-checks that script, so an
operation with a union for its answer, or an error shape a client cannot tell
apart, fails here; then the script runs against a live server, so the calls
really work as typed: every id of a batch answered for, each error parsed as the
shape it is.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from tests.helpers import grant_user_permissions
from users.models import User

SCRIPT = Path(__file__).with_name("generated_client_calls.py")
_BIN = Path(sys.executable).parent


def _run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory, django_db_blocker) -> Path:
    """A folder holding the generated client (``usersvc_client``) and the script."""
    root = tmp_path_factory.mktemp("generated-client")
    schema = root / "schema.json"
    with django_db_blocker.unblock():
        call_command("spectacular", "--format", "openapi-json", "--file", str(schema))
    # The generator's default hooks only reformat its output with ruff.
    config = root / "generator.yaml"
    config.write_text("post_hooks: []\n")
    command = [
        _BIN / "openapi-python-client", "generate", "--path", schema,
        "--output-path", root / "usersvc_client", "--meta", "none", "--config", config,
    ]  # fmt: skip
    generator = _run(command, cwd=root)
    assert generator.returncode == 0, generator.stdout + generator.stderr
    assert "Warning" not in generator.stdout + generator.stderr, generator.stdout
    shutil.copy(SCRIPT, root)
    return root


def test_every_operation_type_checks_strictly(generated):
    """Each operation's answer is one type the script names, never a union of two
    success shapes (the list answered a page or a batch) nor a `detail` that a
    client could only parse as per-field errors."""
    command = [_BIN / "mypy", "--strict", "--cache-dir", generated / ".mypy", SCRIPT.name]
    checked = _run(command, cwd=generated)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_operation_works_against_the_service(generated, live_server):
    staff = grant_user_permissions(
        User.objects.create_user(username="staff", email="staff@example.com", is_staff=True)
    )
    reader = User.objects.create_user(username="reader", email="reader@example.com")
    tokens = [Token.objects.create(user=user).key for user in (staff, reader)]

    ran = _run([sys.executable, SCRIPT.name, live_server.url, *tokens], cwd=generated)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.strip() == "every operation answered as documented"

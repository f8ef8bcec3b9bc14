"""Fuzzing: schemathesis against the service's own OpenAPI schema on a running server.

Starts its own mariadbd, redis-server and the service under gunicorn (production
settings), creates a staff user and a normal user, and runs schemathesis once
with each one's token. It fails on any 5xx and on any response the schema does
not describe (status code, content type, headers, body).

    python -m tests.fuzz                     # the bounded run .ci/run uses
    python -m tests.fuzz --max-examples 500  # a longer run

Rate limits are off for the run: schemathesis sends far more requests per
minute than a client would, and 429 is tested elsewhere. So is gunicorn's limit
on the request line (``--limit-request-line 0``): past 4,094 bytes gunicorn, or
the proxy in front of it, answers 414 with its own page before the service is
asked, and the run is about what the service answers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.servers import WebService, service_stack

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)

_CREATE_READER = """
from users.models import User
User.objects.filter(username="reader").exists() or User.objects.create_user(
    username="reader", email="reader@example.com"
)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-examples", type=int, default=30, help="per operation")
    parser.add_argument("--seed", type=int, default=None, help="for a reproducible run")
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="usersvc-fuzz-") as tmp,
        service_stack(
            Path(tmp),
            THROTTLE_RATE_USER="off",
            THROTTLE_RATE_ANON="off",
            THROTTLE_RATE_AUTH_FAILURE="off",
            THROTTLE_RATE_PASSWORD_HASH="off",
            GUNICORN_CMD_ARGS="--limit-request-line 0",
        ) as (_mariadb, _redis_server, web),
    ):
        web.manage("shell", "-c", _CREATE_READER)
        reader_token = web.manage("drf_create_token", "reader").split()[2]
        web.start()
        for n in range(5):
            web.request("POST", "/api/user", {"username": f"seed{n}", "email": f"s{n}@x.io"})
        # The reader first: the staff run deletes users, the reader among them.
        failures = [
            who
            for who, token in (("reader", reader_token), ("staff", web.token))
            if _schemathesis(web, token, who, args) != 0
        ]
    print("\nFAIL: " + ", ".join(failures) if failures else "\nPASS")
    return 1 if failures else 0


def _schemathesis(web: WebService, token: str, who: str, args) -> int:
    print(f"\n## schemathesis as {who}\n", flush=True)
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"http://127.0.0.1:{web.port}/api/schema/",
        "--checks", ",".join(CHECKS),
        "--header", f"Authorization: Token {token}",
        "--max-examples", str(args.max_examples),
        "--phases", "examples,coverage,fuzzing",
        # One worker: Python 3.11 keeps the AST builder's recursion counter per
        # interpreter, so hypothesis parsing lambdas in two threads at once can
        # fail with "SystemError: AST constructor recursion depth mismatch".
        "--workers", "1",
        "--request-timeout", "10",
        "--generation-database", "none",
        "--no-color",
    ]  # fmt: skip
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())

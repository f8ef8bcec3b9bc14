"""The deployment's files: docker-compose.yml, .env.example, the Dockerfile and the
MySQL accounts of deploy/mysql.

No container engine runs on the machines this is tested on: the compose file is
checked against the Compose Specification's JSON schema (tests/data), and with
``docker compose config`` where a client with the compose plugin has an engine
to talk to; the web account's privileges are tried for real on MariaDB.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import MySQLdb
import pytest
import yaml
from django.conf import settings

from tests.helpers import redis_environment
from tests.servers import PROJECT_ROOT, BinlogFollower, MariaDBServer, WebService

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
WEB_ACCOUNT_SQL = PROJECT_ROOT / "deploy" / "mysql" / "initdb" / "10-web-account.sh"
FOLLOWER_ACCOUNT_SQL = PROJECT_ROOT / "deploy" / "mysql" / "initdb" / "20-follower-account.sh"
REQUIRED = re.compile(r"\$\{(\w+):\?[^}]+\}")
ENVIRONMENT = {
    "SECRET_KEY": "compose-test-only-0123456789abcdefghijklmnopqrstuvwxyz",
    "MYSQL_MIGRATE_PASSWORD": "migrate0secret",
    "MYSQL_WEB_PASSWORD": "web0secret",
    "MYSQL_FOLLOWER_PASSWORD": "follower0secret",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose_schema() -> jsonschema.protocols.Validator:
    schema = json.loads((PROJECT_ROOT / "tests" / "data" / "compose-spec.json").read_text())
    # The draft its $schema names, spelt there in a way jsonschema does not look up.
    assert schema["$schema"].startswith("http://json-schema.org/draft/2019-09/")
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def _schema_errors(validator: jsonschema.protocols.Validator, document: dict) -> list[str]:
    return [f"{list(error.absolute_path)}: {error.message}" for error in
            validator.iter_errors(document)]  # fmt: skip


def _environment(service: dict) -> dict[str, str]:
    return {name: str(value) for name, value in service["environment"].items()}


class TestComposeFile:
    def test_matches_the_compose_specification(self, compose, compose_schema):
        assert _schema_errors(compose_schema, compose) == []

    def test_the_schema_catches_what_the_specification_does_not_allow(
        self, compose, compose_schema
    ):
        """The control: the same file with a misspelt key and a wrong type."""
        broken = json.loads(json.dumps(compose))
        broken["services"]["web"]["depends_on"]["migrate"]["condition"] = "service_finished"
        broken["services"]["redis"]["healthcheck"]["retries"] = "thirty"
        broken["services"]["proxy"]["port"] = ["8000:80"]

        assert len(_schema_errors(compose_schema, broken)) == 3

    def test_every_required_variable_is_in_env_example(self):
        required = set(REQUIRED.findall(COMPOSE_FILE.read_text()))
        example = {
            line.split("=", 1)[0]
            for line in ENV_EXAMPLE.read_text().splitlines()
            if line and not line.startswith("#")
        }

        assert {
            "SECRET_KEY", "MYSQL_MIGRATE_PASSWORD", "MYSQL_WEB_PASSWORD", "MYSQL_FOLLOWER_PASSWORD",
        } <= required  # fmt: skip
        assert required <= example

    def test_the_secret_key_has_no_default(self, compose):
        """The production settings refuse to start without a key; a default here
        would quietly defeat that."""
        for name in ("migrate", "web", "migrate-tidb", "web-tidb"):
            key = _environment(compose["services"][name])["SECRET_KEY"]
            assert REQUIRED.fullmatch(key), (name, key)

    def test_web_starts_after_the_migration_has_succeeded(self, compose):
        services = compose["services"]

        assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--no-input"]
        assert services["migrate"]["restart"] == "no"
        assert services["web"]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert services["web-tidb"]["depends_on"]["migrate-tidb"] == {
            "condition": "service_completed_successfully"
        }
        assert "command" not in services["web"]  # the image's: gunicorn, no migrate

    def test_mysql_is_the_84_lts_and_nobody_connects_as_root(self, compose):
        services = compose["services"]
        users = {
            name: re.match(r"mysql://([^:@]+)", _environment(services[name])["DATABASE_URL"])[1]
            for name in ("migrate", "web")
        }

        assert services["mysql"]["image"] == "mysql:8.4"
        assert users == {"migrate": "usersvc_migrate", "web": "usersvc_web"}
        assert _environment(services["mysql"])["MYSQL_USER"] == "usersvc_migrate"
        assert _environment(services["mysql"])["MYSQL_WEB_USER"] == "usersvc_web"
        assert (
            "./deploy/mysql/initdb:/docker-entrypoint-initdb.d:ro" in services["mysql"]["volumes"]
        )

    def test_the_follower_reads_mysqls_binary_log_as_its_own_account(self, compose):
        """Beside the web service's cache (same Redis, prefix and secret key, which
        names token entries), after the migrations, from a MySQL that logs full
        rows with their columns' names."""
        services = compose["services"]
        follower, web = (_environment(services[name]) for name in ("follower", "web"))
        mysql_options = services["mysql"]["command"]

        assert services["follower"]["command"] == ["python", "manage.py", "follow_binlog"]
        assert re.match(r"mysql://usersvc_follower:", follower["DATABASE_URL"])
        assert _environment(services["mysql"])["MYSQL_FOLLOWER_USER"] == "usersvc_follower"
        for name in ("REDIS_URL", "CACHE_KEY_PREFIX", "SECRET_KEY"):
            assert follower[name] == web[name], name
        assert services["follower"]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert {"--binlog-row-image=FULL", "--binlog-row-metadata=FULL"} <= set(mysql_options)
        assert "9108/metrics" in " ".join(services["follower"]["healthcheck"]["test"])

    def test_the_tidb_service_keeps_its_cache_apart(self, compose):
        mysql, tidb = (_environment(compose["services"][name]) for name in ("web", "web-tidb"))

        assert mysql["REDIS_URL"] != tidb["REDIS_URL"]
        assert mysql["CACHE_KEY_PREFIX"] != tidb["CACHE_KEY_PREFIX"]

    def test_redis_evicts_least_recently_used_keys_at_its_maxmemory(self, compose):
        command = compose["services"]["redis"]["command"]
        options = dict(zip(command[1::2], command[2::2], strict=True))

        assert options["--maxmemory"] == "256mb"
        assert options["--maxmemory-policy"] == "allkeys-lru"

    def test_clients_reach_nginx_and_only_nginx(self, compose):
        services = compose["services"]
        published = {name: service.get("ports", []) for name, service in services.items()}

        assert {name for name, ports in published.items() if ports} == {"proxy", "proxy-tidb"}
        assert _environment(services["proxy"])["USERSVC_UPSTREAM"] == "web:8000"
        assert _environment(services["proxy-tidb"])["USERSVC_UPSTREAM"] == "web-tidb:8000"

    def test_docker_compose_config(self, tmp_path):
        docker = shutil.which("docker")
        if (
            not docker
            or subprocess.run([docker, "compose", "version"], capture_output=True).returncode
        ):
            pytest.skip("no docker client with the compose plugin here")
        project = ["--project-directory", str(PROJECT_ROOT), "-f", str(COMPOSE_FILE)]
        base = {key: value for key, value in os.environ.items() if key not in ENVIRONMENT}
        # An empty env file, so that a developer's own .env does not count.
        env_file = tmp_path / "empty.env"
        env_file.write_text("")
        project += ["--env-file", str(env_file)]

        filled = subprocess.run(
            [docker, "compose", *project, "--profile", "tidb", "config", "--quiet"],
            env={**base, **ENVIRONMENT}, capture_output=True, text=True,
        )  # fmt: skip
        missing = subprocess.run(
            [docker, "compose", *project, "config", "--quiet"],
            env=base, capture_output=True, text=True,
        )  # fmt: skip

        assert filled.returncode == 0, filled.stderr
        assert missing.returncode != 0
        assert "set SECRET_KEY in .env" in missing.stderr or "MYSQL_" in missing.stderr


@pytest.fixture(scope="module")
def stages() -> list[str]:
    """The Dockerfile's stages, each from its FROM line."""
    return re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)[1:]


class TestDockerfile:
    """No engine builds the image here: what the file says, stage by stage."""

    def test_the_compiler_stays_in_the_build_stage(self, stages):
        assert len(stages) == 2
        assert "gcc" in stages[0]
        assert "gcc" not in stages[1]
        assert "COPY --from=build /venv /venv" in stages[1]

    def test_the_image_runs_as_a_user_of_its_own(self, stages):
        users = re.findall(r"^USER (\S+)$", stages[1], flags=re.MULTILINE)
        assert users and users[-1] not in ("root", "0")

    def test_the_image_checks_healthz(self, stages):
        assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", stages[1], flags=re.MULTILINE)

    def test_the_image_collects_static_files_and_does_not_migrate(self, stages):
        assert "manage.py collectstatic" in stages[1]
        assert "migrate" not in stages[1].split("\nCMD ")[-1]
        assert stages[1].rstrip().endswith('CMD ["gunicorn", "config.wsgi"]')


@pytest.mark.slow
def test_the_web_account_may_do_all_the_service_does_and_no_more(tmp_path):
    """The privileges deploy/mysql grants the web service, on MariaDB: the
    migrations run as an account with all privileges on the database (as the
    mysql image makes MYSQL_USER), then the service under gunicorn serves reads
    and writes as the web account, which cannot change a table."""
    privileges = re.search(r"GRANT (.+?) ON", WEB_ACCOUNT_SQL.read_text())[1]
    mariadb = MariaDBServer(tmp_path)
    mariadb.start()
    try:
        root = MySQLdb.connect(host="127.0.0.1", port=mariadb.port, user="root")
        with root.cursor() as cursor:
            for statement in (
                "CREATE DATABASE usersvc CHARACTER SET utf8mb4",
                "CREATE USER 'usersvc_migrate'@'%' IDENTIFIED BY 'migrate0secret'",
                "GRANT ALL ON `usersvc`.* TO 'usersvc_migrate'@'%'",
                "CREATE USER 'usersvc_web'@'%' IDENTIFIED BY 'web0secret'",
                f"GRANT {privileges} ON `usersvc`.* TO 'usersvc_web'@'%'",
            ):
                cursor.execute(statement)
        root.close()
        address = f"127.0.0.1:{mariadb.port}/usersvc"
        web = WebService(
            tmp_path,
            database_url=f"mysql://usersvc_web:web0secret@{address}",
            **redis_environment(),
            CACHE_KEY_PREFIX=settings.TEST_RUN_PREFIX,
        )
        web.env["DATABASE_URL"] = f"mysql://usersvc_migrate:migrate0secret@{address}"
        web.manage("migrate", "--no-input", "-v0")
        web.env["DATABASE_URL"] = f"mysql://usersvc_web:web0secret@{address}"
        web.prepare()
        web.start()
        try:
            created = web.request(
                "POST", "/api/user", {"username": "ada", "email": "ada@example.com"}
            )
            user = f"/api/user/{created[2]['id']}"
            statuses = [
                created[0],
                web.request("GET", user)[0],
                web.request("GET", user)[0],
                web.request("PATCH", user, {"first_name": "Augusta"})[0],
                web.request("GET", "/api/user")[0],
                web.request("DELETE", user)[0],
                web.request("GET", user)[0],
                web.request("GET", "/readyz", token=None)[0],
            ]
        finally:
            web.stop()
        as_web = MySQLdb.connect(
            host="127.0.0.1", port=mariadb.port, user="usersvc_web", password="web0secret",
            database="usersvc",
        )  # fmt: skip
        with as_web.cursor() as cursor, pytest.raises(MySQLdb.OperationalError) as denied:
            cursor.execute("DROP TABLE users_user")
        as_web.close()
    finally:
        mariadb.stop()

    assert statuses == [201, 200, 200, 200, 200, 204, 404, 200]
    assert denied.value.args[0] == 1142  # command denied to user


def _initdb_statements(script: Path, variables: dict[str, str]) -> list[str]:
    """The SQL a deploy/mysql/initdb script sends, with the image's variables filled in."""
    body = script.read_text().split("<<-EOSQL\n", 1)[1].split("EOSQL", 1)[0]
    body = body.replace("\\`", "`")
    for name, value in variables.items():
        body = body.replace(f"${{{name}}}", value)
    return [line.strip().rstrip(";") for line in body.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_follower_account_may_follow_and_write_nothing_but_its_position(tmp_path):
    """deploy/mysql's follower account on a MariaDB that writes the binary log: made
    before the migrations, as on the image's first start, it passes the
    follower's checks, reads the log and saves its position, and cannot change a
    user."""
    mariadb = MariaDBServer(tmp_path, binlog=True)
    mariadb.start()
    try:
        root = MySQLdb.connect(host="127.0.0.1", port=mariadb.port, user="root", autocommit=True)
        with root.cursor() as cursor:
            cursor.execute("CREATE DATABASE usersvc CHARACTER SET utf8mb4")
            for statement in _initdb_statements(
                FOLLOWER_ACCOUNT_SQL,
                {"MYSQL_FOLLOWER_USER": "usersvc_follower",
                 "MYSQL_FOLLOWER_PASSWORD": "follower0secret", "MYSQL_DATABASE": "usersvc"},
            ):  # fmt: skip
                cursor.execute(statement)
        address = f"127.0.0.1:{mariadb.port}/usersvc"
        web = WebService(
            tmp_path, database_url=f"mysql://root@{address}", **redis_environment(),
            CACHE_KEY_PREFIX=settings.TEST_RUN_PREFIX,
        )  # fmt: skip
        web.manage("migrate", "--no-input", "-v0")
        follower = BinlogFollower(
            tmp_path,
            {**web.env, "DATABASE_URL": f"mysql://usersvc_follower:follower0secret@{address}"},
        )
        follower.start()
        try:
            with root.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM usersvc.users_binlog_position")
                stored = cursor.fetchone()[0]
        finally:
            follower.stop()
        as_follower = MySQLdb.connect(
            host="127.0.0.1", port=mariadb.port, user="usersvc_follower",
            password="follower0secret", database="usersvc",
        )  # fmt: skip
        with as_follower.cursor() as cursor, pytest.raises(MySQLdb.OperationalError) as denied:
            cursor.execute("UPDATE users_user SET first_name = 'x'")
        as_follower.close()
        root.close()
    finally:
        mariadb.stop()

    assert stored == 1
    assert denied.value.args[0] == 1142  # command denied to user

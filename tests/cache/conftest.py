"""Fixtures of the cache tests that follow the binary log (``test_binlog``,
``test_registry``): a MariaDB of their own, with its binary log on."""

from collections.abc import Iterator

import MySQLdb
import pytest

from tests.helpers import follower_environment, manage_py
from tests.servers import MariaDBServer


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory) -> Iterator[MariaDBServer]:
    server = MariaDBServer(tmp_path_factory.mktemp("binlog-mariadb"), binlog=True)
    server.start()
    try:
        root = MySQLdb.connect(host="127.0.0.1", port=server.port, user="root")
        root.cursor().execute("CREATE DATABASE usersvc CHARACTER SET utf8mb4")
        root.close()
        migrated = manage_py(follower_environment(server), "migrate", "--no-input", "-v0")
        assert migrated.returncode == 0, migrated.stderr
        yield server
    finally:
        server.stop()


@pytest.fixture
def sql(mariadb):
    """A connection to the test's MariaDB, in autocommit unless a test begins."""
    connection = MySQLdb.connect(
        host="127.0.0.1", port=mariadb.port, user="root", database="usersvc", autocommit=True
    )
    yield connection.cursor()
    connection.close()

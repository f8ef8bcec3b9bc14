"""A write the database rolled back for a conflict runs again, a bounded number of
times, then gets a 409; any other database error is a 503, never a 500.

The errors are raised into the UPDATE of the user row with the codes MySQL and
TiDB send; TiDB itself does not run here (docs/scaling.md).
"""

import pytest
from django.db import connection

from tests.helpers import FailingUserUpdates
from users import services
from users.models import User

# MySQL and TiDB: lock wait timeout, deadlock. TiDB: optimistic commit conflicts,
# a failed commit it rolled back, a schema change during the transaction.
RETRIED_CODES = [1205, 1213, 8002, 8005, 8022, 8028, 9007]
# TiDB: a Region (a range of rows) has no leader, e.g. while a TiKV node is down.
REGION_UNAVAILABLE = 9005


@pytest.fixture
def user(transactional_db) -> User:
    """Outside a test transaction: a write inside one is never retried."""
    return User.objects.create(username="contended", email="contended@example.com")


@pytest.mark.parametrize("code", RETRIED_CODES)
def test_a_conflict_is_retried_and_the_write_lands(code, user, staff_client):
    failures = FailingUserUpdates(code, times=services.WRITE_ATTEMPTS - 1)

    with connection.execute_wrapper(failures):
        response = staff_client.patch(f"/api/user/{user.id}", {"first_name": "won"}, format="json")

    assert response.status_code == 200
    assert failures.raised == services.WRITE_ATTEMPTS - 1
    assert User.objects.get(pk=user.id).first_name == "won"


def test_a_conflict_that_persists_is_a_409_after_the_last_attempt(user, staff_client):
    failures = FailingUserUpdates(9007, times=100)

    with connection.execute_wrapper(failures):
        response = staff_client.patch(f"/api/user/{user.id}", {"first_name": "lost"}, format="json")

    assert response.status_code == 409
    assert failures.raised == services.WRITE_ATTEMPTS
    assert User.objects.get(pk=user.id).first_name == ""


def test_an_unavailable_region_is_a_503_at_once(user, staff_client):
    failures = FailingUserUpdates(REGION_UNAVAILABLE, times=1)

    with connection.execute_wrapper(failures):
        response = staff_client.patch(f"/api/user/{user.id}", {"first_name": "soon"}, format="json")

    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert failures.raised == 1

"""Concurrent creates, with real threads and their own MySQL connections."""

import threading
import time

from django.db import connection, transaction
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.helpers import blocked_user_inserts
from users import services
from users.models import User

PAYLOAD = {"username": "twin", "email": "twin@example.com", "password": "a-Long-passphrase-7"}


def _post_in_thread(token_key: str, results: list, barrier: threading.Barrier | None = None):
    def run():
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {token_key}")
            if barrier is not None:
                barrier.wait()
            response = client.post("/api/user", PAYLOAD, format="json")
            results.append((response.status_code, response.json()))
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_two_concurrent_identical_creates_give_one_201_and_one_400(transactional_db, staff):
    key = Token.objects.create(user=staff).key
    results: list = []
    barrier = threading.Barrier(2)
    threads = [_post_in_thread(key, results, barrier) for _ in range(2)]
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(status for status, _ in results) == [201, 400]
    assert User.objects.filter(username="twin").count() == 1


def test_a_create_that_loses_the_insert_race_gets_a_400_not_a_500(transactional_db, staff):
    """Drives the race exactly: the loser passes the uniqueness check, then its INSERT
    waits on the winner's uncommitted row and fails with IntegrityError at commit."""
    key = Token.objects.create(user=staff).key
    winner_inserted, release_winner = threading.Event(), threading.Event()

    def winner():
        try:
            with transaction.atomic():
                services.user_create(actor=None, username="twin", email="twin@example.com")
                winner_inserted.set()
                release_winner.wait(timeout=30)
        finally:
            connection.close()

    winner_thread = threading.Thread(target=winner)
    winner_thread.start()
    assert winner_inserted.wait(timeout=30)
    results: list = []
    loser_thread = _post_in_thread(key, results)

    deadline = time.monotonic() + 30
    while blocked_user_inserts() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert blocked_user_inserts() == 1, "the loser's INSERT should wait on the winner's row"
    release_winner.set()
    winner_thread.join(timeout=30)
    loser_thread.join(timeout=30)

    assert results == [
        (
            400,
            {
                "username": ["A user with that username already exists."],
                "email": ["A user with that email already exists."],
            },
        )
    ]

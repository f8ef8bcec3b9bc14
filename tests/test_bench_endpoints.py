"""The benchmark-only endpoint: absent unless enabled, and as guarded as the API when it is."""

import pytest

from users.entries import PUBLIC_FIELDS


def test_floor_is_not_mounted_by_default(reader_client):
    assert reader_client.get("/bench/floor").status_code == 404


@pytest.mark.urls("bench.urls")
class TestFrameworkFloor:
    def test_answers_a_cached_token_with_no_sql(self, reader_client, django_assert_num_queries):
        reader_client.get("/floor")

        with django_assert_num_queries(0):
            response = reader_client.get("/floor")

        assert response.status_code == 200
        assert tuple(response.json()) == PUBLIC_FIELDS

    def test_refuses_an_anonymous_caller(self, anonymous_client):
        assert anonymous_client.get("/floor").status_code == 401

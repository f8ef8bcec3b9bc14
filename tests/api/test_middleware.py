"""Session, authentication and messages middleware stand aside for token API requests
(users/middleware.py), and only for those."""

import pytest
from django.test import RequestFactory

from users.middleware import is_token_api_request


@pytest.mark.parametrize(
    ("path", "authorization", "expected"),
    [
        ("/api/user/1", "Token abc", True),
        ("/api/user/1", "token abc", True),
        ("/bench/floor", "Token abc", True),
        ("/api/user/1", "", False),
        ("/api/user/1", "Bearer abc", False),
        ("/admin/", "Token abc", False),
        ("/api-auth/login/", "Token abc", False),
    ],
)
def test_which_requests_skip_the_session_middleware(path, authorization, expected):
    request = RequestFactory().get(path, HTTP_AUTHORIZATION=authorization)
    assert is_token_api_request(request) is expected


class TestTokenRequests:
    def test_are_answered_without_a_session(self, reader_client, reader):
        response = reader_client.get(f"/api/user/{reader.id}")

        assert response.status_code == 200
        assert not hasattr(response.wsgi_request, "session")
        assert "sessionid" not in response.cookies

    def test_are_answered_in_json_whatever_they_ask(self, reader_client, reader):
        """The browsable API is for sessions: its HTML costs a token's client many
        times what its rate counts (failed on the previous main: it rendered)."""
        for asked in ({"HTTP_ACCEPT": "text/html"}, {"QUERY_STRING": "format=api"}):
            response = reader_client.get(f"/api/user/{reader.id}", **asked)

            assert response.status_code == 200
            assert response["Content-Type"] == "application/json"
            assert response.json()["username"] == "reader"

    def test_to_the_admin_still_get_its_login(self, reader_client):
        response = reader_client.get("/admin/")

        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


def test_a_browser_session_still_reaches_the_api(client, reader):
    client.force_login(reader)
    response = client.get(f"/api/user/{reader.id}")

    assert response.status_code == 200
    assert hasattr(response.wsgi_request, "session")

"""Every operation of the API through the client openapi-python-client generates
from its schema, used as a caller would: each answer through one typed helper,
its type asserted (``assert_type``: exactly the operation's one success shape,
not a union, not Any), its attributes used directly.
``tests/api/test_generated_client.py`` generates the client as ``usersvc_client``,
type-checks this file with ``mypy --strict``, and runs it against a live server:

    python generated_client_calls.py BASE_URL STAFF_TOKEN READER_TOKEN

A type error means an operation has no single success type, or an error shape a
caller cannot name; a failed assertion, that the service answered otherwise.
"""

import sys
from typing import TypeVar, assert_type
from urllib.parse import parse_qs, urlsplit

from usersvc_client import AuthenticatedClient
from usersvc_client.api.user import (
    user_batch,
    user_create,
    user_destroy,
    user_list,
    user_partial_update,
    user_retrieve,
    user_update,
)
from usersvc_client.models import (
    Error,
    FieldErrors,
    PatchedUserUpdateRequest,
    User,
    UserBatch,
    UserCreateRequest,
    UserPage,
    UserUpdateRequest,
)
from usersvc_client.types import Response

T = TypeVar("T")
E = TypeVar("E", Error, FieldErrors)
UNKNOWN_ID = 987654321


def ok(response: Response[T | Error | FieldErrors]) -> T:
    """The answer of a call that succeeded: the operation's one success type."""
    parsed = response.parsed
    if response.status_code >= 300 or parsed is None or isinstance(parsed, Error | FieldErrors):
        raise AssertionError(f"{response.status_code}: {response.content!r}")
    return parsed


def failed(response: Response[T], status: int, shape: type[E]) -> E:
    """The error a call was answered with, parsed as ``shape``."""
    assert response.status_code == status, (response.status_code, response.content)
    assert isinstance(response.parsed, shape), (shape, response.parsed)
    return response.parsed


def main(base_url: str, staff_token: str, reader_token: str) -> None:
    staff = AuthenticatedClient(base_url=base_url, token=staff_token, prefix="Token")
    reader = AuthenticatedClient(base_url=base_url, token=reader_token, prefix="Token")

    created_response = user_create.sync_detailed(
        client=staff,
        body=UserCreateRequest(
            username="ada", email="ada@example.com", password="correct-Horse-battery-9"
        ),
    )
    created = ok(created_response)
    assert_type(created, User)
    assert created.username == "ada" and created.first_name == ""
    assert created_response.headers["Location"] == f"/api/user/{created.id}"
    other = ok(
        user_create.sync_detailed(
            client=staff, body=UserCreateRequest(username="grace", email="grace@example.com")
        )
    )

    # The generator types the 304, which has no body, as Any, and Any | User is
    # Any: the one operation whose answer a caller narrows itself.
    read = user_retrieve.sync_detailed(client=reader, id=created.id)
    user = ok(read)
    assert isinstance(user, User) and user.email == "ada@example.com"
    etag = read.headers["ETag"]
    unchanged = user_retrieve.sync_detailed(client=reader, id=created.id, if_none_match=etag)
    assert (unchanged.status_code, unchanged.parsed) == (304, None)

    first = ok(user_list.sync_detailed(client=reader, page_size=1))
    assert_type(first, UserPage)
    assert len(first.results) == 1 and first.previous is None and first.next_ is not None
    cursor = parse_qs(urlsplit(first.next_).query)["cursor"][0]
    second = ok(user_list.sync_detailed(client=reader, page_size=1, cursor=cursor))
    assert_type(second, UserPage)
    assert second.results[0].id > first.results[0].id
    by_name = ok(user_list.sync_detailed(client=reader, username="ada"))
    assert_type(by_name, UserPage)
    assert [user.id for user in by_name.results] == [created.id]
    by_email = ok(user_list.sync_detailed(client=reader, email="GRACE@example.com"))
    assert [user.username for user in by_email.results] == ["grace"]

    # A list goes out as repeated keys (ids=..&ids=..): every id is answered for.
    batch = ok(
        user_batch.sync_detailed(client=reader, ids=[other.id, UNKNOWN_ID, created.id, other.id])
    )
    assert_type(batch, UserBatch)
    assert [user.id for user in batch.results] == [other.id, created.id]
    assert batch.missing == [UNKNOWN_ID]

    replaced = user_update.sync_detailed(
        client=staff,
        id=created.id,
        body=UserUpdateRequest(username="ada", email="ada@example.com", last_name="Lovelace"),
        if_match=etag,
    )
    assert_type(ok(replaced), User)
    assert ok(replaced).last_name == "Lovelace"
    patched = ok(
        user_partial_update.sync_detailed(
            client=staff,
            id=created.id,
            body=PatchedUserUpdateRequest(first_name="Augusta"),
            if_match=replaced.headers["ETag"],
        )
    )
    assert_type(patched, User)
    assert (patched.first_name, patched.last_name) == ("Augusta", "Lovelace")

    # Each error parses as the shape it is, a `detail` never as per-field messages.
    duplicate = user_create.sync_detailed(
        client=staff, body=UserCreateRequest(username="ada", email="ada@example.com")
    )
    assert set(failed(duplicate, 400, FieldErrors).additional_keys) == {"username", "email"}
    not_json = staff.get_httpx_client().post(
        "/api/user/", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    parse_error = user_create._build_response(client=staff, response=not_json)
    assert "JSON parse error" in failed(parse_error, 400, Error).detail
    bad_ids = user_batch.sync_detailed(client=reader, ids=[created.id, 0])
    assert failed(bad_ids, 400, FieldErrors)["ids"]
    stale = user_partial_update.sync_detailed(
        client=staff, id=created.id, body=PatchedUserUpdateRequest(first_name="A"), if_match=etag
    )
    assert failed(stale, 412, Error).detail
    forbidden = user_destroy.sync_detailed(client=reader, id=created.id)
    assert failed(forbidden, 403, Error).detail
    stranger = AuthenticatedClient(base_url=base_url, token="0" * 40, prefix="Token")
    assert failed(user_retrieve.sync_detailed(client=stranger, id=created.id), 401, Error).detail

    deleted = user_destroy.sync_detailed(client=staff, id=created.id, if_match="*")
    assert deleted.status_code == 204
    gone = user_retrieve.sync_detailed(client=reader, id=created.id)
    assert failed(gone, 404, Error).detail


if __name__ == "__main__":
    main(*sys.argv[1:4])
    print("every operation answered as documented")

"""The OpenAPI description: valid, complete for every status each operation answers,
and true to what the API actually sends."""

import json

import jsonschema
import pytest
from django.core.management import call_command

# Every status each operation can answer. 429 comes from the throttles, 503 when
# MySQL does not answer, 409 when a write keeps conflicting with concurrent ones.
_ANY = {"401", "429", "503"}
_WRITE = {*_ANY, "400", "403", "409", "413", "415"}
_CONDITIONAL = {"412", "428"}
EXPECTED_STATUSES = {
    ("/api/user/", "get"): {*_ANY, "200", "400", "404"},
    ("/api/user/", "post"): {*_WRITE, "201"},
    ("/api/user/{id}/", "get"): {*_ANY, "200", "304", "404"},
    ("/api/user/{id}/", "put"): {*_WRITE, *_CONDITIONAL, "200", "404"},
    ("/api/user/{id}/", "patch"): {*_WRITE, *_CONDITIONAL, "200", "404"},
    ("/api/user/{id}/", "delete"): {*_ANY, *_CONDITIONAL, "204", "403", "404", "409"},
}


@pytest.fixture(scope="module")
def schema(tmp_path_factory, django_db_blocker) -> dict:
    """The schema as ``manage.py spectacular --validate --fail-on-warn`` writes it: the
    command fails on any error or warning, and on a schema that is not valid OpenAPI 3."""
    path = tmp_path_factory.mktemp("openapi") / "schema.json"
    with django_db_blocker.unblock():
        call_command(
            "spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json",
            "--file", str(path),
        )  # fmt: skip
    return json.loads(path.read_text())


def _operation(schema: dict, path: str, method: str) -> dict:
    return schema["paths"][path][method]


def test_every_operation_documents_every_status_it_answers(schema):
    documented = {
        (path, method): set(operation["responses"])
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    assert documented == EXPECTED_STATUSES


def test_x_cache_is_documented_on_reads(schema):
    responses = _operation(schema, "/api/user/{id}/", "get")["responses"]
    for status in ("200", "404"):
        header = responses[status]["headers"]["X-Cache"]
        assert sorted(header["schema"]["enum"]) == ["BYPASS", "HIT", "MISS"]


def test_token_authentication_is_documented(schema):
    assert schema["components"]["securitySchemes"]["tokenAuth"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": schema["components"]["securitySchemes"]["tokenAuth"]["description"],
    }
    for operations in schema["paths"].values():
        for operation in operations.values():
            assert {"tokenAuth": []} in operation["security"]


def test_the_user_shape_is_the_public_projection(schema, reader_client, reader):
    from users.entries import PUBLIC_FIELDS

    documented = schema["components"]["schemas"]["User"]["properties"]
    assert set(documented) == set(PUBLIC_FIELDS)
    assert set(reader_client.get(f"/api/user/{reader.id}").json()) == set(documented)
    assert "password" not in documented
    assert schema["components"]["schemas"]["UserCreateRequest"]["properties"]["password"][
        "writeOnly"
    ]


def test_what_the_api_sends_is_documented(
    schema,
    staff_client,
    reader_client,
    anonymous_client,
    reader,
    django_capture_on_commit_callbacks,
):
    """A real request for most documented answers; each status must be in the schema."""
    with django_capture_on_commit_callbacks(execute=True):
        created = staff_client.post(
            "/api/user", {"username": "doc", "email": "doc@x.io"}, format="json"
        )
    user_id = created.json()["id"]
    sent = {
        ("/api/user/", "post", created.status_code),
        ("/api/user/", "get", reader_client.get("/api/user").status_code),
        ("/api/user/", "get", reader_client.get("/api/user?cursor=bogus").status_code),
        ("/api/user/", "get", anonymous_client.get("/api/user").status_code),
        ("/api/user/{id}/", "get", reader_client.get(f"/api/user/{user_id}").status_code),
        ("/api/user/{id}/", "get", reader_client.get("/api/user/999999").status_code),
        ("/api/user/", "post", reader_client.post("/api/user", {}, format="json").status_code),
        ("/api/user/", "post", staff_client.post("/api/user", {}, format="json").status_code),
        (
            "/api/user/",
            "post",
            staff_client.post("/api/user", "x", content_type="text/plain").status_code,
        ),
        (
            "/api/user/{id}/",
            "patch",
            staff_client.patch(f"/api/user/{user_id}", {"first_name": "D"}).status_code,
        ),
        ("/api/user/{id}/", "delete", staff_client.delete(f"/api/user/{user_id}").status_code),
        ("/api/user/{id}/", "delete", staff_client.delete(f"/api/user/{user_id}").status_code),
    }
    assert {status for _, _, status in sent} == {200, 201, 204, 400, 401, 403, 404, 415}
    for path, method, status in sent:
        assert str(status) in _operation(schema, path, method)["responses"], (path, method, status)


def _documented_body(schema: dict, path: str, method: str, status: str) -> dict:
    """The JSON Schema of a documented answer, with the components it refers to;
    OpenAPI 3.0's ``nullable`` spelt as JSON Schema's null type."""

    def spelt(node):
        if isinstance(node, dict):
            node = {key: spelt(value) for key, value in node.items()}
            if node.pop("nullable", False):
                node["type"] = [node["type"], "null"]
            return node
        if isinstance(node, list):
            return [spelt(value) for value in node]
        return node

    content = _operation(schema, path, method)["responses"][status]["content"]
    body = content["application/json"]["schema"]
    return spelt({**body, "components": schema["components"]})


def test_every_shape_of_the_list_is_its_documented_answer(schema, reader_client, reader):
    """The list answers a page, or the users of ?ids=: one documented 200 covers both."""
    documented = _documented_body(schema, "/api/user/", "get", "200")
    validator = jsonschema.Draft4Validator(documented, format_checker=jsonschema.FormatChecker())
    for query in ("", "?page_size=1", f"?ids={reader.id},999999", f"?username={reader.username}"):
        body = reader_client.get(f"/api/user{query}").json()
        errors = [error.message for error in validator.iter_errors(body)]
        assert errors == [], query


def test_schema_and_swagger_ui_are_served_without_a_cdn(client, reader):
    client.force_login(reader)
    schema_response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    docs = client.get("/api/docs/")

    assert schema_response.status_code == 200
    assert schema_response.json()["info"]["title"] == "User service API"
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn." not in html

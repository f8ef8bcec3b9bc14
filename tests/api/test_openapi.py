"""The OpenAPI description: valid, complete for every status each operation answers,
and true to what the API actually sends."""

import json
import re

import jsonschema
import pytest
import yaml
from django.core.management import call_command

from users.queries import UserPagination

# Every status each operation can answer. 429 comes from the throttles, 503 when
# MySQL does not answer, 409 when a write keeps conflicting with concurrent ones.
_ANY = {"401", "429", "503"}
_WRITE = {*_ANY, "400", "403", "409", "413", "415"}
_CONDITIONAL = {"412", "428"}
EXPECTED_STATUSES = {
    ("/api/user/", "get"): {*_ANY, "200", "400", "404"},
    ("/api/user/batch/", "get"): {*_ANY, "200", "400"},
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
    """OpenAPI's apiKey scheme cannot spell the value's `Token ` prefix, and generated
    clients default to `Bearer`: the scheme and every operation say it in words."""
    scheme = schema["components"]["securitySchemes"]["tokenAuth"]
    assert scheme == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": scheme["description"],
    }
    assert "`Token <key>`" in scheme["description"]
    assert "not `Bearer`" in scheme["description"]
    for operations in schema["paths"].values():
        for operation in operations.values():
            assert {"tokenAuth": []} in operation["security"]
            assert "`Authorization: Token <key>`" in operation["description"]


def _descriptions(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["description"]] if isinstance(node.get("description"), str) else []
        return found + [text for value in node.values() for text in _descriptions(value)]
    if isinstance(node, list):
        return [text for value in node for text in _descriptions(value)]
    return []


def test_no_description_names_the_code_behind_it(schema):
    """What a client reads is about the API: no module path, no docstring markup."""
    leaks = [
        text
        for text in _descriptions(schema)
        if re.search(r"\b(users|config|rest_framework)\.\w", text) or "``" in text
    ]
    assert leaks == []
    assert "never shown" in schema["components"]["schemas"]["User"]["description"]


def test_the_user_shape_is_the_public_projection(schema, reader_client, reader):
    from users.entries import PUBLIC_FIELDS

    documented = schema["components"]["schemas"]["User"]["properties"]
    assert set(documented) == set(PUBLIC_FIELDS)
    assert set(reader_client.get(f"/api/user/{reader.id}").json()) == set(documented)
    assert "password" not in documented
    assert schema["components"]["schemas"]["UserCreateRequest"]["properties"]["password"][
        "writeOnly"
    ]


def test_the_list_documents_the_page_only(schema):
    """Each operation answers one shape: many users by id are ``user_batch``'s, and
    ``?ids=`` on the list, which still answers (deprecated), is not documented."""
    operation = _operation(schema, "/api/user/", "get")
    parameters = {parameter["name"] for parameter in operation["parameters"]}
    assert parameters == {"cursor", "page_size", "username", "email"}
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/UserPage"}
    batch = _operation(schema, "/api/user/batch/", "get")
    assert batch["operationId"] == "user_batch"
    answer = batch["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/UserBatch"}


def test_ids_are_an_array_sent_as_repeated_keys(schema):
    (ids,) = _operation(schema, "/api/user/batch/", "get")["parameters"]
    assert (ids["name"], ids["in"], ids["required"]) == ("ids", "query", True)
    assert (ids["style"], ids["explode"]) == ("form", True)
    assert ids["schema"]["type"] == "array"
    assert ids["schema"]["items"] == {
        "type": "integer",
        "format": "int64",
        "minimum": 1,
        "maximum": 2**63 - 1,
    }
    assert (ids["schema"]["minItems"], ids["schema"]["maxItems"]) == (1, 100)


def test_page_size_documents_the_bounds_the_service_holds(schema, reader_client):
    (page_size,) = [
        parameter
        for parameter in _operation(schema, "/api/user/", "get")["parameters"]
        if parameter["name"] == "page_size"
    ]
    bounds = page_size["schema"]
    assert bounds == {
        "type": "integer",
        "minimum": 1,
        "maximum": UserPagination.max_page_size,
        "default": UserPagination.page_size,
    }
    for size, status in ((bounds["minimum"] - 1, 400), (bounds["minimum"], 200)):
        assert reader_client.get(f"/api/user?page_size={size}").status_code == status
    for size, status in ((bounds["maximum"], 200), (bounds["maximum"] + 1, 400)):
        assert reader_client.get(f"/api/user?page_size={size}").status_code == status


def test_error_shapes_are_told_apart_in_the_order_given(schema):
    """Client generators try a oneOf's shapes in order and keep the first that
    parses: ``Error`` needs its ``detail``, ``FieldErrors`` refuses one."""
    components = schema["components"]["schemas"]
    assert components["BadRequest"] == {
        "oneOf": [
            {"$ref": "#/components/schemas/Error"},
            {"$ref": "#/components/schemas/FieldErrors"},
        ]
    }
    assert components["Error"]["required"] == ["detail"]
    assert components["FieldErrors"]["not"] == {"required": ["detail"]}
    for (path, method), statuses in EXPECTED_STATUSES.items():
        if "400" in statuses:
            body = _operation(schema, path, method)["responses"]["400"]["content"]
            ref = body["application/json"]["schema"]["$ref"]
            expected = "BadRequest" if method in {"post", "put", "patch"} else "FieldErrors"
            assert ref == f"#/components/schemas/{expected}", (path, method)


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
        ("/api/user/", "get", reader_client.get("/api/user?page_size=0").status_code),
        (
            "/api/user/batch/",
            "get",
            reader_client.get(f"/api/user/batch?ids={user_id}").status_code,
        ),
        ("/api/user/batch/", "get", reader_client.get("/api/user/batch?ids=x").status_code),
        ("/api/user/batch/", "get", anonymous_client.get("/api/user/batch?ids=1").status_code),
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


def _validator(schema: dict, path: str, method: str, status: str) -> jsonschema.Draft4Validator:
    documented = _documented_body(schema, path, method, status)
    return jsonschema.Draft4Validator(documented, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize(
    ("path", "queries"),
    [
        ("/api/user/", ["", "?page_size=1", "?username={username}", "?email=nobody@x.io"]),
        ("/api/user/batch/", ["?ids={id}&ids=999999", "?ids={id},{id}"]),
    ],
)
def test_every_answer_of_a_read_is_its_documented_shape(
    schema, reader_client, reader, path, queries
):
    validator = _validator(schema, path, "get", "200")
    for query in queries:
        url = path + query.format(id=reader.id, username=reader.username)
        body = reader_client.get(url).json()
        assert [error.message for error in validator.iter_errors(body)] == [], url


def test_each_bad_request_matches_one_documented_shape(schema, reader_client, staff_client):
    """A body a JSON Schema validator and a generated client both read as one shape."""
    bad_query = _validator(schema, "/api/user/batch/", "get", "400")
    body = reader_client.get("/api/user/batch?ids=0").json()
    assert [error.message for error in bad_query.iter_errors(body)] == []
    bad_body = _validator(schema, "/api/user/", "post", "400")
    detail = schema["components"]["schemas"]["Error"]
    field_errors = schema["components"]["schemas"]["FieldErrors"]
    for response, shape in (
        (staff_client.post("/api/user", {}, format="json"), field_errors),
        (staff_client.post("/api/user", "{x", content_type="application/json"), detail),
    ):
        body = response.json()
        assert [error.message for error in bad_body.iter_errors(body)] == [], body
        for other in (detail, field_errors):
            matches = jsonschema.Draft4Validator(other).is_valid(body)
            assert matches == (other is shape), body


@pytest.mark.parametrize("accept", [None, "application/yaml", "application/vnd.oai.openapi"])
def test_the_schema_endpoint_answers_errors_in_json(client, db, accept):
    """drf-spectacular's YAML renderer, the endpoint's default, writes DRF's error
    detail as a mapping of `string` and `code`: errors are JSON instead."""
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    response = client.get("/api/schema/", **headers)

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Authentication credentials were not provided."}


def test_the_yaml_schema_is_the_json_one(client, reader):
    client.force_login(reader)
    as_yaml = client.get("/api/schema/")
    as_json = client.get("/api/schema/", HTTP_ACCEPT="application/json")

    assert as_yaml["Content-Type"].startswith("application/vnd.oai.openapi")
    assert yaml.safe_load(as_yaml.content) == as_json.json()


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

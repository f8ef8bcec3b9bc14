"""Requests that cost the server far more than a cached read count for more, or
cost less: the API description is built once per process, and a page of the
browsable API counts ``BROWSABLE_COST`` more than its JSON. One client's budget is
shared by all its connections (the counts are in Redis), so several connections
get no more than one."""

import json

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from users.schema import view as schema_view
from users.throttling import BROWSABLE_COST


@pytest.fixture
def schema_builds(monkeypatch) -> list[int]:
    """The description's builds in this process, from a fresh start."""
    monkeypatch.setattr(schema_view, "_built", {})
    builds = []
    build = SchemaGenerator.get_schema

    def counted(self, *args, **kwargs):
        builds.append(1)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(SchemaGenerator, "get_schema", counted)
    return builds


def _connections(user, count: int) -> list[APIClient]:
    """``count`` clients holding one token: one client's connections."""
    key = Token.objects.get_or_create(user=user)[0].key
    clients = [APIClient() for _ in range(count)]
    for client in clients:
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return clients


class TestTheDescription:
    def test_it_is_built_once_per_form_whatever_the_connections(self, rates, schema_builds, reader):
        """Four connections of one token ask for it in YAML and JSON as fast as their
        shared rate lets them: two builds in all, and the rate holds across them
        (failed on the previous main: every request built it again)."""
        rates(user="12/min")
        connections = _connections(reader, 4)
        answers = [
            connection.get("/api/schema/?format=json" if n % 2 else "/api/schema/")
            for n in range(4)
            for connection in connections
        ]

        statuses = [answer.status_code for answer in answers]
        assert statuses.count(200) == 12 and statuses.count(429) == 4
        assert len(schema_builds) == 2
        served = [a for a in answers if a.status_code == 200]
        assert len({a.content for a in served}) == 2
        assert {a["Content-Type"] for a in served} == {
            "application/vnd.oai.openapi; charset=utf-8",
            "application/vnd.oai.openapi+json",
        }

    def test_the_kept_description_is_the_one_built_for_the_request(
        self, schema_builds, reader_client
    ):
        first = reader_client.get("/api/schema/?format=json")
        again = reader_client.get("/api/schema/?format=json", HTTP_HOST="127.0.0.1")

        built = SchemaGenerator().get_schema(request=None, public=True)
        assert json.loads(first.content) == json.loads(json.dumps(built))
        assert again.content == first.content

    @pytest.mark.parametrize(
        "query", ["version=v{n}", "lang=x{n}", "lang=en&version=z{n}", "lang={language}"]
    )
    def test_no_query_makes_a_new_form(self, schema_builds, reader_client, query):
        """``version`` takes only what the settings allow, and ``lang`` nothing (the
        description is written in one language): a client cannot make each request
        a new build, nor fill the process with forms (failed on the previous main
        for the languages Django knows: five builds)."""
        for n, language in enumerate(["de", "fr", "ja", "pt-br", "ru"]):
            query_string = query.format(n=n, language=language)
            assert reader_client.get("/api/schema/?" + query_string).status_code == 200

        assert len(schema_builds) == 1
        assert len(schema_view._built) == 1


class TestBrowsablePages:
    def test_a_page_counts_its_weight_across_a_users_sessions(self, rates, client, reader):
        """Three sessions of one user (three browsers) share its budget; HTML pages
        run out where as many JSON reads do not (failed on the previous main: a
        browsable page counted one)."""
        budget = 3 * BROWSABLE_COST
        rates(user=f"{budget}/min")
        sessions = []
        for _ in range(3):
            session = type(client)()
            session.force_login(reader)
            sessions.append(session)
        url = f"/api/user/{reader.id}"

        json_reads = [s.get(url, HTTP_ACCEPT="application/json").status_code for s in sessions]
        pages = [s.get(url + "?format=api").status_code for s in sessions for _ in range(2)]

        assert json_reads == [200] * 3
        assert pages.count(200) == 2 and pages.count(429) == 4

    def test_the_costliest_page_still_gets_through_once_a_window(self, rates, client, reader):
        rates(user="10/min")
        client.force_login(reader)

        statuses = [client.get("/api/user?format=api").status_code for _ in range(2)]

        assert statuses == [200, 429]

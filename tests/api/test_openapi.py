"""The OpenAPI document is the route table (one declaration per route), the bounds it
shows are the bounds enforced, and 405 answers carry ``Allow`` — against a real daemon
(hypercorn on 127.0.0.1, port 0). schemathesis checks the whole of it in
``test_schemathesis.py``; these pin the cases issue 18 names."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from openapi_spec_validator import validate
from quart_trio import QuartTrio
from werkzeug.routing import Rule

from api._daemon import Daemon
from api._http._app import BLUEPRINTS
from api._http._routes import ROUTES

from ._daemon import TIMEOUT, client, running_daemon, token
from ._plugin import write_web_plugin
from .test_app import assert_problem


@pytest.fixture
async def daemon(tmp_path: Path) -> Daemon:  # type: ignore[misc]
    home = tmp_path / "home"
    write_web_plugin(home / "plugins")
    async with running_daemon(home, open_reads=False) as running:
        yield running


async def test_the_document_is_the_route_table(daemon: Daemon) -> None:
    with trio.fail_after(TIMEOUT):
        async with client(daemon, await token(daemon, "admin")) as http:
            document = (await http.get("/openapi.json")).json()
    validate(document)  # a valid OpenAPI 3.1 document
    paths = document["paths"]
    # Every rule the app serves (but the plugins' catch-all) is a declared operation.
    app_rules = {
        (method.lower(), rule.rule)
        for rule in app_rules_of_the_blueprints()
        for method in (rule.methods or ()) - {"HEAD", "OPTIONS"}
    }
    declared = {(route.method, route.rule) for route in ROUTES}
    assert app_rules == declared
    assert {(r.method, r.path) for r in ROUTES} <= {
        (method, path) for path, operations in paths.items() for method in operations
    }
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=0.0.4; charset=utf-8"]
    stream = paths["/api/v1/events/stream"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    assert "201" in paths["/api/v1/faults"]["post"]["responses"]
    assert "202" in paths["/api/v1/chaos"]["post"]["responses"]
    assert "202" in paths["/api/v1/events"]["post"]["responses"]
    install = paths["/api/v1/plugins/install"]["post"]
    assert install["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == [
        "archive"
    ]
    assert install["responses"]["201"]["content"]["application/json"]["schema"]["required"]
    assert install["security"] == [{"bearer": ["plugins:manage"]}]
    limit = paths["/api/v1/dead-letters"]["get"]["parameters"][0]
    assert limit["schema"] == {"type": "integer", "minimum": 0, "maximum": 10000, "default": 100}
    # Reads need a token (open_reads is off); health is open on loopback.
    assert paths["/api/v1/plugins"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in paths["/healthz"]["get"]
    # A plugin's routes, with what is known of them.
    reports = paths["/api/v1/web/reports"]["get"]
    assert reports["security"] == [{"bearer": ["web.read"]}]
    assert "403" in reports["responses"]
    assert "application/json" in reports["responses"]["default"]["content"]


def app_rules_of_the_blueprints() -> list[Rule]:
    """The rules ``create_app`` registers, but the plugins' catch-all."""
    app = QuartTrio("rules")
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return [
        rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in ("static", "plugin_endpoints.plugin_endpoint")
    ]


async def test_what_the_schema_refuses_is_a_400_naming_the_field(daemon: Daemon) -> None:
    with trio.fail_after(TIMEOUT):
        async with client(daemon, await token(daemon, "admin")) as http:
            assert_problem(
                await http.get("/api/v1/dead-letters?limit="),
                400,
                "the query parameter 'limit' must be an integer (integer >= 0 <= 10000)",
            )
            assert (await http.get("/api/v1/dead-letters?limit=0")).json()["count"] == 0
            assert_problem(
                await http.post(
                    "/api/v1/faults", json={"target": "/x", "spec": "crash", "id": None}
                ),
                400,
                "'id' must be str, got None",
            )
            assert_problem(
                await http.post("/api/v1/events", json={"topic": ""}),
                400,
                "'topic' is refused, got ''; expected dot-separated words",
            )
            assert_problem(
                await http.post("/api/v1/faults", json={"target": "/x"}),
                400,
                "the body needs 'spec'",
            )
            assert_problem(
                await http.get("/api/v1/faults?all=maybe"),
                400,
                "the query parameter 'all' must be true or false",
            )
            assert_problem(
                await http.post(
                    "/api/plugins/load", json={"plugin_name": "web", "timeout_seconds": 1e9}
                ),
                400,
                "'timeout_seconds' is at most 3600, got 1000000000.0; expected a whole number",
            )
            # A path parameter no resource can have: nothing is there.
            assert_problem(await http.get("/api/v1/plugins/Not_A_Name"), 404, "'name'")


async def test_405_answers_carry_allow(daemon: Daemon) -> None:
    with trio.fail_after(TIMEOUT):
        async with client(daemon, await token(daemon, "admin")) as http:
            for method in ("TRACE", "BAZ27862", "PUT"):
                answer = await http.request(method, "/healthz")
                assert_problem(answer, 405, f"{method} is not allowed on /healthz; use GET")
                assert answer.headers["Allow"] == "GET, HEAD"
            # A concrete path is its own resource (as OpenAPI matches paths).
            answer = await http.delete("/api/v1/plugins/discover")
            assert_problem(answer, 405, "use GET")
            assert answer.headers["Allow"] == "GET, HEAD"
            answer = await http.request("TRACE", "/api/v1/web/items/1")  # a plugin's route
            assert_problem(answer, 405, "use PUT")
            assert answer.headers["Allow"] == "PUT"
            options = await http.options("/api/v1/plugins/web")
            assert options.status_code == 204
            assert options.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS"
            assert_problem(await http.request("TRACE", "/nowhere"), 404, "no route /nowhere")


async def test_an_answer_before_the_body_arrived_closes_the_connection(daemon: Daemon) -> None:
    """A 401 given before the body arrived left that body on the connection, and the
    client's next request there hung (found by schemathesis): such an answer says
    ``Connection: close``, and the client opens a new connection."""
    assert daemon.url is not None
    host, port = daemon.url.removeprefix("http://").split(":")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            head = (
                f"POST /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 16\r\n\r\n"
            )
            await stream.send_all(head.encode())  # the body is not sent yet
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 401")
        assert b"\r\nconnection: close\r\n" in answer.lower()
        # A request without a body keeps its connection, whatever the answer.
        async with client(daemon) as http:
            assert_problem(await http.get("/api/v1/plugins"), 401)
            assert "connection" not in (await http.get("/api/v1/plugins")).headers

"""The HTTP API against a real daemon (hypercorn on 127.0.0.1, port 0): every core route,
the plugin routes, and the 400/401/403/404/405/413/429/502/503 paths."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from api._auth import TokenStore
from api._daemon import Daemon
from cws_actors._packaging._archive import make_archive

from ..plugins._fixtures import write_plugin
from ..plugins.test_host import wait_until
from ._daemon import TIMEOUT, client, running_daemon, token
from ._plugin import write_web_plugin

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, detail: str = "") -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == status
    assert detail in body["detail"]
    return body  # type: ignore[no-any-return]


@pytest.fixture
async def daemon(tmp_path: Path) -> Daemon:  # type: ignore[misc]
    home = tmp_path / "home"
    write_web_plugin(home / "plugins")
    async with running_daemon(home) as running:
        yield running


async def test_health_readiness_and_metrics_are_open_on_loopback(daemon: Daemon) -> None:
    with trio.fail_after(TIMEOUT):
        async with client(daemon) as http:
            assert (await http.get("/healthz")).json()["status"] == "ok"
            assert (await http.get("/readyz")).json() == {"status": "ready"}
            await http.get("/api/v1/web/open")
            metrics = (await http.get("/metrics")).text
    assert 'cws_messages_routed_total{actor="/plugins/web"} 1.0' in metrics
    assert 'cws_actor_ready{actor="/plugins/web"} 1.0' in metrics
    assert 'cws_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in metrics
    assert "cws_plugin_handler_seconds_bucket" in metrics


async def test_every_mutating_route_needs_a_token_and_its_scope(daemon: Daemon) -> None:
    mutations = [
        ("POST", "/api/v1/plugins/web/unload", None),
        ("POST", "/api/v1/plugins/install", None),
        ("DELETE", "/api/v1/plugins/web", None),
        ("POST", "/api/plugins/load", {"plugin_name": "web"}),
        ("POST", "/api/plugins/unload", {"plugin_name": "web"}),
        ("POST", "/api/v1/actors/plugins/web/restart", None),
        ("POST", "/api/v1/actors/plugins/web/clear-quarantine", None),
        ("POST", "/api/v1/events", {"topic": "a.b"}),
        ("POST", "/api/v1/cli/execute", {"args": ["web", "--name", "x"]}),
    ]
    weak = await token(daemon, "web.read")
    with trio.fail_after(TIMEOUT):
        async with client(daemon) as anonymous, client(daemon, weak) as limited:
            for method, path, body in mutations:
                answer = await anonymous.request(method, path, json=body)
                assert_problem(answer, 401, "needs a token")
                assert answer.headers["www-authenticate"].startswith("Bearer")
                if path != "/api/v1/cli/execute":  # any valid token may run commands
                    assert_problem(await limited.request(method, path, json=body), 403, "scope")
            bogus = {"Authorization": "Bearer cws_0123456789abcdef_" + "x" * 43}
            assert_problem(await anonymous.get("/api/v1/daemon", headers=bogus), 401, "not valid")
            junk = {"Authorization": "Basic dXNlcjpwYXNz"}
            assert_problem(await anonymous.get("/api/v1/daemon", headers=junk), 401, "Bearer")
    assert (await daemon.host.status("web")).loaded  # nothing happened


# Every GET route, core and plugin, the open ones included; and a path that matches none.
READS = [
    "/", "/healthz", "/readyz", "/metrics", "/api/v1/daemon", "/openapi.json",
    "/api/v1/plugins", "/api/v1/plugins/discover", "/api/v1/plugins/web", "/api/plugins",
    "/api/plugins/discover", "/api/plugins/web", "/api/v1/actors", "/api/v1/actors/plugins/web",
    "/api/v1/dead-letters", "/api/v1/events/stream", "/api/v1/cli/commands", "/api/v1/faults",
    "/api/v1/faults/firings", "/api/v1/faults/f-1", "/api/v1/chaos", "/api/v1/chaos/c-1",
    "/api/v1/instances", "/api/v1/instances/aws/i-1", "/api/v1/web/open", "/no/such/route",
]  # fmt: skip


async def test_a_presented_token_that_is_invalid_is_a_401_on_every_route(daemon: Daemon) -> None:
    """Reads and the open health routes too: the client meant to authenticate, so a bad
    token is never served as anonymous. Without a token, the open routes stay open."""
    admin = await token(daemon, "admin")
    revoked = await token(daemon, "admin")
    await TokenStore(daemon.host.state).revoke(revoked.split("_")[1])
    bad = {
        "unknown": "Bearer cws_0123456789abcdef_" + "x" * 43,
        "revoked": f"Bearer {revoked}",
        "wrong secret": f"Bearer {admin[:-4]}AAAA",
        "not a cws token": "Bearer hunter2",
        "another scheme": "Basic dXNlcjpwYXNz",
    }
    with trio.fail_after(TIMEOUT):
        async with client(daemon) as http:
            for path in READS:
                for what, header in bad.items():
                    answer = await http.get(path, headers={"Authorization": header})
                    assert answer.status_code == 401, (path, what, answer.text)
                    assert answer.headers["www-authenticate"].startswith("Bearer")
            for path in ("/healthz", "/readyz", "/metrics", "/api/v1/plugins", "/api/v1/web/open"):
                assert (await http.get(path)).status_code == 200, path  # no token: open
                good = await http.get(path, headers={"Authorization": f"Bearer {admin}"})
                assert good.status_code == 200, path


async def test_revoked_and_expired_tokens_are_refused(daemon: Daemon) -> None:
    from api._auth import issue_token

    revoked = await issue_token(daemon.host.state, name="r", scopes=["admin"], ttl=None)
    await TokenStore(daemon.host.state).revoke(revoked.record.id)
    expired = await issue_token(daemon.host.state, name="e", scopes=["admin"], ttl=0.001)
    assert expired.record.expires_at is not None
    expires_at = expired.record.expires_at

    async def expired_by_now() -> bool:
        return time.time() > expires_at  # expiry is on the wall clock: wait until it passes

    await wait_until(expired_by_now)
    with trio.fail_after(TIMEOUT):
        async with client(daemon, revoked.token) as http:
            assert_problem(await http.get("/api/v1/daemon"), 401, "revoked")
        async with client(daemon, expired.token) as http:
            assert_problem(await http.get("/api/v1/daemon"), 401, "expired")


async def test_plugins_and_their_operations(daemon: Daemon) -> None:
    admin = await token(daemon, "plugins:manage")
    with trio.fail_after(TIMEOUT):
        async with client(daemon, admin) as http:
            listing = (await http.get("/api/v1/plugins")).json()
            assert listing["count"] == 1
            (web,) = listing["plugins"]
            assert (web["name"], web["state"], web["ready"]) == ("web", "running", True)
            assert "GET /api/v1/web/open" in web["capabilities"]["api_endpoints"]
            assert web["capabilities"]["cli_commands"] == ["web"]
            found = (await http.get("/api/v1/plugins/discover")).json()
            assert found["plugins"][0]["loaded"] is True
            assert found["directory"].endswith("plugins")
            detail = (await http.get("/api/v1/plugins/web")).json()
            assert [h["event"] for h in detail["history"]][-1] == "loaded"
            answer = await http.post("/api/v1/plugins/web/disable")
            assert (answer.json()["enabled"], answer.json()["loaded"]) == (False, False)
            assert_problem(await http.post("/api/v1/plugins/web/load"), 409, "disabled")
            assert (await http.post("/api/v1/plugins/web/enable")).json()["state"] == "running"
            assert (await http.post("/api/v1/plugins/web/reload")).json()["restarts"] == 0
            assert_problem(await http.post("/api/v1/plugins/web/explode"), 404, "operation")
            assert_problem(await http.get("/api/v1/plugins/ghost"), 404, "ghost")


async def test_bad_bodies_get_a_400_or_413_that_says_what_is_wrong(daemon: Daemon) -> None:
    publisher = await token(daemon, "events:publish")
    with trio.fail_after(TIMEOUT):
        async with client(daemon, publisher) as http:
            malformed = await http.post("/api/v1/events", content=b'{"topic": ')
            assert_problem(malformed, 400, "not valid JSON")
            assert_problem(await http.post("/api/v1/events", json=[1]), 400, "JSON object")
            assert_problem(
                await http.post("/api/v1/events", json={"topic": "a.*"}), 400, "wildcards"
            )
            huge = json.dumps({"topic": "a.b", "payload": "x" * (2 * 1024 * 1024)})
            assert_problem(await http.post("/api/v1/events", content=huge), 413, "at most")
            assert_problem(await http.get("/api/v1/nothing/here"), 404, "no route")
            assert_problem(await http.delete("/healthz"), 405, "not allowed")
            assert_problem(await http.get("/api/v1/dead-letters?limit=x"), 400, "limit")


async def test_plugin_endpoints_are_routed_with_auth_and_scopes(daemon: Daemon) -> None:
    reader = await token(daemon, "web.read")
    other = await token(daemon, "events:publish")
    with trio.fail_after(TIMEOUT):
        async with client(daemon) as anonymous, client(daemon, reader) as http:
            opened = await anonymous.get("/api/v1/web/open?x=1")
            assert opened.json() == {"hello": None, "scopes": [], "query": {"x": "1"}}
            assert_problem(await anonymous.get("/api/v1/web/private"), 401, "token")
            assert (await http.get("/api/v1/web/private")).json()["hello"] == "test"
            assert (await http.get("/api/v1/web/reports")).json()["scopes"] == ["web.read"]
            async with client(daemon, other) as weak:
                assert_problem(await weak.get("/api/v1/web/reports"), 403, "web.read")
            put = await http.put("/api/v1/web/items/42", json={"n": 1})
            assert put.status_code == 201
            assert put.json() == {"item": "42", "body": {"n": 1}}
            assert put.headers["x-plugin"] == "web"
            assert_problem(await http.get("/api/v1/web/items/42"), 405, "use PUT")


async def test_a_rate_limited_endpoint_answers_429_with_its_headers(daemon: Daemon) -> None:
    with trio.fail_after(TIMEOUT):
        async with client(daemon) as http:
            first = await http.get("/api/v1/web/limited")
            assert first.headers["ratelimit-policy"] == '"default";q=2;w=2'
            assert first.headers["ratelimit"] == '"default";r=1;t=1'
            assert (await http.get("/api/v1/web/limited")).status_code == 200
            refused = await http.get("/api/v1/web/limited")
            body = assert_problem(refused, 429, "retry after")
            assert refused.headers["retry-after"] == "1"
            assert refused.headers["ratelimit-policy"] == '"default";q=2;w=2'
            assert 0 < float(body["retry_after"]) <= 1.0  # type: ignore[arg-type]
            metrics = (await http.get("/metrics")).text
    assert 'cws_rate_limited_requests_total{route="/api/v1/web/limited"} 1.0' in metrics


async def test_a_failing_handler_is_a_502_naming_the_plugin(daemon: Daemon) -> None:
    with trio.fail_after(TIMEOUT):
        async with client(daemon) as http:
            broken = await http.get("/api/v1/web/broken")
            body = assert_problem(
                broken, 502, "plugin 'web' failed: RuntimeError: the plugin broke"
            )
            assert body["plugin"] == "web"
            assert (await http.get("/healthz")).status_code == 200  # the daemon is fine

            async def recovered() -> bool:
                return (await http.get("/api/v1/web/open")).status_code == 200

            await wait_until(recovered)  # the plugin restarts after its crash
    assert (await daemon.host.status("web")).restarts == 1


async def test_an_unready_plugin_answers_503_then_recovers(daemon: Daemon) -> None:
    writer = await token(daemon, "admin")
    seen: set[int] = set()
    retry_after: set[str] = set()
    with trio.fail_after(TIMEOUT):
        async with client(daemon, writer) as http:
            assert (await http.post("/api/v1/web/sick")).json() == {"healthy": False}
            # Readiness fails first (routing stops), then liveness restarts it.
            while 503 not in seen or 200 not in seen or len(seen) < 2:
                answer = await http.get("/api/v1/web/open")
                seen.add(answer.status_code)
                if answer.status_code == 503:
                    assert_problem(answer, 503, "plugin 'web'")
                    retry_after.add(answer.headers["retry-after"])
                    seen.add(-1)
                await trio.sleep(0.005)
                if -1 in seen and answer.status_code == 200:
                    break
    assert retry_after == {"1"}


async def test_a_plugin_may_not_shadow_a_core_route(tmp_path: Path) -> None:
    home = tmp_path / "home"
    from ._plugin import CODE

    shadowing = CODE.replace('"/api/v1/web/open"', '"/api/v1/plugins"')
    write_web_plugin(home / "plugins", "shadow", code=shadowing)
    async with running_daemon(home) as daemon:
        status = await daemon.host.status("shadow")
        assert not status.loaded
        admin = await token(daemon, "plugins:manage")
        async with client(daemon, admin) as http:
            refused = await http.post("/api/v1/plugins/shadow/load")
            assert_problem(refused, 409, "GET /api/v1/plugins would shadow the daemon's own route")


async def test_actors_restart_and_dead_letters(daemon: Daemon) -> None:
    admin = await token(daemon, "admin")
    with trio.fail_after(TIMEOUT):
        async with client(daemon, admin) as http:
            tree = (await http.get("/api/v1/actors")).json()
            (plugins,) = [c for c in tree["children"] if c["path"] == "/plugins"]
            (web,) = plugins["children"]
            assert (web["path"], web["state"], web["kind"]) == ("/plugins/web", "running", "actor")
            assert {p["kind"] for p in web["probes"]} == {"liveness", "readiness"}
            assert web["mailbox"]["capacity"] == 1000
            one = (await http.get("/api/v1/actors/plugins/web")).json()
            assert one["path"] == "/plugins/web"
            assert_problem(await http.get("/api/v1/actors/nowhere"), 404, "/nowhere")
            restarted = (await http.post("/api/v1/actors/plugins/web/restart")).json()
            assert restarted["state"] == "running"
            assert_problem(
                await http.post("/api/v1/actors/plugins/web/clear-quarantine"),
                409,
                "not quarantined",
            )
            daemon.runtime.bus.subscribe_actor("/plugins/gone", ("ghost.*",))
            await http.post("/api/v1/events", json={"topic": "ghost.seen", "payload": 1})
            letters = (await http.get("/api/v1/dead-letters")).json()
            (letter,) = [d for d in letters["dead_letters"] if d["topic"] == "ghost.seen"]
            assert (letter["reason"], letter["target"]) == ("no_such_actor", "/plugins/gone")


async def read_events(daemon: Daemon, topics: str, count: int, publish: Any) -> list[Any]:
    """Follow the SSE stream with a plain socket (what a browser's EventSource does),
    call ``publish`` once subscribed, and return the first ``count`` events' data."""
    assert daemon.url is not None
    host, _, port = daemon.url.removeprefix("http://").partition(":")
    reader = await token(daemon, "events:read")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        request = (
            f"GET /api/v1/events/stream?topics={topics} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {reader}\r\n\r\n"
        )
        await stream.send_all(request.encode())
        buffer = b""
        while b": connected\n\n" not in buffer:
            buffer += await stream.receive_some(4096)
        head = buffer.split(b"\r\n\r\n", 1)[0].decode().lower()
        assert "content-type: text/event-stream" in head
        await publish()
        events: list[Any] = []
        while len(events) < count:
            buffer += await stream.receive_some(4096)
            complete = buffer.decode().rpartition("\n\n")[0]  # whole messages only
            events = [
                json.loads(line[6:]) for line in complete.splitlines() if line.startswith("data: ")
            ]
    return events[:count]


async def test_events_publish_and_stream(daemon: Daemon) -> None:
    publisher = await token(daemon, "events:publish")
    with trio.fail_after(TIMEOUT):
        async with client(daemon, publisher) as http:

            async def publish() -> None:
                published = await http.post(
                    "/api/v1/events", json={"topic": "instance.started", "payload": {"id": "i-1"}}
                )
                assert published.status_code == 202
                await http.post("/api/v1/events", json={"topic": "other.thing"})
                await http.post("/api/v1/events", json={"topic": "instance.stopped"})

            received = await read_events(daemon, "instance.*", 2, publish)
    assert [(e["topic"], e["payload"]) for e in received] == [
        ("instance.started", {"id": "i-1"}),
        ("instance.stopped", None),
    ]
    assert received[0]["source"] == "http"


async def test_plugin_cli_commands_through_the_api(daemon: Daemon) -> None:
    caller = await token(daemon, "web.read")
    with trio.fail_after(TIMEOUT):
        async with client(daemon, caller) as http:
            (spec,) = (await http.get("/api/v1/cli/commands")).json()["commands"]
            assert (spec["plugin"], spec["full_name"], spec["short"]) == ("web", "web", "say hello")
            assert spec["flags"][0]["name"] == "name"
            ran = await http.post("/api/v1/cli/execute", json={"args": ["web", "--name", "ada"]})
            assert ran.json() == {"output": "hello ada", "exit_code": 0}
            usage = await http.post("/api/v1/cli/execute", json={"args": ["web"]})
            assert usage.json()["exit_code"] == 2
            assert "--name is required" in usage.json()["output"]
            assert_problem(await http.post("/api/v1/cli/execute", json={"args": []}), 400, "args")


async def test_install_update_and_remove_by_upload(tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = write_plugin(tmp_path / "src", "echo")
    archive = make_archive(source, tmp_path / "echo.cwsplugin")
    async with running_daemon(home) as daemon:
        admin = await token(daemon, "plugins:manage")
        async with client(daemon, admin) as http:
            files = {"archive": ("echo.cwsplugin", archive.read_bytes(), "application/zip")}
            installed = await http.post("/api/v1/plugins/install", files=files)
            assert installed.status_code == 201, installed.text
            assert (installed.json()["name"], installed.json()["version"]) == ("echo", "1.0.0")
            again = await http.post("/api/v1/plugins/install", files=files)
            assert_problem(again, 409, "already installed")
            assert (await http.post("/api/v1/plugins/echo/load")).json()["state"] == "running"
            (source / "plugin.toml").write_text(
                (source / "plugin.toml").read_text().replace("1.0.0", "1.1.0")
            )
            newer = make_archive(source, tmp_path / "echo-1.1.cwsplugin")
            files = {"archive": ("echo.cwsplugin", newer.read_bytes(), "application/zip")}
            updated = await http.post("/api/v1/plugins/echo/update", files=files)
            assert updated.json()["version"] == "1.1.0"
            evil = {"archive": ("x.cwsplugin", b"not a zip", "application/zip")}
            bad = await http.post("/api/v1/plugins/install", files=evil)
            assert_problem(bad, 400, "x.cwsplugin: the archive: not a valid zip archive")
            assert_problem(await http.post("/api/v1/plugins/install"), 400, "multipart")
            removed = await http.delete("/api/v1/plugins/echo?purge_data=true")
            assert removed.json() == {"removed": "echo", "purged_data": True}
            assert not (home / "plugins/echo").exists()
            assert not any((home / "uploads").iterdir())  # uploads are cleaned up


def spooled_in(uploads: Path) -> list[str]:
    """The files this process (the daemon runs in it) holds open in ``uploads``: an
    upload is spooled to anonymous files there, seen only through its descriptors."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(uploads)):
            held.append(target)
    return held


async def test_an_upload_is_spooled_and_nothing_of_it_is_kept(tmp_path: Path) -> None:
    """A multipart upload is written to an anonymous file by a worker thread and parsed
    by another, off the event loop: a legitimate archive (larger than what stays in
    memory, so spooled to disk, and with a form field beside it) still installs; a
    malformed form is a 400 that says what is expected, an oversized one a 413 (with a
    Content-Length or chunked), a client gone mid-upload is forgotten; and none of them
    leaves a file behind, open or in the folder."""
    home = tmp_path / "home"
    uploads = home / "uploads"
    limit = 2 * 1024 * 1024
    source = write_plugin(tmp_path / "src", "bulky")
    (source / "blob.bin").write_bytes(os.urandom(limit // 2))  # incompressible
    archive = make_archive(source, tmp_path / "bulky.cwsplugin").read_bytes()
    assert 512 * 1024 < len(archive) < limit
    boundary = "spool-boundary"
    part = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=archive;"
        ' filename="bulky.cwsplugin"\r\nContent-Type: application/zip\r\n\r\n'
    ).encode()
    multipart = f"multipart/form-data; boundary={boundary}"
    async with running_daemon(home, max_upload_bytes=limit) as daemon:
        admin = await token(daemon, "admin")
        host, port = daemon.url.removeprefix("http://").rsplit(":", 1)  # type: ignore[union-attr]

        async def raw_upload(
            body: bytes, *, chunked: bool = True, close_after: bool = False
        ) -> bytes:
            """POST ``body`` over a raw socket (chunked, or with a ``Content-Length``
            declaring the whole body); the answer, unless the client goes away after
            sending ``body`` (``close_after``)."""
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                head = (
                    "POST /api/v1/plugins/install HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {admin}\r\nContent-Type: {multipart}\r\n"
                    f"{framing}\r\n\r\n"
                ).encode()
                if chunked:
                    body = b"%x\r\n%s\r\n" % (len(body), body)
                    if not close_after:
                        body += b"0\r\n\r\n"
                if close_after:
                    await stream.send_all(head + body)
                    return b""

                async def send() -> None:
                    with contextlib.suppress(trio.BrokenResourceError):
                        await stream.send_all(head + body)  # a 413 may close it first

                answer = b""
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)  # the answer is read while the body goes
                    while not answer.rstrip().endswith(b"}"):
                        chunk = await stream.receive_some()
                        if not chunk:
                            break
                        answer += chunk
                    nursery.cancel_scope.cancel()
                return answer

        async def nothing_kept() -> bool:
            return spooled_in(uploads) == [] and not any(uploads.iterdir())

        with trio.fail_after(TIMEOUT):
            async with client(daemon, admin) as http:
                files = {"archive": ("bulky.cwsplugin", archive, "application/zip")}
                installed = await http.post(
                    "/api/v1/plugins/install", files=files, data={"grant": ""}
                )
                assert installed.status_code == 201, installed.text
                assert (installed.json()["name"], installed.json()["version"]) == (
                    "bulky", "1.0.0",
                )  # fmt: skip
                assert (home / "plugins/bulky/blob.bin").stat().st_size == limit // 2
                assert await nothing_kept()

                malformed = [
                    part + archive[:1000],  # no closing boundary: cut short
                    b"--" + boundary.encode() + b"\r\nContent-Type: x\r\n\r\nno name",
                ]
                for body in malformed:
                    answer = await http.post(
                        "/api/v1/plugins/install", content=body,
                        headers={"Content-Type": multipart},
                    )  # fmt: skip
                    assert_problem(answer, 400, "send the plugin as multipart/form-data")
                    assert await nothing_kept()

            # Over the limit, declared or counted as it streams (over a raw socket: httpx
            # would leave its body's generator unfinished after an early 413).
            for chunked in (False, True):
                answer = await raw_upload(part + bytes(limit), chunked=chunked)
                assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
                assert f"over the limit of {limit} bytes".encode() in answer
                assert await nothing_kept()

            await raw_upload(part + archive[: limit // 4], close_after=True)
            await wait_until(nothing_kept)

            async with client(daemon, admin) as http:
                listed = (await http.get("/api/v1/plugins")).json()["plugins"]
                assert sorted(plugin["name"] for plugin in listed) == ["bulky"]


async def test_openapi_lists_core_and_plugin_routes(daemon: Daemon) -> None:
    with trio.fail_after(TIMEOUT):
        async with client(daemon) as http:
            document = (await http.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    assert {"/healthz", "/api/v1/plugins", "/api/plugins/load", "/api/v1/events/stream"} <= set(
        paths
    )
    assert paths["/api/v1/web/items/{item}"]["put"]["parameters"][0]["name"] == "item"
    assert paths["/api/v1/web/reports"]["get"]["security"] == [{"bearer": ["web.read"]}]
    assert "security" not in paths["/api/v1/web/open"]["get"]
    assert paths["/api/v1/events"]["post"]["security"] == [{"bearer": ["events:publish"]}]
    # Every route the app serves is in the document, and every documented core route exists.
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert method in {"get", "post", "put", "delete", "patch"}
            assert "responses" in operation, (path, method)

"""DNS rebinding (issue 16, item 10), against a real daemon: a request naming a host the
daemon is not known by (a web page's name made to point at 127.0.0.1) is refused with a
421 before anything else is looked at; the bound address, loopback, ``localhost`` and
the names of ``[daemon] allowed_hosts`` are answered."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from api import load_config
from api._http._hosts import host_allowed, host_name

from ._daemon import TIMEOUT, client, running_daemon, token
from ._plugin import write_web_plugin
from .test_app import assert_problem


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8947", "127.0.0.1"),
        ("[::1]:8947", "::1"),
        ("LocalHost", "localhost"),
        ("Example.org.:80", "example.org"),
        ("::1", "::1"),
    ],
)
def test_the_name_of_a_host_header(header: str, name: str) -> None:
    assert host_name(header) == name


def test_which_hosts_are_allowed() -> None:
    config = load_config(None, env={}, allowed_hosts=" cws.example.org , other.example ")
    allowed = ["127.0.0.1", "127.0.0.2", "::1", "localhost", "cws.example.org", "other.example"]
    assert all(host_allowed(name, config) for name in allowed)
    assert not any(host_allowed(name, config) for name in ["attacker.example", "10.0.0.1", ""])
    everywhere = load_config(None, env={}, host="0.0.0.0")
    assert host_allowed("10.0.0.1", everywhere)  # an address cannot be rebound
    assert not host_allowed("attacker.example", everywhere)


async def test_a_foreign_host_is_refused(tmp_path: Path) -> None:
    async with running_daemon(tmp_path / "home", allowed_hosts="cws.example.org") as daemon:
        admin = await token(daemon, "admin")
        with trio.fail_after(TIMEOUT):
            async with client(daemon) as anonymous, client(daemon, admin) as http:
                for path in ("/api/v1/plugins", "/healthz", "/", "/api/v1/events/stream"):
                    refused = await anonymous.get(path, headers={"Host": "attacker.example"})
                    assert_problem(
                        refused, 421,
                        "this daemon does not answer to the host 'attacker.example'; expected"
                        " localhost, 127.0.0.1, cws.example.org",
                    )  # fmt: skip
                # A token does not help: the request was not meant for this daemon.
                rebound = await http.get("/api/v1/plugins", headers={"Host": "attacker.example:80"})
                assert_problem(rebound, 421, "[daemon] allowed_hosts")
                port = daemon.url.rpartition(":")[2] if daemon.url else ""
                for host in (f"127.0.0.1:{port}", f"localhost:{port}", "cws.example.org", "[::1]"):
                    answer = await http.get("/api/v1/plugins", headers={"Host": host})
                    assert answer.status_code == 200, (host, answer.text)
                assert (await anonymous.get("/healthz")).status_code == 200


OPEN = ("/healthz", "/readyz", "/metrics", "/")
"""What answers without a token whatever ``open_reads`` says (the dashboard page asks
for a token itself)."""
READS = (
    "/api/v1/plugins", "/api/v1/actors", "/api/v1/dead-letters",
    "/api/v1/cli/commands", "/api/v1/instances", "/openapi.json", "/api/v1/web/open",
    "/api/v1/events/stream?topics=%23", "/no/such/route",
)  # fmt: skip


async def test_reads_need_a_token_by_default(tmp_path: Path) -> None:
    assert load_config(None, env={}).open_reads is False
    home = tmp_path / "home"
    write_web_plugin(home / "plugins")
    async with running_daemon(home, open_reads=False) as daemon:
        with trio.fail_after(TIMEOUT):
            async with client(daemon) as anonymous:
                for path in READS:
                    assert_problem(await anonymous.get(path), 401, "token")
                for path in OPEN:
                    assert (await anonymous.get(path)).status_code == 200, path
            # Any valid token reads (the scopes of the routes that change things hold).
            async with client(daemon, await token(daemon, "events:read")) as reader:
                for path in READS[:-2]:
                    assert (await reader.get(path)).status_code == 200, path
                assert_problem(await reader.post("/api/v1/plugins/web/unload"), 403)


async def test_open_reads_answers_reads_without_a_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_web_plugin(home / "plugins")
    async with running_daemon(home, open_reads=True) as daemon:
        with trio.fail_after(TIMEOUT):
            async with client(daemon) as anonymous:
                for path in READS[:-2]:
                    assert (await anonymous.get(path)).status_code == 200, path
                assert_problem(await anonymous.post("/api/v1/plugins/web/unload"), 401)

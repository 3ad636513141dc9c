"""Hostile neighbours (issue 16, items 5 and 6), against a real daemon: a plugin whose
route pattern overlaps another plugin's or a core route is refused at load, naming both
routes; and a plugin CLI command is run only for a token holding its permissions."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from api._daemon import Daemon
from cws_actors import PluginHost, routes_overlap

from ..plugins.test_analytics import NAME, UNTIL, handled, install_folder_plugin, publish
from ..plugins.test_host import wait_until
from ._daemon import TIMEOUT, client, running_daemon, token
from ._plugin import CODE, write_web_plugin
from .test_app import assert_problem


async def ready(host: PluginHost) -> bool:
    return (await host.status(NAME)).ready


async def assert_serving(daemon: Daemon) -> None:
    """After the attack: ``/healthz`` answers 200 and an event is still published."""
    async with client(daemon) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
    async with client(daemon, await token(daemon, "events:publish")) as publisher:
        published = await publisher.post("/api/v1/events", json={"topic": "still.working"})
        assert published.status_code == 202, published.text


SHADOW = CODE.replace('"/api/v1/web/open"', '"/api/v1/analytics/{x}"')
"""The web plugin, with its open route a pattern over research-analytics' routes."""


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("/api/v1/analytics/{x}", "/api/v1/analytics/costs", True),
        ("/api/v1/{kind}/costs", "/api/v1/analytics/{y}", True),
        ("/api/v1/analytics/costs", "/api/v1/analytics/costs/", True),
        ("/api/v1/analytics/{x}", "/api/v1/analytics/{x}/more", False),
        ("/api/v1/analytics/costs", "/api/v1/analytics/usage", False),
        ("/r/{id}.json", "/r/today.json", True),
        ("/r/{id}.json", "/r/today.csv", False),
        ("/api/v1/{x}", "/api/v1/plugins/<name>", False),
        ("/api/v1/plugins/{x}", "/api/v1/plugins/<name>", True),
        ("/api/v1/files/a/b", "/api/v1/files/<path:rest>", True),
        ("/api/v1/files", "/api/v1/files/<path:rest>", False),
    ],
)
def test_routes_overlap_segment_by_segment(first: str, second: str, overlap: bool) -> None:
    assert routes_overlap(first, second) is overlap
    assert routes_overlap(second, first) is overlap


async def test_a_plugin_route_may_not_shadow_another_plugins(tmp_path: Path) -> None:
    home = tmp_path / "home"
    install_folder_plugin(home)
    async with running_daemon(home) as daemon:
        assert (await daemon.host.status(NAME)).loaded
        write_web_plugin(home / "plugins", "shadow", code=SHADOW)
        admin = await token(daemon, "plugins:manage")
        with trio.fail_after(TIMEOUT):
            async with client(daemon, admin) as http:
                refused = await http.post("/api/v1/plugins/shadow/load")
                assert_problem(
                    refused, 409,
                    "GET /api/v1/analytics/{x} overlaps GET /api/v1/analytics/usage of plugin"
                    f" {NAME!r}",
                )  # fmt: skip
            assert not (await daemon.host.status("shadow")).loaded
            async with client(daemon) as anonymous:
                costs = await anonymous.get("/api/v1/analytics/costs")
                assert_problem(costs, 401)
            async with client(daemon, await token(daemon, "analytics.read")) as reader:
                assert (await reader.get("/api/v1/analytics/costs")).status_code == 200
            await assert_serving(daemon)


async def test_a_plugin_pattern_may_not_shadow_a_core_route(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_web_plugin(
        home / "plugins", "shadow", code=CODE.replace("/api/v1/web/open", "/api/v1/{x}")
    )
    async with running_daemon(home) as daemon:
        assert not (await daemon.host.status("shadow")).loaded
        admin = await token(daemon, "plugins:manage")
        with trio.fail_after(TIMEOUT):
            async with client(daemon, admin) as http:
                refused = await http.post("/api/v1/plugins/shadow/load")
                assert_problem(
                    refused, 409, "GET /api/v1/{x} would shadow the daemon's own route GET /api/v1/"
                )
                assert (await http.get("/api/v1/plugins")).status_code == 200  # not shadowed
            await assert_serving(daemon)


async def test_a_plugin_command_needs_its_permissions(tmp_path: Path) -> None:
    home = tmp_path / "home"
    install_folder_plugin(home)
    async with running_daemon(home) as daemon:
        await wait_until(lambda: ready(daemon.host))
        await publish(daemon.host, "instance.started", "i-1", "2024-04-30T00:00:00Z")
        await publish(daemon.host, "instance.stopped", "i-1", "2024-04-30T02:00:00Z")
        await handled(daemon.host, recorded=2)
        argv = ["analytics", "report", "--type", "weekly", "--format", "json", "--until", UNTIL]
        with trio.fail_after(TIMEOUT):
            async with client(daemon, await token(daemon, "events:publish")) as publisher:
                refused = await publisher.post("/api/v1/cli/execute", json={"args": argv})
                assert_problem(
                    refused, 403,
                    f"analytics report (plugin {NAME!r}): this needs the scope analytics.read",
                )  # fmt: skip
                assert "cost" not in refused.text
                (spec,) = (await publisher.get("/api/v1/cli/commands")).json()["commands"]
                assert (spec["protected"], spec["permissions"]) == (True, ["analytics.read"])
            async with client(daemon, await token(daemon, "analytics.read")) as reader:
                ran = await reader.post("/api/v1/cli/execute", json={"args": argv})
                assert ran.status_code == 200, ran.text
                assert ran.json()["exit_code"] == 0
                assert "i-1" in ran.json()["output"]
            async with client(daemon) as anonymous:
                answer = await anonymous.post("/api/v1/cli/execute", json={"args": argv})
                assert_problem(answer, 401)
            await assert_serving(daemon)

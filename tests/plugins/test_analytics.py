"""The research-analytics example plugin (``examples/research_analytics``) through the
real plugin host: copied into a user plugin folder and run in both isolation modes, and
installed as a distribution (``pip install -e examples/research_analytics``) that
registers its entry point.

The events carry their own time (payload key ``at``), and reports end at ``--until``,
so that every number below is exact.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import shutil
import stat
import time
import tomllib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from cws_actors import (
    APIEndpointSpec,
    APIRequest,
    Event,
    HostConfig,
    PluginHost,
    PluginRefused,
    PluginStatus,
    open_plugin_host,
    open_runtime,
)

from .test_host import TIMEOUT, wait_until

EXAMPLE = Path(__file__).parents[2] / "examples" / "research_analytics"
NAME = "research-analytics"
DISTRIBUTION = "cws-research-analytics"
ENTRY = "research_analytics.plugin:ResearchAnalyticsPlugin"
CONFIG = {"prices": {"t3.micro": 0.0104, "m5.large": 0.096}, "default_price": 0.01}
UNTIL = "2024-05-01T00:00:00Z"
END = datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC).timestamp()
HOUR, DAY = 3600.0, 86400.0


def install_folder_plugin(home: Path) -> Path:
    """Lay the example out as a folder plugin: ``plugin.toml`` beside the package."""
    target = home / "plugins" / NAME
    target.mkdir(parents=True)
    shutil.copy(EXAMPLE / "plugin.toml", target)
    shutil.copytree(
        EXAMPLE / "research_analytics",
        target / "research_analytics",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return target


async def opened(
    home: Path, isolation: str, config: Mapping[str, Any] = CONFIG
) -> AsyncIterator[PluginHost]:
    overrides = {NAME: {"isolation": isolation, "config": config}}
    host_config = HostConfig(
        home=home, system_dir=home / "system", entry_points=False, overrides=overrides
    )
    async with open_runtime() as runtime, open_plugin_host(runtime, host_config) as host:
        yield host


@pytest.fixture(params=["in_process", "subprocess"])
def isolation(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
async def host(tmp_path: Path, isolation: str) -> AsyncIterator[PluginHost]:
    home = tmp_path / "home"
    install_folder_plugin(home)
    async for opened_host in opened(home, isolation):
        yield opened_host


@pytest.fixture
async def in_process_host(tmp_path: Path) -> AsyncIterator[PluginHost]:
    home = tmp_path / "home"
    install_folder_plugin(home)
    async for opened_host in opened(home, "in_process"):
        yield opened_host


async def load(host: PluginHost) -> PluginStatus:
    """Load the plugin and wait until it is ready: its health check queries its database.

    Until then the router refuses its messages (events included: they become dead
    letters), and ``load`` returns before the first readiness probe has answered."""
    await host.load(NAME)

    async def ready() -> bool:
        return (await host.status(NAME)).ready

    await wait_until(ready)
    return await host.status(NAME)


async def publish(
    host: PluginHost,
    topic: str,
    instance_id: str,
    at: float | str,
    *,
    instance_type: str = "t3.micro",
    provider: str = "aws",
) -> Event:
    """Publish what a provider publishes (an instance description) plus ``at``."""
    payload = {
        "id": instance_id,
        "name": f"workstation-{instance_id}",
        "type": instance_type,
        "region": "us-east-1",
        "zone": "us-east-1a",
        "state": topic.rpartition(".")[2],
        "provider": provider,
        "launch_time": "2024-04-01T00:00:00Z",
        "tags": {"project": "genomics"},
        "at": at,
    }
    return await host.runtime.publish(topic, payload)


async def handled(host: PluginHost, *, recorded: int, duplicates: int = 0) -> dict[str, Any]:
    """Wait until the plugin has handled that many events; return its status."""

    async def done() -> bool:
        status = await host.plugin_status(NAME)
        seen: int = status["events_recorded"] + status["duplicates_ignored"]
        return seen >= recorded + duplicates

    await wait_until(done)
    status = await host.plugin_status(NAME)
    assert (status["events_recorded"], status["duplicates_ignored"]) == (recorded, duplicates)
    return status


async def json_report(host: PluginHost, *argv: str) -> dict[str, Any]:
    result = await host.execute_cli(["analytics", "report", "--format", "json", *argv])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output)
    return report


def endpoint(host: PluginHost, path: str) -> APIEndpointSpec:
    (spec,) = [spec for name, spec in host.api_endpoints() if spec.path == path]
    return spec


async def test_report_counts_hours_and_costs_per_instance(host: PluginHost, isolation: str) -> None:
    with trio.fail_after(TIMEOUT):
        status = await load(host)
        assert (status.isolation, status.state) == (isolation, "running")
        await publish(host, "instance.started", "i-1", END - 3 * HOUR)
        await publish(host, "instance.stopped", "i-1", END - HOUR)
        # Still running at the end: counted from the start of the week.
        await publish(host, "instance.launched", "i-2", END - 10 * DAY, instance_type="m5.large")
        # A type without a price costs default_price; ISO 8601 times work too.
        for topic, at in (("started", "2024-04-30T22:00:00Z"), ("terminated", END - 1.5 * HOUR)):
            await publish(host, f"instance.{topic}", "i-3", at, instance_type="e2-small",
                          provider="gcp")  # fmt: skip
        # Before the week, and after the report's end.
        await publish(host, "instance.started", "i-4", END - 9 * DAY)
        await publish(host, "instance.stopped", "i-4", END - 8 * DAY)
        await publish(host, "instance.started", "i-5", END + HOUR)
        await handled(host, recorded=8)

        weekly = await json_report(host, "--until", UNTIL)
        assert weekly == {
            "type": "weekly",
            "range_start": "2024-04-24T00:00:00+00:00",
            "range_end": "2024-05-01T00:00:00+00:00",
            "instances": [
                {"id": "i-1", "provider": "aws", "type": "t3.micro", "hours": 2.0, "cost": 0.0208},
                {"id": "i-2", "provider": "aws", "type": "m5.large", "hours": 168.0,
                 "cost": 16.128},
                {"id": "i-3", "provider": "gcp", "type": "e2-small", "hours": 0.5, "cost": 0.005},
            ],
            "total_hours": 170.5,
            "total_cost": 16.1538,
        }  # fmt: skip
        monthly = await json_report(host, "--type", "monthly", "--until", UNTIL)
        assert monthly["range_start"] == "2024-04-01T00:00:00+00:00"
        hours = {row["id"]: row["hours"] for row in monthly["instances"]}
        assert hours == {"i-1": 2.0, "i-2": 240.0, "i-3": 0.5, "i-4": 24.0}
        assert monthly["total_cost"] == round(0.0208 + 240 * 0.096 + 0.005 + 24 * 0.0104, 6)


async def test_a_redelivered_event_is_counted_once(host: PluginHost) -> None:
    with trio.fail_after(TIMEOUT):
        await load(host)
        started = await publish(host, "instance.started", "i-1", END - 3 * HOUR)
        stopped = await publish(host, "instance.stopped", "i-1", END - HOUR)
        # At-least-once delivery, as a broker backend redelivers: the same Event again.
        host.runtime.bus.backend.send(started)
        host.runtime.bus.backend.send(stopped)
        await publish(host, "instance.started", "i-1", END - 30 * 60)  # a new event: recorded
        status = await handled(host, recorded=3, duplicates=2)
        assert status["instances_tracked"] == 1
        report = await json_report(host, "--until", UNTIL)
        assert [(row["hours"], row["cost"]) for row in report["instances"]] == [(2.5, 0.026)]


async def test_bad_flag_values_exit_2_saying_what_is_allowed(host: PluginHost) -> None:
    with trio.fail_after(TIMEOUT):
        await load(host)
        cases = {
            ("--type", "daily"): "--type must be one of weekly, monthly, yearly, got 'daily'",
            ("--format", "xml"): "--format must be one of table, json, csv, got 'xml'",
            ("--until", "yesterday"): "a time must be ISO 8601 such as '2024-05-01'",
        }
        for argv, message in cases.items():
            result = await host.execute_cli(["analytics", "report", *argv])
            assert result.exit_code == 2, result.output
            assert message in result.output
            assert result.output.startswith("analytics report: ")


async def test_api_usage_and_costs(host: PluginHost) -> None:
    with trio.fail_after(TIMEOUT):
        await load(host)
        now = time.time()
        await publish(host, "instance.started", "i-1", now - 3 * HOUR)
        await publish(host, "instance.stopped", "i-1", now - HOUR)
        await handled(host, recorded=2)
        usage, costs = (
            endpoint(host, "/api/v1/analytics/usage"),
            endpoint(host, "/api/v1/analytics/costs"),
        )
        assert (usage.method, usage.protected, usage.permissions) == ("GET", True, ())
        assert (costs.protected, costs.permissions) == (True, ("analytics.read",))

        answer = await host.call_api(
            NAME, usage, APIRequest("GET", usage.path, {"timerange": "7d"})
        )
        assert answer.status == 200
        assert answer.data["instances"] == [
            {"id": "i-1", "provider": "aws", "type": "t3.micro", "hours": 2.0}
        ]
        assert (answer.data["timerange"], answer.data["total_hours"]) == ("7d", 2.0)
        until = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()
        query = {"timerange": "2h", "until": until}
        answer = await host.call_api(NAME, costs, APIRequest("GET", costs.path, query))
        assert answer.data["instances"][0]["hours"] == 1.0  # clipped to the last two hours
        assert answer.data["total_cost"] == 0.0104
        old = APIRequest("GET", costs.path, {"timerange": "1d", "until": "2020-01-01"})
        assert (await host.call_api(NAME, costs, old)).data["instances"] == []

        for query in ({"timerange": "7x"}, {"timerange": "0d"}, {"until": "soon"}):
            answer = await host.call_api(NAME, usage, APIRequest("GET", usage.path, query))
            assert answer.status == 400, query
            assert set(answer.data) == {"error"}
        bad = await host.call_api(NAME, usage, APIRequest("GET", usage.path, {"timerange": "x"}))
        assert "such as '7d' or '24h', got 'x'" in bad.data["error"]


async def test_table_and_csv_formats(in_process_host: PluginHost) -> None:
    host = in_process_host
    with trio.fail_after(TIMEOUT):
        await load(host)
        await publish(host, "instance.started", "i-1", END - 3 * HOUR)
        await publish(host, "instance.stopped", "i-1", END - HOUR)
        await handled(host, recorded=2)
        table = await host.execute_cli(["analytics", "report", "--until", UNTIL])
        assert table.exit_code == 0
        assert table.output.splitlines() == [
            "weekly usage 2024-04-24T00:00:00+00:00 .. 2024-05-01T00:00:00+00:00",
            "ID     PROVIDER  TYPE      HOURS    COST",
            "i-1    aws       t3.micro   2.00  0.0208",
            "TOTAL                       2.00  0.0208",
        ]
        result = await host.execute_cli(["analytics", "report", "--format=csv", "--until", UNTIL])
        assert list(csv.reader(result.output.splitlines())) == [
            ["id", "provider", "type", "hours", "cost"],
            ["i-1", "aws", "t3.micro", "2.00", "0.0208"],
            ["TOTAL", "", "", "2.00", "0.0208"],
        ]
        empty = await host.execute_cli(["analytics", "report", "--until", "2020-01-01"])
        assert "(no instance ran in this range)" in empty.output


async def test_malformed_events_are_counted_and_ignored(in_process_host: PluginHost) -> None:
    host = in_process_host
    with trio.fail_after(TIMEOUT):
        await load(host)
        await host.runtime.publish("instance.started", "i-1")  # not a description
        await host.runtime.publish("instance.started", {"id": ""})
        await publish(host, "instance.started", "i-1", "yesterday")

        async def rejected() -> bool:
            return (await host.plugin_status(NAME))["events_rejected"] == 3

        await wait_until(rejected)
        await publish(host, "instance.started", "i-1", END - HOUR)
        await handled(host, recorded=1)
        status = await host.status(NAME)
        assert (status.state, status.restarts) == ("running", 0)


async def test_usage_survives_a_restart_in_a_private_database(tmp_path: Path) -> None:
    home = tmp_path / "home"
    install_folder_plugin(home)
    with trio.fail_after(TIMEOUT):
        async for host in opened(home, "in_process"):
            await load(host)
            await publish(host, "instance.started", "i-1", END - 3 * HOUR)
            await publish(host, "instance.stopped", "i-1", END - HOUR)
            await handled(host, recorded=2)
        database = home / "plugin-data" / NAME / "analytics.db"
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
        async for host in opened(home, "subprocess"):
            await load(host)
            status = await host.plugin_status(NAME)
            assert (status["events_recorded"], status["instances_tracked"]) == (2, 1)
            assert status["database"] == str(database)
            report = await json_report(host, "--until", UNTIL)
            assert report["total_hours"] == 2.0


async def test_a_bad_price_refuses_the_plugin(tmp_path: Path) -> None:
    home = tmp_path / "home"
    install_folder_plugin(home)
    with trio.fail_after(TIMEOUT):
        async for host in opened(home, "in_process", {"prices": {"t3.micro": -1}}):
            with pytest.raises(PluginRefused, match=r"prices\['t3.micro'\] must be a price"):
                await load(host)


def test_the_manifest_says_what_the_class_says() -> None:
    (entry_point,) = importlib.metadata.entry_points(group="cws_actors.plugins", name=NAME)
    metadata = entry_point.load().metadata
    manifest = tomllib.loads((EXAMPLE / "plugin.toml").read_text())["plugin"]
    assert manifest == {
        "name": metadata.name,
        "version": metadata.version,
        "api_version": metadata.api_version,
        "isolation": metadata.isolation.value,
        "entry": entry_point.value,
        "description": metadata.description,
        "author": metadata.author,
        "permissions": list(metadata.permissions),
    }
    assert importlib.metadata.version(DISTRIBUTION) == metadata.version == "1.0.0"


async def test_the_installed_distribution_registers_its_entry_point(tmp_path: Path) -> None:
    distribution = importlib.metadata.distribution(DISTRIBUTION)
    (entry_point,) = [ep for ep in distribution.entry_points if ep.group == "cws_actors.plugins"]
    assert (entry_point.name, entry_point.value) == (NAME, ENTRY)
    config = HostConfig(home=tmp_path / "home", system_dir=tmp_path / "system")
    with trio.fail_after(TIMEOUT):
        async with open_runtime() as runtime, open_plugin_host(runtime, config) as host:
            found = {plugin.name: plugin for plugin in await host.discover()}
            plugin = found[NAME]
            assert (plugin.source, plugin.location, plugin.problem) == ("entry_point", ENTRY, None)
            assert (plugin.version, plugin.isolation.value) == ("1.0.0", "in_process")
            status = await load(host)
            assert (status.source, status.state) == ("entry_point", "running")
            await publish(host, "instance.started", "i-1", END - HOUR)
            await handled(host, recorded=1)
            report = await json_report(host, "--until", UNTIL)
            assert (report["total_hours"], report["total_cost"]) == (1.0, 0.0)  # no prices set

"""``/api/v1/instances`` and provider plugins, routed through the router: listing,
operations publishing instance events, errors mapped to HTTP, and an outage taking only
that provider out of routing until it recovers.

The provider here keeps its instances in memory: this tests the daemon's side of the
``CloudProvider`` protocol (the real AWS and GCP providers are tested at the wire)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import trio

from ..plugins.test_host import wait_until
from ._daemon import TIMEOUT, client, running_daemon, token

CODE = """
import datetime
from cws_actors import PluginMetadata
from providers import (
    CircuitBreaker, InstanceInfo, InstanceNotFound, InstanceState, ProviderUnavailable,
    Resilience, call_resiliently,
)
from providers._plugin import ProviderPlugin


class Memory:
    provider_name = "memory"
    provider_version = "1"
    api_version = "1.0"

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.name = data_dir.name  # the plugin's name: write_provider() can make several
        self.breaker = CircuitBreaker(self.name, failure_threshold=1, reset_timeout=0.5)
        self.policy = Resilience(retries=0, reset_timeout=0.5)
        self.states = {"i-1": InstanceState.RUNNING, "i-2": InstanceState.STOPPED}

    def _info(self, instance_id):
        return InstanceInfo(instance_id, f"vm-{instance_id}", "t3.micro", "us-east-1",
                            "us-east-1a", self.states[instance_id],
                            self.states[instance_id].value,
                            datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC), "memory")

    async def _call(self, work):
        async def guarded():
            if (self.data_dir / "down").exists():
                raise ProviderUnavailable(f"{self.name}: the cloud is down")
            return work()
        return await call_resiliently(guarded, breaker=self.breaker, policy=self.policy)

    async def get_instance_info(self, instance_id):
        def work():
            if instance_id not in self.states:
                raise InstanceNotFound(f"no instance {instance_id!r}")
            return self._info(instance_id)
        return await self._call(work)

    async def list_instances(self, *, filters=None):
        return await self._call(lambda: [self._info(i) for i in sorted(self.states)])

    async def start_instance(self, instance_id, *, wait=False):
        await self.get_instance_info(instance_id)
        self.states[instance_id] = InstanceState.RUNNING
        return self._info(instance_id)

    async def stop_instance(self, instance_id, *, wait=False, hibernate=False):
        await self.get_instance_info(instance_id)
        self.states[instance_id] = InstanceState.STOPPED
        return self._info(instance_id)

    async def close(self):
        pass


class MemoryPlugin(ProviderPlugin):
    async def make_provider(self, config):
        return Memory(self.ctx.data_dir)
"""

MANIFEST = """
[plugin]
name = "memory"
version = "1.0.0"
api_version = "1.0"
entry = "memory_plugin:MemoryPlugin"

[supervision]
probe_period = 0.1
"""


def write_provider(folder: Path, name: str = "memory") -> None:
    plugin_dir = folder / name
    plugin_dir.mkdir(parents=True)
    manifest = MANIFEST.replace('name = "memory"', f'name = "{name}"')
    (plugin_dir / "plugin.toml").write_text(textwrap.dedent(manifest))
    (plugin_dir / "memory_plugin.py").write_text(CODE)


async def test_list_show_start_stop_and_their_events(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_provider(home / "plugins")
    with trio.fail_after(TIMEOUT):
        async with running_daemon(home) as daemon:
            manager = await token(daemon, "instances:manage")
            reader = await token(daemon, "events:publish")
            async with client(daemon, manager) as http, client(daemon, reader) as weak:
                listing = (await http.get("/api/v1/instances")).json()
                assert [(i["id"], i["state"]) for i in listing["instances"]] == [
                    ("i-1", "running"), ("i-2", "stopped"),
                ]  # fmt: skip
                running = (await http.get("/api/v1/instances?state=running")).json()
                assert [i["id"] for i in running["instances"]] == ["i-1"]
                shown = (await http.get("/api/v1/instances/memory/i-2")).json()
                assert (shown["name"], shown["zone"]) == ("vm-i-2", "us-east-1a")
                missing = await http.get("/api/v1/instances/memory/i-9")
                assert missing.status_code == 404
                assert "no instance 'i-9'" in missing.json()["detail"]
                assert (await http.get("/api/v1/instances/nimbus/i-1")).status_code == 404
                refused = await weak.post("/api/v1/instances/memory/i-2/start")
                assert refused.status_code == 403
                with daemon.runtime.bus.subscribe("instance.*") as events:
                    started = await http.post("/api/v1/instances/memory/i-2/start", json={})
                    assert started.json()["state"] == "running"
                    stopped = await http.post(
                        "/api/v1/instances/memory/i-1/stop", json={"wait": True}
                    )
                    assert stopped.json()["state"] == "stopped"
                    first, second = await events.receive(), await events.receive()
                assert (first.topic, first.payload["id"]) == ("instance.started", "i-2")
                assert (second.topic, second.payload["state"]) == ("instance.stopped", "stopped")


async def test_an_outage_takes_only_that_provider_out_then_it_recovers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_provider(home / "plugins")
    with trio.fail_after(TIMEOUT):
        async with running_daemon(home) as daemon, client(daemon) as http:
            down = home / "plugin-data/memory/down"
            down.touch()
            first = await http.get("/api/v1/instances")
            assert first.json()["errors"]["memory"] == {
                "status": 503,
                "detail": "memory: the cloud is down",  # its name once, not "memory: memory:"
            }
            assert first.json()["providers"] == ["memory"]

            async def out_of_routing() -> bool:
                answer = await http.get("/api/v1/instances/memory/i-1")
                return answer.status_code == 503 and "not ready" in answer.json()["detail"]

            await wait_until(out_of_routing)
            assert (await http.get("/healthz")).status_code == 200
            down.unlink()

            async def recovered() -> bool:
                # The breaker half-opens after its reset timeout; a trial call closes it.
                await daemon.host.call_service("memory", "poll", None)
                return (await http.get("/api/v1/instances/memory/i-1")).status_code == 200

            async def retrying() -> bool:
                try:
                    return await recovered()
                except Exception:  # refused while it is still out
                    return False

            await wait_until(retrying)
            assert (await daemon.host.status("memory")).restarts == 0

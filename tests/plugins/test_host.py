"""The plugin host with real plugin folders, in both isolation modes."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from cws_actors import (
    APIRequest,
    HostConfig,
    PluginHost,
    PluginNotFound,
    PluginRefused,
    open_plugin_host,
    open_runtime,
)

from ._fixtures import IN_PROCESS_ALLOWED, write_plugin

TIMEOUT = 30


@pytest.fixture
async def home(tmp_path: Path) -> Path:
    return tmp_path / "cws-home"


@contextlib.asynccontextmanager
async def opened(home: Path, **overrides: Any) -> AsyncIterator[PluginHost]:
    overrides = {"system_dir": home / "system", "entry_points": False,
                 "in_process_allowed": IN_PROCESS_ALLOWED, **overrides}  # fmt: skip
    config = HostConfig(home=home, **overrides)
    async with open_runtime() as runtime, open_plugin_host(runtime, config) as host:
        yield host


@pytest.fixture
async def host(home: Path) -> AsyncIterator[PluginHost]:
    write_plugin(home / "plugins", "echo")
    async with opened(home) as opened_host:
        yield opened_host


async def wait_until(predicate: Any, *, timeout: float = TIMEOUT) -> None:
    with trio.fail_after(timeout):
        # Real processes and files change outside Trio's view: poll them, bounded.
        while not await predicate():  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_discover_lists_good_and_refused_plugins(home: Path) -> None:
    plugins = home / "plugins"
    write_plugin(plugins, "good")
    write_plugin(plugins, "future", api_version="1.9")
    write_plugin(plugins, "other-major", api_version="2.0")
    (plugins / "no-manifest").mkdir()
    broken = write_plugin(plugins, "broken")
    (broken / "plugin.toml").write_text("[plugin\nname = ")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            found = {p.name: p.problem for p in await host.discover()}
            assert found["good"] is None
            assert "newer than this host's 1.0" in found["future"]
            assert "major versions differ" in found["other-major"]
            assert "cannot read it" in found["no-manifest"]
            assert "not valid TOML" in found["broken"]
            results = await host.load_all()
            assert results["good"] is None  # the others never stop it from loading
            assert "refused" in results["future"]
            with pytest.raises(PluginRefused, match="major versions differ"):
                await host.load("other-major")
            assert (await host.status("good")).state == "running"


async def test_in_process_plugin_serves_cli_api_and_events(host: PluginHost, home: Path) -> None:
    with trio.fail_after(TIMEOUT):
        status = await host.load("echo")
        assert (status.state, status.isolation, status.path) == (
            "running", "in_process", "/plugins/echo"
        )  # fmt: skip
        result = await host.execute_cli(["echo", "--text", "hi", "--times", "2"])
        assert (result.output, result.exit_code) == ("hello hi hi", 0)
        bad = await host.execute_cli(["echo", "--times", "x", "--text", "a"])
        assert bad.exit_code == 2
        assert "--times must be int, got 'x'" in bad.output
        missing = await host.execute_cli(["echo"])
        assert (missing.exit_code, "--text is required" in missing.output) == (2, True)
        assert (await host.execute_cli(["nope"])).exit_code == 2
        ((plugin, spec),) = host.api_endpoints()
        answer = await host.call_api(plugin, spec, APIRequest("GET", spec.path, {"a": "1"}))
        assert answer.data == {"query": {"a": "1"}, "pid": os.getpid()}  # in the daemon
        await host.runtime.publish("instance.started", "i-1")
        await wait_until(lambda: _exists(home / "plugin-data" / "echo" / "events"))
        assert (home / "plugin-data/echo/events").read_text() == "instance.started i-1\n"
        assert await host.plugin_status("echo") == {"greeting": "hello"}


async def _exists(path: Path) -> bool:
    return path.exists()


async def test_a_crashing_handler_restarts_the_plugin(host: PluginHost) -> None:
    with trio.fail_after(TIMEOUT):
        await host.load("echo")
        result = await host.execute_cli(["echo", "crash"])
        assert result.exit_code == 1
        assert "RuntimeError: asked to crash" in result.output
        await wait_until(lambda: _ready(host, "echo", restarts=1))
        assert (await host.execute_cli(["echo", "--text", "back"])).output == "hello back"
        status = await host.status("echo")
        assert (status.errors, status.calls) == (1, 2)


async def _ready(host: PluginHost, name: str, *, restarts: int) -> bool:
    status = await host.status(name)
    return status.ready and status.restarts >= restarts


async def test_disable_is_persisted_across_restarts(home: Path) -> None:
    write_plugin(home / "plugins", "echo")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            await host.disable("echo")
            assert not (await host.status("echo")).loaded
            with pytest.raises(PluginRefused, match="disabled"):
                await host.load("echo")
        async with opened(home) as host:
            results = await host.load_all()
            assert results == {"echo": "disabled"}
            status = await host.enable("echo")
            assert (status.enabled, status.state) == (True, "running")
    with sqlite3.connect(home / "state.db") as connection:
        events = [row[0] for row in connection.execute("SELECT event FROM history")]
    assert events[:3] == ["loaded", "unloaded", "disabled"]
    assert "enabled" in events


async def test_unknown_plugins(host: PluginHost) -> None:
    with pytest.raises(PluginNotFound):
        await host.load("ghost")
    with pytest.raises(PluginNotFound):
        await host.unload("echo")  # not loaded

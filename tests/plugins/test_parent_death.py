"""A daemon killed with SIGKILL takes every plugin process with it within a second: idle,
busy in a handler that never yields, or still importing; through the fork server or
started as fresh interpreters (issue 14: they used to be tied to a worker thread)."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from tests.cli._cws import CWS, Lines, cws_env
from tests.resilience._procs import (
    Proc,
    descendants,
    kill_leftovers,
    sigkill_and_time_the_orphans,
)

from ._fixtures import write_plugin

SPINNER = """
from pathlib import Path

from cws_actors import APIEndpointSpec, Capabilities, Plugin


class Spinner(Plugin):
    capabilities = Capabilities(
        api_endpoints=[APIEndpointSpec("/api/v1/spin", handler="spin", protected=False)]
    )

    async def initialize(self, ctx, config):
        self.ctx = ctx

    async def spin(self, request):
        (self.ctx.data_dir / "spinning").write_text("yes")
        while True:  # never yields to Trio: only a thread can notice the daemon is gone
            pass
"""

SLOW_IMPORT = """
import os
import time
from pathlib import Path

# The pid the host knows (a sandboxed import runs as pid 2 of its own namespace).
Path(os.environ["CWS_TEST_MARKER"]).write_text(os.environ.get("CWS_PLUGIN_PID", str(os.getpid())))
time.sleep(600)  # an import that takes its time

from cws_actors import Plugin


class Slow(Plugin):
    pass
"""


async def poll(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Wait for a real process to change (outside Trio's view)."""
    try:
        with trio.fail_after(timeout):
            while not predicate():  # noqa: ASYNC110 - real processes, bounded above
                await trio.sleep(0.02)
    except trio.TooSlowError:
        pytest.fail(f"{what} within {timeout:g} s")


@pytest.mark.parametrize("fork_server", ["true", "false"])
async def test_sigkill_of_the_daemon_ends_every_plugin_process_within_a_second(
    tmp_path: Path, fork_server: str
) -> None:
    home = tmp_path / "home"
    plugins = home / "plugins"
    write_plugin(plugins, "idle", isolation="subprocess")
    spinner = write_plugin(plugins, "spinner", isolation="subprocess")
    (spinner / "echo_plugin.py").write_text(SPINNER)
    (spinner / "plugin.toml").write_text(
        (spinner / "plugin.toml").read_text().replace("EchoPlugin", "Spinner")
    )
    # Its import writes the marker: its sandbox asks for that folder (the home in it
    # stays out of reach).
    marks = tmp_path / "marks"
    marks.mkdir()
    grant = f'\n[sandbox]\nfilesystem = [{{path = "{marks}", access = "write"}}]\n'
    slow = write_plugin(plugins, "slow", isolation="subprocess", extra=grant)
    (slow / "echo_plugin.py").write_text(textwrap.dedent(SLOW_IMPORT))
    marker = marks / "importing"
    env = cws_env(home, CWS_FORK_SERVER=fork_server, CWS_TEST_MARKER=str(marker))
    # The slow plugin's import needs its marker variable: let it through the allowlist.
    config = tmp_path / "cws.toml"
    config.write_text(
        '[plugins]\ndefault_grants = { slow = ["filesystem"] }\n'
        '[plugins.overrides.slow]\nenv = ["CWS_TEST_MARKER"]\n'
    )
    log = tmp_path / "daemon.log"
    with log.open("wb") as log_file:
        daemon = await trio.lowlevel.open_process(
            [CWS, "daemon", "--port", "0", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=log_file, env=env,
        )  # fmt: skip
    below: list[Proc] = []
    try:
        assert daemon.stdout is not None
        with trio.fail_after(30):
            url = await Lines(daemon.stdout).next()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def loaded() -> bool:
                body = (await client.get("/api/v1/plugins")).json()
                states = {p["name"]: p["state"] for p in body["plugins"]}
                return states.get("idle") == "running" and states.get("spinner") == "running"

            with trio.fail_after(30):
                while not await loaded():  # noqa: ASYNC110 - a real daemon, bounded above
                    await trio.sleep(0.05)
            async with trio.open_nursery() as nursery:
                # The request never gets an answer: the handler spins until it is killed.
                nursery.start_soon(_ignore_errors, client.get("/api/v1/spin"))
                await poll((home / "plugin-data" / "spinner" / "spinning").exists, "spin")
                nursery.cancel_scope.cancel()
        await poll(marker.exists, "the slow import")
        below = descendants(daemon.pid)
        pids = {p.pid for p in below}
        assert int(marker.read_text()) in pids, below  # the importing process is one of them
        assert len([p for p in below if p.state != "Z"]) >= 3, below
        took = await sigkill_and_time_the_orphans(daemon, below)
        assert took < 1.0, f"plugin processes outlived the daemon by {took:.2f}s"
    finally:
        if daemon.returncode is None:
            daemon.kill()
        kill_leftovers(below)


async def _ignore_errors(request: object) -> None:
    try:
        await request  # type: ignore[misc]
    except httpx.HTTPError:
        pass

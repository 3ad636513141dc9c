"""Real time, on purpose: what only wall time shows (issue 14).

A ``cws daemon`` with the default aws and gcp plugins and a plugin of the user's, left
idle for longer than Trio's worker-thread idle timeout (10 s: plugin processes were tied
to the thread that spawned them and got SIGKILL when it retired) and than the other
timers in play (the fork server's 10 s reply and 30 s ready timeouts, the probes' periods,
a 2 s instance poll), ends with no restart and the same pids; then SIGKILL of the daemon
leaves no process behind. Two daemons run side by side: one forks its plugins from the
fork server, the other starts fresh interpreters.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.cli._cws import CWS, Lines, cws_env
from tests.plugins._fixtures import write_plugin
from tests.resilience._procs import (
    Proc,
    descendants,
    kill_leftovers,
    live,
    sigkill_and_time_the_orphans,
)

IDLE = 32.0
"""Seconds of idleness: past the fork server's 30 s ready timeout, the longest timer."""


async def plugins(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    body = (await client.get("/api/v1/plugins")).json()
    return {plugin["name"]: plugin for plugin in body["plugins"]}


async def wait_ready(client: httpx.AsyncClient) -> None:
    with trio.fail_after(60):
        while (await client.get("/readyz")).status_code != 200:  # noqa: ASYNC110 - real daemon
            await trio.sleep(0.1)


async def soak(tmp_path: Path, fork_server: str, report: dict[str, Any]) -> None:
    home = tmp_path / f"home-{fork_server}"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    env = cws_env(
        home,
        CWS_ENTRY_POINTS="true",  # the default aws and gcp plugins
        CWS_FORK_SERVER=fork_server,
        CWS_INSTANCE_POLL_INTERVAL="2",
    )
    log = tmp_path / f"daemon-{fork_server}.log"
    with log.open("wb") as log_file:
        daemon = await trio.lowlevel.open_process(
            [CWS, "daemon", "--port", "0"], stdout=subprocess.PIPE, stderr=log_file, env=env
        )
    below: list[Proc] = []
    try:
        assert daemon.stdout is not None
        with trio.fail_after(30):
            url = await Lines(daemon.stdout).next()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await wait_ready(client)
            before = await plugins(client)
            assert {"aws", "gcp", "echo"} <= before.keys(), before
            for name in ("aws", "gcp", "echo"):
                assert before[name]["state"] == "running", before[name]
            below = [p for p in descendants(daemon.pid) if p.state != "Z"]
            await trio.sleep(IDLE)
            after = await plugins(client)
            for name in ("aws", "gcp", "echo"):
                assert after[name]["restarts"] == 0, (name, after[name], log.read_text())
                assert after[name]["pid"] == before[name]["pid"], (name, after[name])
            gone = [p for p in below if not live(p)]
            assert not gone, f"processes that died while the daemon was idle: {gone}"
            assert "the fork server exited" not in log.read_text()
        report[fork_server] = len(below)
        took = await sigkill_and_time_the_orphans(daemon, below)
        assert took < 1.0, f"plugin processes outlived the daemon by {took:.2f}s"
    finally:
        if daemon.returncode is None:
            daemon.kill()
        kill_leftovers(below)


async def test_an_idle_daemon_keeps_its_plugins_and_takes_them_when_killed(
    tmp_path: Path,
) -> None:
    report: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(soak, tmp_path, "true", report)
        nursery.start_soon(soak, tmp_path, "false", report)
    # With the fork server: the server and its three children; without: three runners.
    assert report["true"] >= 4, report
    assert report["false"] >= 3, report

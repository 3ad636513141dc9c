"""Starting ``cws daemon`` (issue 14): one daemon per home, a clear word on a port in
use, and a daemon that serves at once and is ready when its plugins are."""

from __future__ import annotations

import signal
import socket
import subprocess
import textwrap
from pathlib import Path

import httpx
import trio

from tests.plugins._fixtures import write_plugin

from ._cws import CWS, TIMEOUT, Lines, cws, cws_daemon, cws_env, expect

SLOW_PLUGIN = """
import os
import time
from pathlib import Path

Path(os.environ["CWS_TEST_GATE"]).with_suffix(".importing").write_text("yes")
while not Path(os.environ["CWS_TEST_GATE"]).exists():  # until the test opens the gate
    time.sleep(0.01)

from cws_actors import Plugin


class Slow(Plugin):
    pass
"""


async def test_a_second_daemon_on_a_served_home_names_the_first(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with cws_daemon(home) as first:
        second = await cws("daemon", "--port", "0", env=first.env)
        expect(second, 1, err=f"{home} is already served by another cws daemon")
        assert f"pid {first.process.pid}" in second.err
        assert f"serving {first.url}" in second.err
        assert "Traceback" not in second.err
        # The first one is untouched.
        async with httpx.AsyncClient(base_url=first.url, timeout=TIMEOUT) as client:
            assert (await client.get("/healthz")).status_code == 200


async def test_a_daemon_killed_with_sigkill_does_not_block_the_next(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cws_env(home)
    process = await trio.lowlevel.open_process(
        [CWS, "daemon", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(TIMEOUT):
            await Lines(process.stdout).next()
    finally:
        process.send_signal(signal.SIGKILL)
        with trio.fail_after(TIMEOUT):
            await process.wait()
        await process.stdout.aclose()  # type: ignore[union-attr]
    async with (
        cws_daemon(home) as again,
        httpx.AsyncClient(base_url=again.url, timeout=TIMEOUT) as client,
    ):
        assert (await client.get("/readyz")).status_code == 200


async def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await cws("daemon", "--port", str(port), env=cws_env(tmp_path / "home"))
    expect(result, 1, err=f"127.0.0.1:{port} is already in use")
    assert "--port 0" in result.err
    assert "Traceback" not in result.err
    assert "ExceptionGroup" not in result.err
    assert result.err.count("\n") == 1, result.err


async def test_healthz_at_once_and_readyz_names_the_plugins_still_loading(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    marks = tmp_path / "marks"  # its sandbox lets it write (and read) there
    marks.mkdir()
    grant = f'\n[sandbox]\nfilesystem = [{{path = "{marks}", access = "write"}}]\n'
    slow = write_plugin(home / "plugins", "slow", isolation="subprocess", extra=grant)
    (slow / "echo_plugin.py").write_text(textwrap.dedent(SLOW_PLUGIN))
    (slow / "plugin.toml").write_text(
        (slow / "plugin.toml").read_text().replace("EchoPlugin", "Slow")
    )
    write_plugin(home / "plugins", "quick")
    gate = marks / "gate"
    config = tmp_path / "cws.toml"
    config.write_text(
        '[plugins]\ndefault_grants = { slow = ["filesystem"] }\n'
        '[plugins.overrides.slow]\nenv = ["CWS_TEST_GATE"]\n'
    )
    env = cws_env(home, CWS_TEST_GATE=str(gate))
    process = await trio.lowlevel.open_process(
        [CWS, "daemon", "--port", "0", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        with trio.fail_after(TIMEOUT):
            url = await Lines(process.stdout).next()
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
                assert (await client.get("/healthz")).status_code == 200
                while not gate.with_suffix(".importing").exists():  # noqa: ASYNC110
                    await trio.sleep(0.01)
                waiting = await client.get("/readyz")
                assert waiting.status_code == 503
                assert waiting.headers["Retry-After"] == "1"
                body = waiting.json()
                assert "plugin slow loading" in body["waiting"], body
                assert "plugin slow loading" in body["detail"]
                # The quick plugin is not held up by the slow one's import.
                while True:
                    plugins = (await client.get("/api/v1/plugins")).json()["plugins"]
                    if {p["name"]: p["state"] for p in plugins}.get("quick") == "running":
                        break
                    await trio.sleep(0.01)
                assert (await client.get("/readyz")).json()["waiting"] == ["plugin slow loading"]
                # An event now would miss the subscriptions of the plugins still loading.
                made = await cws("token", "create", "--scope", "admin", env=env)
                bearer = {"Authorization": f"Bearer {made.out.strip()}"}
                event = {"topic": "instance.started", "payload": {}}
                early = await client.post("/api/v1/events", json=event, headers=bearer)
                assert early.status_code == 503, early.text
                assert early.headers["Retry-After"] == "1"
                assert "plugins are still loading" in early.json()["detail"]
                gate.write_text("open")
                while (await client.get("/readyz")).status_code != 200:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                states = {p["name"]: p["state"] for p in
                          (await client.get("/api/v1/plugins")).json()["plugins"]}  # fmt: skip
                assert states == {"quick": "running", "slow": "running"}
                late = await client.post("/api/v1/events", json=event, headers=bearer)
                assert late.status_code == 202, late.text
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(TIMEOUT):
            assert await process.wait() == 0
        await process.stdout.aclose()  # type: ignore[union-attr]

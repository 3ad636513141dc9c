"""Subprocess isolation with real processes: handshake, calls, crashes of every kind,
limits, the environment allow-list and clean shutdown."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from cws_actors import APIRequest, PluginHost
from cws_actors._isolation._launch import ENV_ALLOWLIST

from ._fixtures import code_for, write_plugin
from .test_host import TIMEOUT, opened, wait_until


@pytest.fixture(params=[True, False], ids=["fork-server", "fresh-python"])
async def host(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[PluginHost]:
    """Both ways of starting a plugin process: forked from the fork server, and a fresh
    interpreter."""
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    async with opened(home, fork_server=request.param) as opened_host:
        yield opened_host


def plugin_pid(host: PluginHost) -> int:
    pid = host._loaded["echo"].counters.pid
    assert pid is not None
    return pid


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def gone(pid: int) -> bool:
    """A crashed run's processes end moments after the restart, at idle priority (the
    host hears how the run ended before its keeper exits)."""
    return not alive(pid)


async def restarted(host: PluginHost, old_pid: int) -> bool:
    status = await host.status("echo")
    return status.ready and host._loaded["echo"].counters.pid != old_pid


async def test_calls_cross_the_process_boundary(host: PluginHost, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        status = await host.load("echo")
        assert (status.isolation, status.state) == ("subprocess", "running")
        pid = plugin_pid(host)
        assert pid != os.getpid()
        assert (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"
        ((name, spec),) = host.api_endpoints()
        answer = await host.call_api(name, spec, APIRequest("GET", spec.path, {"q": "1"}))
        assert answer.data == {"query": {"q": "1"}, "pid": pid}
        await host.runtime.publish("instance.stopped", "i-9")
        events = tmp_path / "home/plugin-data/echo/events"

        async def logged() -> bool:
            return events.exists() and events.read_text() == "instance.stopped i-9\n"

        await wait_until(logged)
        usage = await host.plugin_status("echo")
        assert usage["greeting"] == "hello"
        assert usage["pid"] == pid
        assert usage["memory_rss_kb"] > 1000
        assert usage["cpu_seconds"] >= 0


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("die", "killed by SIGKILL"),
        ("hog", "out of memory under its memory limit"),
        ("crash", "RuntimeError: asked to crash"),
    ],
)
async def test_a_crash_of_any_kind_is_classified_and_restarted(
    host: PluginHost, command: str, reason: str
) -> None:
    with trio.fail_after(TIMEOUT):
        await host.load("echo")
        old = plugin_pid(host)
        result = await host.execute_cli(["echo", command])
        assert result.exit_code == 1
        await wait_until(lambda: restarted(host, old))
        status = await host.status("echo")
        assert status.restarts == 1
        assert reason in (status.last_exit or "")
        await wait_until(lambda: gone(old))  # its keeper exits at idle priority
        assert (await host.execute_cli(["echo", "--text", "again"])).output == "hello again"


async def test_a_hung_plugin_is_restarted_by_liveness(host: PluginHost) -> None:
    with trio.fail_after(TIMEOUT):
        await host.load("echo")
        old = plugin_pid(host)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host.execute_cli, ["echo", "hang"])
            await wait_until(lambda: restarted(host, old))
        status = await host.status("echo")
        assert "liveness" in (status.last_exit or "")
        assert not alive(old)


async def test_critical_health_restarts_it(host: PluginHost) -> None:
    with trio.fail_after(TIMEOUT):
        await host.load("echo")
        old = plugin_pid(host)
        assert (await host.execute_cli(["echo", "sick"])).output == "now critical"
        await wait_until(lambda: restarted(host, old))


async def test_unload_stops_the_process_gracefully(
    host: PluginHost, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(TIMEOUT):
        await host.load("echo")
        pid = plugin_pid(host)
        await host.unload("echo")
        assert not alive(pid)
        stops = (tmp_path / "home/plugin-data/echo/stops").read_text().split()
        assert stops == [str(pid)]  # the plugin's stop() ran in its process
    # Its stop was answered and seen: the unload did not wait out the stop timeout (the
    # actor's stop used to cancel the task reading the answer: 3 s per plugin).
    assert not [r for r in caplog.records if "did not stop within" in r.getMessage()]


async def test_secrets_in_the_daemon_environment_do_not_leak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            environ = Path(f"/proc/{plugin_pid(host)}/environ").read_bytes().split(b"\0")
            names = {entry.split(b"=")[0].decode() for entry in environ if entry}
            assert "AWS_SECRET_ACCESS_KEY" not in names  # not even in its initial block
            seen = set((await host.execute_cli(["echo", "env"])).output.split())
            assert "CWS_PLUGIN_NAME" in seen
            assert "AWS_SECRET_ACCESS_KEY" not in seen
            assert seen <= {*ENV_ALLOWLIST, "CWS_PLUGIN_NAME", "CWS_PLUGIN_PID"}


async def test_plugin_output_goes_to_the_log_not_the_protocol(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    from ._fixtures import PLUGIN_CODE

    noisy = PLUGIN_CODE.replace(
        "    async def echo(self, args):\n",
        "    async def echo(self, args):\n        print('chatty plugin', flush=True)\n",
    )
    write_plugin(home / "plugins", "echo", isolation="subprocess", code=noisy)
    caplog.set_level(logging.WARNING, logger="cws.plugin.echo")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            assert (await host.execute_cli(["echo", "--text", "y"])).output == "hello y"

            async def logged() -> bool:
                return any("chatty plugin" in r.getMessage() for r in caplog.records)

            await wait_until(logged)


async def test_the_plugin_exits_when_the_daemon_dies(tmp_path: Path) -> None:
    """The runner exits when its stdin closes, as it does when the daemon is killed."""
    import json
    import subprocess
    import sys

    plugin_dir = write_plugin(tmp_path, "echo", isolation="subprocess")
    spec = {
        "name": "echo", "entry": "echo_plugin:EchoPlugin", "folder": str(plugin_dir),
        "config": {}, "data_dir": str(tmp_path / "data"), "limits": {},
    }  # fmt: skip
    with trio.fail_after(TIMEOUT):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "cws_actors._isolation._runner", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        assert await process.stdout.receive_some(4)  # the hello frame arrived
        await process.stdin.aclose()  # the daemon is gone
        assert await process.wait() == 0
        await process.stdout.aclose()


async def test_the_cpu_limit_kills_a_spinning_plugin(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess", limits="cpu_seconds = 1")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            old = plugin_pid(host)
            assert (await host.execute_cli(["echo", "spin"])).exit_code == 1
            await wait_until(lambda: restarted(host, old))
            status = await host.status("echo")
            assert "over its CPU-seconds limit" in (status.last_exit or "")


async def test_the_open_files_limit_holds(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess", limits="open_files = 32")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            assert (await host.execute_cli(["echo", "files", "--count", "8"])).output == "8"
            result = await host.execute_cli(["echo", "files", "--count", "64"])
            assert result.exit_code == 1
            assert "Too many open files" in result.output


async def test_operator_limits_override_the_manifest(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    overrides = {"echo": {"limits": {"open_files": 32}}}
    with trio.fail_after(TIMEOUT):
        async with opened(home, overrides=overrides) as host:
            await host.load("echo")
            limits = Path(f"/proc/{plugin_pid(host)}/limits").read_text()
            (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
            assert line.split()[3:5] == ["32", "32"]
            (line,) = [row for row in limits.splitlines() if row.startswith("Max address space")]
            assert line.split()[3] == str(200 * 1024 * 1024)  # the manifest's memory_mb stays


async def test_one_plugin_killed_the_other_keeps_serving(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    write_plugin(home / "plugins", "other", isolation="subprocess", code=code_for("other"))
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            await host.load("other")
            victim = plugin_pid(host)
            os.kill(victim, signal.SIGKILL)
            served = 0
            while not await restarted(host, victim):
                result = await host.execute_cli(["other", "--text", "still here"])
                assert result.output == "hello still here"
                served += 1
            assert served > 0
            assert (await host.status("other")).restarts == 0
            assert "killed by SIGKILL" in ((await host.status("echo")).last_exit or "")


DAEMON = """
import sys, trio
from pathlib import Path
from cws_actors import HostConfig, open_plugin_host, open_runtime

async def main():
    home = Path(sys.argv[1])
    config = HostConfig(home=home, system_dir=home / "system", entry_points=False)
    async with open_runtime() as runtime, open_plugin_host(runtime, config) as host:
        await host.load("echo")
        print(host._loaded["echo"].counters.pid, host._fork_server._process.pid, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_a_killed_daemon_takes_its_plugins_and_fork_server_with_it(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    with trio.fail_after(TIMEOUT):
        daemon = await trio.lowlevel.open_process(
            [sys.executable, "-c", DAEMON, str(home)], stdout=subprocess.PIPE
        )
        assert daemon.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await daemon.stdout.receive_some(100)
        plugin, server = (int(word) for word in line.split())
        assert alive(plugin)
        assert alive(server)
        daemon.kill()
        await daemon.wait()
        await daemon.stdout.aclose()

        async def both_gone() -> bool:
            return not alive(plugin) and not alive(server)

        await wait_until(both_gone)


@pytest.mark.parametrize("isolation", ["in_process", "subprocess"])
async def test_a_plugin_publishes_on_the_bus(tmp_path: Path, isolation: str) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation=isolation)
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            with host.runtime.bus.subscribe("echo.*") as events:
                assert (await host.execute_cli(["echo", "announce"])).output == "announced"
                event = await events.receive()
            assert event.topic == "echo.announced"
            expected_pid = os.getpid() if isolation == "in_process" else plugin_pid(host)
            assert event.payload == {"pid": expected_pid}
            status = await host.status("echo")
            assert (status.calls, status.published) == (1, 1)


@pytest.mark.parametrize("isolation", ["in_process", "subprocess"])
async def test_ready_takes_a_plugin_out_of_routing_without_a_restart(
    tmp_path: Path, isolation: str
) -> None:
    """A plugin whose ``ready()`` says no (its cloud is down) answers NotReady, is not
    restarted, and comes back by itself when ``ready()`` says yes again."""
    from ._fixtures import PLUGIN_CODE

    code = PLUGIN_CODE.replace(
        "    async def status(self):",
        "    async def ready(self):\n"
        "        return not (self.ctx.data_dir / 'down').exists()\n\n"
        "    async def status(self):",
    )
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation=isolation, code=code)
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            down = home / "plugin-data/echo/down"
            down.touch()

            async def refused() -> bool:
                result = await host.execute_cli(["echo", "--text", "x"])
                return result.exit_code == 1 and "not ready" in result.output

            await wait_until(refused)
            down.unlink()

            async def served() -> bool:
                return (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"

            await wait_until(served)
            assert (await host.status("echo")).restarts == 0

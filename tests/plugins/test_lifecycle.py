"""Starting and stopping plugins under trouble: a start that never finishes, a stop that
hangs, an update whose answer never comes, a forced unload, a flood on stderr."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from cws_actors import PluginHost, PluginRefused
from cws_actors._isolation._log import MAX_LINE, TRUNCATED, StderrLog

from ._fixtures import PLUGIN_CODE, code_for, write_plugin
from .test_host import TIMEOUT, opened, wait_until
from .test_subprocess import alive, plugin_pid, restarted

STUCK_START = PLUGIN_CODE.replace(
    "        self.healthy = True\n",
    "        self.healthy = True\n        await trio.sleep_forever()\n",
)
HUNG_STOP = PLUGIN_CODE.replace(
    "    async def stop(self, ctx):\n",
    "    async def stop(self, ctx):\n        await trio.sleep_forever()\n",
)


@pytest.mark.parametrize("isolation", ["in_process", "subprocess"])
async def test_a_start_that_never_finishes_fails_and_the_host_keeps_working(
    tmp_path: Path, isolation: str
) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation=isolation)
    write_plugin(
        home / "plugins", "stuck", isolation=isolation, code=code_for("stuck", STUCK_START)
    )
    write_plugin(home / "plugins", "later", isolation=isolation, code=code_for("later"))
    with trio.fail_after(TIMEOUT):
        async with opened(home, start_timeout=1) as host:
            await host.load("echo")
            async with trio.open_nursery() as nursery:

                async def load_stuck() -> None:
                    with trio.fail_after(10), pytest.raises(PluginRefused) as refused:
                        await host.load("stuck")
                    assert "did not start within 1s" in refused.value.reason

                nursery.start_soon(load_stuck)
                await trio.testing.wait_all_tasks_blocked(0.05)
                # While it tries, a crash of another plugin still restarts that one.
                assert (await host.execute_cli(["echo", "crash"])).exit_code == 1
            await wait_until(lambda: _ready(host, "echo"))
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"
            status = await host.load("later")
            assert status.state == "running"
            assert (await host.execute_cli(["later", "--text", "y"])).output == "hello y"
            assert not (await host.status("stuck")).loaded


async def _ready(host: PluginHost, name: str) -> bool:
    status = await host.status(name)
    return status.ready and status.restarts >= 1


async def test_a_hot_swap_leaves_no_old_process_whose_stop_hangs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess", code=HUNG_STOP)
    new = write_plugin(tmp_path / "src", "echo", version="2.0.0", isolation="subprocess")
    with trio.fail_after(TIMEOUT):
        # The swap holds the actor (its probes too) while the old version stops.
        async with opened(home, probe_period=1000) as host:
            await host.load("echo")
            old = plugin_pid(host)
            status = await host.update("echo", new)
            assert status.version == "2.0.0"
            assert not alive(old)  # terminated, then killed, before update returned
            assert plugin_pid(host) != old
            assert (await host.execute_cli(["echo", "--text", "v2"])).output == "hello v2"


async def test_an_update_whose_start_hangs_is_refused_in_bounded_time(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo")
    new = write_plugin(tmp_path / "src", "echo", version="2.0.0", code=STUCK_START)
    with trio.fail_after(TIMEOUT):
        async with opened(home, start_timeout=1) as host:
            await host.load("echo")
            with trio.fail_after(10), pytest.raises(PluginRefused, match="did not start"):
                await host.update("echo", new)
            assert (await host.status("echo")).version == "1.0.0"
            assert 'version = "1.0.0"' in (home / "plugins/echo/plugin.toml").read_text()
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"


SLOW_V2 = PLUGIN_CODE.replace(
    "        self.healthy = True\n",
    "        self.healthy = True\n"
    "        (ctx.data_dir / 'v2-starting').touch()\n"
    "        await trio.sleep(1)\n"
    "        self.greeting = 'v2'\n",
)


async def test_a_cancelled_update_leaves_host_and_actor_agreeing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo")
    new = write_plugin(tmp_path / "src", "echo", version="2.0.0", code=SLOW_V2)
    starting = home / "plugin-data/echo/v2-starting"
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(host.update, "echo", new)

                    async def swap_under_way() -> bool:
                        return starting.exists()

                    await wait_until(swap_under_way)
                    scope.cancel()  # the operator gave up while v2 is starting
            assert (await host.status("echo")).version == "1.0.0"
            assert 'version = "1.0.0"' in (home / "plugins/echo/plugin.toml").read_text()
            # Not v2: the actor was restarted with the version the host keeps.
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"
            assert not list((home / "plugins").glob(".*"))  # no staging or backup left
            events = [entry.event for entry in await host.history("echo")]
            assert "update_failed" in events


async def test_a_forced_unload_kills_through_the_process_handle(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            counters = host._loaded["echo"].counters
            first = plugin_pid(host)
            assert counters.kill is not None
            assert (await host.execute_cli(["echo", "die"])).exit_code == 1
            await wait_until(lambda: restarted(host, first))
            assert counters.kill is not None  # now the new process's
            victim = plugin_pid(host)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(host.execute_cli, ["echo", "hang"])
                await trio.testing.wait_all_tasks_blocked(0.05)
                with trio.fail_after(2):  # the hung handler is not waited for
                    await host.unload("echo", force=True)
            assert not alive(victim)
            assert counters.kill is None  # its process is gone: nothing left to signal
            stops = home / "plugin-data/echo/stops"
            assert str(victim) not in (stops.read_text().split() if stops.exists() else [])


FLOOD = PLUGIN_CODE.replace(
    "    async def spin(self, args):\n        while True:\n            pass\n",
    "    async def spin(self, args):\n"
    "        for _ in range(80):\n"
    "            os.write(2, b'x' * 65536)\n"
    "        os.write(2, b'\\nafter the flood\\n')\n"
    "        for number in range(2000):\n"
    "            os.write(2, f'line {number}\\n'.encode())\n"
    "        return CommandResult('flooded')\n",
)


async def test_a_stderr_flood_costs_the_daemon_bounded_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess", code=FLOOD)
    caplog.set_level(logging.WARNING, logger="cws.plugin.echo")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            assert (await host.execute_cli(["echo", "spin"])).output == "flooded"
            await host.unload("echo")  # its stderr ends: the last counts are reported
    messages = [r.getMessage() for r in caplog.records if r.name == "cws.plugin.echo"]
    (cut,) = [m for m in messages if m.startswith("x")]  # 5 MiB, one capped record
    assert cut == "x" * MAX_LINE + TRUNCATED
    assert all(len(m) <= MAX_LINE + len(TRUNCATED) for m in messages)
    assert "after the flood" in messages
    lines = [m for m in messages if m.startswith("line ")]
    suppressed = [int(m.split()[0]) for m in messages if "lines suppressed" in m]
    assert suppressed  # over the burst of 500: the rest was counted, not logged
    assert len(lines) + sum(suppressed) == 2000


async def test_the_stderr_buffer_never_holds_more_than_a_line() -> None:
    logger = logging.getLogger("cws.plugin.test-buffer")
    log = StderrLog(logger)
    for _ in range(100):
        log.feed(b"y" * 100_000)
        assert log.buffered <= MAX_LINE + 1
    log.feed(b"tail\nnext")
    assert log.buffered == len("next")
    log.close()

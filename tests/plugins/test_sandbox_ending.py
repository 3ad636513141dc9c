"""How a sandboxed run ends, and why a restart does not wait for all of it.

A run is three processes: the keeper (what the host tracks), the init (PID 1 of the
run's namespace) and the runner (the plugin's code). When the runner dies, the init
tells the host at once how, over a pipe of the fork server's, then the rest of the run
is stopped and ended moments later, and the init and the keeper exit at idle priority;
when the keeper is killed, the init does the same, and nothing of the plugin is left.
Every fact here is read from /proc; nothing is timed."""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from cws_actors import PluginHost
from cws_actors._isolation._keeper import process_tree
from cws_actors._isolation._kernel import support

from ._fixtures import write_plugin
from .test_host import TIMEOUT, opened, wait_until

ENDER = """
import os
import signal
import time

from cws_actors import Capabilities, CLICommandSpec, CommandResult, Plugin


class EchoPlugin(Plugin):
    capabilities = Capabilities(cli_commands=[
        CLICommandSpec("ender", handler="echo"),
        CLICommandSpec("orphan", handler="orphan", parent="ender"),
        CLICommandSpec("usr1", handler="usr1", parent="ender"),
    ])

    async def echo(self, args):
        return CommandResult("here")

    async def orphan(self, args):
        # A double-forked, setsid child that sleeps: nobody waits for it.
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(write, b"+")
                time.sleep(600)
            os._exit(0)
        os.waitpid(pid, 0)
        os.read(read, 1)
        return CommandResult("left behind")

    async def usr1(self, args):
        # The signal the init takes for "the keeper is gone", sent to the init (PID 1
        # of the run's namespace) while the keeper lives.
        try:
            os.kill(1, signal.SIGUSR1)
        except PermissionError:
            return CommandResult("refused")
        return CommandResult("sent")
"""

SCHED_IDLE = 5


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _state(pid: int) -> str:
    fields = _stat(pid)
    return fields[0] if fields else "gone"


def _policy(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[38]) if fields else None  # field 41 of stat: the scheduling policy


def _gone(pids: list[int]) -> Callable[[], Awaitable[bool]]:
    """A predicate for wait_until: every process of ``pids`` has ended."""

    async def gone() -> bool:
        return all(_state(pid) in ("Z", "gone") for pid in pids)

    return gone


async def _serving(plugins: PluginHost) -> bool:
    return (await plugins.status("ender")).ready


def _keeper(host: PluginHost) -> int:
    pid = host._loaded["ender"].counters.pid
    assert pid is not None
    return pid


@pytest.fixture
async def home(tmp_path: Path) -> Path:
    if not support().pid_namespace:
        pytest.fail("this machine makes no PID namespace: see `cws plugin status`")
    home = tmp_path / "home"
    write_plugin(home / "plugins", "ender", isolation="subprocess", code=ENDER)
    return home


async def test_a_dead_runner_is_restarted_without_waiting_for_its_keeper(home: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with opened(home) as plugins:
            await plugins.load("ender")
            keeper = _keeper(plugins)
            _, init, runner = process_tree(keeper)
            assert (await plugins.execute_cli(["ender", "orphan"])).output == "left behind"
            (orphan,) = set(process_tree(keeper)) - {keeper, init, runner}
            # A stopped keeper can neither read the init's word nor exit: the host
            # hears from the init directly.
            os.kill(keeper, signal.SIGSTOP)
            os.kill(runner, signal.SIGKILL)

            async def restarted() -> bool:
                status = await plugins.status("ender")
                return _keeper(plugins) != keeper and status.state == "running"

            await wait_until(restarted)
            status = await plugins.status("ender")
            assert status.restarts == 1
            assert "killed by SIGKILL" in (status.last_exit or "")
            assert (await plugins.execute_cli(["ender"])).output == "here"
            # The old keeper is still there, stopped; its init exits (a zombie its
            # stopped parent cannot reap) after lowering itself to idle priority.
            assert _state(keeper) == "T"

            async def init_exited() -> bool:
                return _state(init) == "Z"

            await wait_until(init_exited)
            assert _policy(init) == SCHED_IDLE
            assert _state(orphan) == "gone"  # the init ended the rest of the run first
            os.kill(keeper, signal.SIGCONT)
            await wait_until(_gone([keeper]))


async def test_a_killed_keeper_takes_the_whole_run_along(home: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with opened(home) as plugins:
            await plugins.load("ender")
            keeper = _keeper(plugins)
            assert (await plugins.execute_cli(["ender", "orphan"])).output == "left behind"
            run = process_tree(keeper)
            assert len(run) == 4  # keeper, init, runner, the orphan
            os.kill(keeper, signal.SIGKILL)
            await wait_until(_gone(run))
            status = await plugins.status("ender")
            assert "killed by SIGKILL" in (status.last_exit or "")
            await wait_until(lambda: _serving(plugins))
            assert (await plugins.execute_cli(["ender"])).output == "here"


async def test_only_the_keepers_death_makes_the_init_end_the_run(home: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with opened(home) as plugins:
            await plugins.load("ender")
            keeper = _keeper(plugins)
            run = process_tree(keeper)
            # Landlock's signal scoping (ABI 6, kernel 6.12) refuses it; without it the
            # signal reaches the init, which sees its keeper alive and ignores it.
            sent = (await plugins.execute_cli(["ender", "usr1"])).output
            assert sent == ("refused" if support().landlock_abi >= 6 else "sent"), sent
            # Sent from outside, it reaches the init, which sees its keeper alive.
            os.kill(run[1], signal.SIGUSR1)
            assert (await plugins.execute_cli(["ender"])).output == "here"
            assert process_tree(keeper) == run
            assert (await plugins.status("ender")).restarts == 0


async def test_a_paused_run_whose_keeper_is_killed_still_ends(home: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with opened(home) as plugins:
            await plugins.load("ender")
            keeper = _keeper(plugins)
            run = process_tree(keeper)
            plugins.runtime.faults.inject("/plugins/ender", "pause:60s")

            async def paused() -> bool:
                return _state(run[2]) == "T"

            await wait_until(paused)  # the runner; its keeper and init go on
            os.kill(keeper, signal.SIGKILL)
            await wait_until(_gone(run))
            await wait_until(lambda: _serving(plugins))

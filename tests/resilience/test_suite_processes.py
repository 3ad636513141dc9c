"""The resilience suite, processes: a hundred SIGKILLs of a real subprocess plugin, each
one detected and restarted, and no zombie or orphan process left at any point (checked
in /proc, by pid and start time so that a recycled pid cannot pass for an old one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from cws_actors import PluginHost
from cws_actors.faults import FaultState
from supervision import Backoff
from tests.plugins._fixtures import code_for, write_plugin
from tests.plugins.test_host import opened
from tests.plugins.test_subprocess import plugin_pid

from ._procs import Proc, descendants, proc, still_running

KILLS = 100
# One kill, its detection, a restart from the fork server and a call: milliseconds each.
# The bound is for the whole run of a hundred, on a loaded machine.
TIMEOUT = 40
POLL = 0.005


async def poll(predicate: object, what: str) -> None:
    """Wait for a real process to change, polling /proc (outside Trio's view)."""
    assert callable(predicate)
    try:
        with trio.fail_after(10):
            while not await predicate():  # noqa: ASYNC110 - real processes, bounded above
                await trio.sleep(POLL)
    except trio.TooSlowError:
        pytest.fail(f"{what} within 10 s")


def plugin_proc(host: PluginHost) -> Proc:
    seen = proc(plugin_pid(host))
    assert seen is not None
    return seen


def zombies_below_us() -> list[Proc]:
    return [p for p in descendants() if p.state == "Z"]


@pytest.mark.parametrize(
    ("fork_server", "kills"),
    # A fresh interpreter takes a quarter of a second to start: fewer kills there.
    [(True, KILLS), (False, 10)],
    ids=["fork-server", "fresh-python"],
)
async def test_sigkills_are_each_detected_and_restarted_leaving_no_process(
    tmp_path: Path, fork_server: bool, kills: int
) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    before = {p.key for p in descendants()}
    seen: set[tuple[int, int]] = set()
    with trio.fail_after(TIMEOUT):
        # Room for every kill in the restart budget, and no backoff between them: this
        # measures detection and restart, not the crash-loop policy.
        budget = {"max_restarts": kills + 1, "backoff": Backoff(0.0, 0.0)}
        async with opened(home, fork_server=fork_server, **budget) as host:
            await host.load("echo")
            faults = host.runtime.faults
            parent = os.getpid()
            if fork_server:
                assert host._fork_server is not None
                assert host._fork_server._process is not None
                server = proc(host._fork_server._process.pid)
                assert server is not None
                assert server.ppid == os.getpid()
                seen.add(server.key)
                parent = server.pid
            else:
                assert host._fork_server is None
            for round_ in range(1, kills + 1):
                old = plugin_proc(host)
                assert old.ppid == parent  # forked by the server, or started by us
                seen.add(old.key)
                record = faults.inject("/plugins/echo", "kill:once")

                async def restarted(old: Proc = old, round_: int = round_) -> bool:
                    status = await host.status("echo")
                    pid = host._loaded["echo"].counters.pid
                    return status.ready and status.restarts == round_ and pid != old.pid

                await poll(restarted, f"kill {round_} was not followed by a restart")
                status = await host.status("echo")
                assert status.state == "running"
                assert "killed by SIGKILL" in (status.last_exit or ""), status.last_exit
                assert faults.get(record.id).state is FaultState.SPENT

                async def reaped(old: Proc = old) -> bool:
                    return not still_running({old.key})

                # Gone altogether, not a zombie: the fork server reaped it.
                await poll(reaped, f"the process killed in round {round_} was never reaped")
                assert zombies_below_us() == []
                result = await host.execute_cli(["echo", "--text", str(round_)])
                assert (result.exit_code, result.output) == (0, f"hello {round_}")
            assert len(faults.firings()) == kills
            assert all(f.detail == "SIGKILL" for f in faults.firings())
            status = await host.status("echo")
            assert (status.restarts, status.errors) == (kills, 0)
            seen.add(plugin_proc(host).key)
        # The host is closed: it stopped the last plugin and the fork server, and reaped
        # both (a process left over would have been reparented to init: an orphan).
        assert still_running(seen) == set()
        assert {p.key for p in descendants()} - before == set()
    starts = (home / "plugin-data/echo/starts").read_text().split()
    assert len(starts) == kills + 1  # the first start and one per kill
    assert len(set(starts)) == kills + 1  # each in a process of its own
    # Only the last process was stopped gracefully; the others died by SIGKILL.
    assert (home / "plugin-data/echo/stops").read_text().split() == starts[-1:]


async def test_several_plugins_killed_at_once_each_come_back_alone(tmp_path: Path) -> None:
    """Three subprocess plugins SIGKILLed together, ten times over, beside a fourth that
    is never touched: each killed one is restarted on its own (a restart of one is not
    a restart of its siblings), the untouched one keeps its process and its count, and
    nothing is left in /proc."""
    home = tmp_path / "home"
    names = ["a", "b", "c", "calm"]
    for name in names:
        write_plugin(home / "plugins", name, isolation="subprocess", code=code_for(name))
    before = {p.key for p in descendants()}
    rounds = 10
    with trio.fail_after(TIMEOUT):
        budget = {"max_restarts": rounds + 1, "backoff": Backoff(0.0, 0.0)}
        async with opened(home, **budget) as host:
            for name in names:
                await host.load(name)

            def pid_of(name: str) -> int:
                pid = host._loaded[name].counters.pid
                assert pid is not None
                return pid

            calm = plugin_proc_of(pid_of("calm"))
            seen: set[tuple[int, int]] = {calm.key}
            for round_ in range(1, rounds + 1):
                old = {name: plugin_proc_of(pid_of(name)) for name in names[:3]}
                for name, process in old.items():
                    seen.add(process.key)
                    host.runtime.faults.inject(f"/plugins/{name}", "kill:once")

                async def all_back(round_: int = round_) -> bool:
                    for name in names[:3]:
                        status = await host.status(name)
                        if not (status.ready and status.restarts == round_):
                            return False
                    return True

                await poll(all_back, f"round {round_}: not every killed plugin came back")
                for name in names[:3]:
                    assert pid_of(name) != old[name].pid
                    result = await host.execute_cli([name, "--text", str(round_)])
                    assert (result.exit_code, result.output) == (0, f"hello {round_}")

                async def reaped(old: dict[str, Proc] = old) -> bool:
                    return not still_running({p.key for p in old.values()})

                await poll(reaped, f"round {round_}: a killed process was never reaped")
                assert zombies_below_us() == []
            status = await host.status("calm")
            assert (status.restarts, status.ready) == (0, True)
            assert pid_of("calm") == calm.pid  # its process was never touched
            for name in names:
                seen.add(plugin_proc_of(pid_of(name)).key)
        assert still_running(seen) == set()
        assert {p.key for p in descendants()} - before == set()


def plugin_proc_of(pid: int) -> Proc:
    seen = proc(pid)
    assert seen is not None
    return seen

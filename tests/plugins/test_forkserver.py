"""The fork server with real processes: replies matched to their requests, cancelled
spawns that leave nothing behind, the server's death, and pidfds that name the child."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from cws_actors._isolation._forkserver import ForkServer, ForkServerGone
from cws_actors._isolation._protocol import FrameReader

from ._fixtures import code_for, write_plugin
from .test_host import TIMEOUT, opened, wait_until
from .test_subprocess import alive, plugin_pid, restarted


@pytest.fixture
def spec(tmp_path: Path) -> dict[str, Any]:
    folder = write_plugin(tmp_path, "echo", isolation="subprocess")
    return {
        "name": "echo", "entry": "echo_plugin:EchoPlugin", "folder": str(folder),
        "config": {}, "data_dir": str(tmp_path / "data"), "limits": {},
    }  # fmt: skip


ENV = {"PATH": os.environ["PATH"]}


@pytest.fixture
async def server() -> AsyncIterator[ForkServer]:
    server = ForkServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run, ENV)
        yield server
        nursery.cancel_scope.cancel()


def server_pid(server: ForkServer) -> int:
    assert server._process is not None
    return server._process.pid


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def hello_pid(process: Any) -> int:
    hello = await FrameReader(process.stdout).receive()
    assert hello is not None
    return int(hello["pid"])


async def test_a_spawn_cancelled_after_its_request_went_out_leaves_nothing(
    server: ForkServer, spec: dict[str, Any]
) -> None:
    with trio.fail_after(TIMEOUT):
        fds_before = open_fds()
        stopped = server_pid(server)
        os.kill(stopped, signal.SIGSTOP)  # the request waits in the socket, unanswered
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(server.spawn, spec, ENV)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            assert scope.cancelled_caught
            assert open_fds() == fds_before  # our pipe ends are closed
        finally:
            os.kill(stopped, signal.SIGCONT)  # it forks for the cancelled spawn now
        second = await server.spawn(spec, ENV)
        assert await hello_pid(second) == second.pid  # the reply is this spawn's own

        async def only_the_second_left() -> bool:
            return children_of(stopped) == {second.pid}

        await wait_until(only_the_second_left)  # the orphan was killed
        second.kill()
        assert await second.wait() == -signal.SIGKILL


async def test_concurrent_spawns_each_get_their_own_child(
    server: ForkServer, spec: dict[str, Any]
) -> None:
    with trio.fail_after(TIMEOUT):
        processes: list[Any] = []

        async def spawn_one() -> None:
            processes.append(await server.spawn(spec, ENV))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(spawn_one)
        assert [await hello_pid(p) for p in processes] == [p.pid for p in processes]
        for process in processes:
            process.kill()
            await process.wait()


async def test_the_pidfd_comes_from_the_server_and_names_the_child(
    server: ForkServer, spec: dict[str, Any]
) -> None:
    with trio.fail_after(TIMEOUT):
        process = await server.spawn(spec, ENV)
        pidfd = process._pidfd
        fdinfo = Path(f"/proc/self/fdinfo/{pidfd}").read_text()
        assert f"Pid:\t{process.pid}" in fdinfo
        process.terminate()
        assert await process.wait() != 0
        assert process._pidfd == -1  # closed once it exited: no signal can go astray
        process.kill()  # a no-op now, whatever holds that pid by then


async def test_a_dying_server_wakes_its_waiting_spawns_and_run_returns(
    spec: dict[str, Any],
) -> None:
    server = ForkServer()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, ENV)
            pid = server_pid(server)
            os.kill(pid, signal.SIGSTOP)
            outcome: list[BaseException] = []

            async def spawn() -> None:
                try:
                    await server.spawn(spec, ENV)
                except ForkServerGone as exc:
                    outcome.append(exc)

            nursery.start_soon(spawn)
            await trio.testing.wait_all_tasks_blocked()
            os.kill(pid, signal.SIGKILL)
        # The nursery closed without an error: run() returned by itself.
        assert len(outcome) == 1
        assert not server.running
        with pytest.raises(ForkServerGone):
            await server.spawn(spec, ENV)


async def test_a_stuck_server_fails_the_spawn_in_bounded_time(spec: dict[str, Any]) -> None:
    server = ForkServer(reply_timeout=0.5)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, ENV)
            os.kill(server_pid(server), signal.SIGSTOP)
            try:
                with pytest.raises(ForkServerGone, match="did not answer"):
                    await server.spawn(spec, ENV)
            finally:
                os.kill(server_pid(server), signal.SIGCONT)
            nursery.cancel_scope.cancel()


async def test_the_host_survives_a_killed_fork_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    write_plugin(home / "plugins", "other", isolation="subprocess", code=code_for("other"))
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:  # no exception may escape this
            await host.load("echo")
            assert host._fork_server is not None
            first = host._fork_server
            old = plugin_pid(host)
            os.kill(server_pid(first), signal.SIGSTOP)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(host.load, "other")

                async def request_waiting() -> bool:
                    return bool(first._requests)

                await wait_until(request_waiting)  # its fork request sits in the socket
                os.kill(server_pid(first), signal.SIGKILL)
            # The waiting load fell back to a fresh interpreter.
            assert (await host.execute_cli(["other", "--text", "o"])).output == "hello o"
            # The server's children have no one to report their exits: they are killed,
            # and restart from a fresh interpreter.
            await wait_until(lambda: restarted(host, old))
            assert not first.running
            assert not alive(old)
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"
            crashed = plugin_pid(host)
            assert (await host.execute_cli(["echo", "die"])).exit_code == 1
            await wait_until(lambda: restarted(host, crashed))
            assert (await host.execute_cli(["echo", "--text", "y"])).output == "hello y"
            # The next subprocess load starts a new server.
            await host.unload("echo")
            await host.load("echo")
            assert host._fork_server is not first
            assert host._fork_server.running
            assert (await host.execute_cli(["echo", "--text", "z"])).output == "hello z"


async def test_a_slow_start_does_not_count_against_the_first_spawn(
    tmp_path: Path, spec: dict[str, Any]
) -> None:
    """A cold machine (first .pyc writes, a cold disk cache) can take seconds to import
    what the server preloads: that is waited for before the server counts as started,
    and a spawn's reply_timeout counts the fork alone."""
    slow = tmp_path / "slow-site"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(1.5)\n")
    server = ForkServer(reply_timeout=0.5)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run, ENV | {"PYTHONPATH": str(slow)})
            child = await server.spawn(spec, ENV)  # within 0.5 s, though startup took 1.5
            assert await hello_pid(child) == child.pid
            child.kill()
            assert await child.wait() == -signal.SIGKILL
            nursery.cancel_scope.cancel()


async def test_a_server_that_never_gets_ready_is_refused_and_ended(tmp_path: Path) -> None:
    slow = tmp_path / "stuck-site"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(60)\n")
    server = ForkServer(ready_timeout=0.5)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError, match=r"did not get ready within 0.5s"):
                await nursery.start(server.run, ENV | {"PYTHONPATH": str(slow)})
    assert server._process is not None
    assert server._process.returncode is not None  # killed, and reaped
    assert not server.running

"""The resilience suite, crash consistency: ``kill -9`` of the real ``cws daemon`` in the
middle of a plugin install and in the middle of durable event handling. After a restart
the state database is intact, no plugin is half installed, and every durable event the
daemon acknowledged to its publisher (a 202) is delivered, exactly once where the kill
could not have interrupted it.

The "middle" is observed, not guessed: the plugin under test writes a marker (its import
during the install's code check; each delivery's line in a file) and then waits on a gate
file that the test creates only when it is time to go on."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.cli._cws import (
    CWS,
    TIMEOUT,
    Daemon,
    Lines,
    close_pipes,
    cws,
    cws_daemon,
    cws_env,
    wait_until_ready,
)
from tests.cli._cws import create_token as create_cli_token

from ._procs import proc

POLL = 0.01
EVENTS = 20
BLOCK_AT = 8
"""The delivery of this event (by its ``n``) waits on the gate: it is in flight when the
daemon is killed."""


async def poll(predicate: Callable[[], bool], what: str, *, timeout: float = TIMEOUT) -> None:
    """Wait for real processes and files to change (outside Trio's view), bounded."""
    try:
        with trio.fail_after(timeout):
            while not predicate():  # noqa: ASYNC110 - real processes, bounded above
                await trio.sleep(POLL)
    except trio.TooSlowError:
        raise AssertionError(f"{what} within {timeout} s") from None


def exited(pid: int) -> bool:
    """Gone, or a zombie that its new parent has not reaped yet: either way not running."""
    seen = proc(pid)
    return seen is None or seen.state == "Z"


@contextlib.asynccontextmanager
async def killable_daemon(home: Path) -> AsyncIterator[tuple[Daemon, trio.Process]]:
    """``cws daemon`` as a user starts it, for a test that SIGKILLs it."""
    home.mkdir(parents=True, exist_ok=True)
    env = cws_env(home)
    log = home.parent / f"{home.name}-killed-daemon.log"
    with log.open("ab") as log_file:
        process = await trio.lowlevel.open_process(
            [CWS, "daemon", "--port", "0", "--home", str(home)],
            stdout=subprocess.PIPE, stderr=log_file, env=env,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        with trio.fail_after(TIMEOUT):
            url = await Lines(process.stdout).next()
            await wait_until_ready(url)
        yield Daemon(url, home, env | {"CWS_URL": url}, process, log), process
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        await close_pipes(process)


async def sigkill(process: trio.Process) -> None:
    process.send_signal(signal.SIGKILL)
    with trio.fail_after(TIMEOUT):
        assert await process.wait() == -signal.SIGKILL


def read_database(path: Path, query: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute(query).fetchall()


def integrity(path: Path) -> str:
    return str(read_database(path, "PRAGMA integrity_check")[0][0])


# ---------------------------------------------------------------------- durable events


SINK_CODE = """
import os

import trio

from cws_actors import Capabilities, EventHandlerSpec, Plugin

# The pid the daemon shows for it (a sandboxed runner is pid 2 of its PID namespace).
PID = int(os.environ.get("CWS_PLUGIN_PID", os.getpid()))

class Sink(Plugin):
    capabilities = Capabilities(
        event_handlers=[EventHandlerSpec("instance.*", handler="on_event")],
    )

    async def initialize(self, ctx, config):
        self.ctx = ctx
        self.block_at = config["block_at"]

    async def on_event(self, event):
        # On disk before the handler returns, that is before the daemon acknowledges it.
        with (self.ctx.data_dir / "deliveries").open("a") as log:
            log.write(f"{PID} {event.id} {event.payload['n']}\\n")
            log.flush()
            os.fsync(log.fileno())
        if event.payload["n"] == self.block_at:
            gate = self.ctx.data_dir / "gate"
            # A real process waiting for the test's file: poll it, bounded by the test.
            while not gate.exists():
                await trio.sleep(0.01)
"""

SINK_MANIFEST = """
[plugin]
name = "sink"
version = "1.0.0"
api_version = "1.0"
isolation = "subprocess"
entry = "sink_plugin:Sink"

[supervision]
probe_period = 60.0     # no liveness restart while a delivery waits on the gate

[config]
block_at = {block_at}
"""


def write_sink(home: Path) -> Path:
    folder = home / "plugins" / "sink"
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(textwrap.dedent(SINK_MANIFEST.format(block_at=BLOCK_AT)))
    (folder / "sink_plugin.py").write_text(SINK_CODE)
    return home / "plugin-data" / "sink"


def deliveries(data: Path) -> list[tuple[int, int, int]]:
    """(pid, event id, n) for each delivery the plugin has seen, in order."""
    log = data / "deliveries"
    if not log.exists():
        return []
    lines = [line.split() for line in log.read_text().splitlines()]
    return [(int(pid), int(event), int(n)) for pid, event, n in lines]


async def publish_then_kill_mid_handling(
    home: Path, data: Path
) -> tuple[dict[int, int], list[tuple[int, int, int]]]:
    """Publish EVENTS durable events, SIGKILL the daemon while the plugin is inside its
    handler for event BLOCK_AT; return the acknowledged ids (id -> n) and the deliveries
    seen before the kill."""
    try:
        return await _publish_then_kill(home, data)
    except BaseException:
        (data / "gate").touch()  # a failed run leaves no plugin waiting on the gate
        raise


async def _publish_then_kill(
    home: Path, data: Path
) -> tuple[dict[int, int], list[tuple[int, int, int]]]:
    acknowledged: dict[int, int] = {}
    async with killable_daemon(home) as (daemon, process):
        bearer = await create_cli_token(daemon, "events:publish")
        async with httpx.AsyncClient(
            base_url=daemon.url, headers={"Authorization": f"Bearer {bearer}"}, timeout=TIMEOUT
        ) as http:
            with trio.fail_after(TIMEOUT):
                for n in range(1, EVENTS + 1):
                    answer = await http.post(
                        "/api/v1/events", json={"topic": "instance.started", "payload": {"n": n}}
                    )
                    assert answer.status_code == 202, answer.text
                    event = answer.json()
                    assert event["durable"] is True  # instance.* is durable by default
                    acknowledged[event["id"]] = n
        await poll(
            lambda: any(n == BLOCK_AT for _, _, n in deliveries(data)),
            f"event {BLOCK_AT} never reached the plugin",
        )
        # The plugin is inside its handler for event BLOCK_AT; the later ones are queued.
        first_run = deliveries(data)
        assert [n for _, _, n in first_run] == list(range(1, BLOCK_AT + 1))
        await sigkill(process)
    return acknowledged, first_run


async def test_acknowledged_durable_events_survive_a_kill_mid_handling(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = write_sink(home)
    acknowledged, first_run = await publish_then_kill_mid_handling(home, data)
    plugin_pid = first_run[-1][0]
    assert integrity(home / "events.db") == "ok"
    assert integrity(home / "state.db") == "ok"
    (data / "gate").touch()  # from now on the delivery of BLOCK_AT finishes
    # The old plugin process ends its handler, reads the end of its stdin and exits (see
    # the next test for why this waits for the gate).
    await poll(lambda: exited(plugin_pid), "the killed daemon's plugin process did not end")
    async with cws_daemon(home) as daemon:
        await poll(
            lambda: {n for _, _, n in deliveries(data)} == set(range(1, EVENTS + 1)),
            "the acknowledged events were not all delivered after the restart",
        )

        def all_acked() -> bool:
            rows = read_database(
                home / "events.db",
                "SELECT event_id, acked FROM deliveries WHERE subscriber = '/plugins/sink'",
            )
            return len(rows) == EVENTS and all(acked for _, acked in rows)

        await poll(all_acked, "the deliveries were not all acknowledged by the plugin")
        listed = await cws("plugin", "status", "sink", "--json", env=daemon.env | {
            "CWS_TOKEN": await create_cli_token(daemon, "admin")
        })  # fmt: skip
        assert listed.code == 0, listed
        assert json.loads(listed.out)["state"] == "running"
    seen = deliveries(data)
    by_event: dict[int, list[int]] = {}
    for _, event_id, n in seen:
        by_event.setdefault(event_id, []).append(n)
    # Every acknowledged event arrived, under the id its publisher was given.
    assert {event_id: ns[0] for event_id, ns in by_event.items()} == acknowledged
    # Those handled before the kill were acknowledged then: not delivered again. The one
    # in flight is delivered again (at least once), and the queued ones once each.
    counts = {acknowledged[event_id]: len(ns) for event_id, ns in by_event.items()}
    assert counts == {n: 2 if n == BLOCK_AT else 1 for n in range(1, EVENTS + 1)}
    second_run = seen[len(first_run) :]
    assert [n for _, _, n in second_run] == list(range(BLOCK_AT, EVENTS + 1))  # oldest first
    assert {pid for pid, _, _ in second_run} != {plugin_pid}  # in the new daemon's plugin


async def test_a_plugin_busy_in_a_handler_does_not_outlive_a_killed_daemon(
    tmp_path: Path,
) -> None:
    """README: the runner "exits when its stdin closes, so a dead daemon takes its plugins
    with it". That must hold while a handler runs too, not only between requests."""
    home = tmp_path / "home"
    data = write_sink(home)
    _, first_run = await publish_then_kill_mid_handling(home, data)
    plugin_pid = first_run[-1][0]
    try:
        await poll(
            lambda: exited(plugin_pid),
            "the plugin process, busy in a handler, was still running after the daemon died",
            timeout=5,
        )
    finally:
        (data / "gate").touch()  # it ends now in any case
    await poll(lambda: exited(plugin_pid), "the killed daemon's plugin process did not end")


# ---------------------------------------------------------------------- installs


SLOW_CODE = """
import os
import time
from pathlib import Path

# The install checks a subprocess plugin's code by importing it in a describe process:
# say so, then wait for the test's gate (bounded, so that nothing can linger for long).
Path({mark!r}).write_text(os.environ.get("CWS_PLUGIN_PID", str(os.getpid())))
_deadline = time.monotonic() + {linger}
while not Path({gate!r}).exists() and time.monotonic() < _deadline:
    time.sleep(0.01)

from cws_actors import Capabilities, CLICommandSpec, CommandResult, Plugin


class Slow(Plugin):
    capabilities = Capabilities(cli_commands=[CLICommandSpec("slow", handler="hello")])

    async def hello(self, args):
        return CommandResult("slow says hello")
"""

SLOW_MANIFEST = """
[plugin]
name = "slow"
version = "1.0.0"
api_version = "1.0"
isolation = "subprocess"
entry = "slow_plugin:Slow"

[sandbox]
filesystem = [{{path = "{marks}", access = "write"}}]
"""


def write_slow(root: Path, *, linger: float) -> tuple[Path, Path, Path]:
    """The plugin's source folder, its marker file and its gate file."""
    folder = root / "slow"
    folder.mkdir(parents=True)
    marks = root / "marks"  # its sandbox lets it write there
    marks.mkdir()
    mark, gate = marks / "importing", marks / "gate"
    code = SLOW_CODE.format(mark=str(mark), gate=str(gate), linger=linger)
    (folder / "plugin.toml").write_text(textwrap.dedent(SLOW_MANIFEST).format(marks=marks))
    (folder / "slow_plugin.py").write_text(code)
    return folder, mark, gate


def plugin_folder_entries(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "plugins").iterdir())


async def kill_mid_install(home: Path, source: Path, mark: Path) -> int:
    """Start ``cws plugin install SOURCE``, SIGKILL the daemon while the install's code
    check runs (staged, not yet in place); return the describe process's pid."""
    async with killable_daemon(home) as (daemon, process):
        env = daemon.env | {"CWS_TOKEN": await create_cli_token(daemon, "plugins:manage")}
        with trio.fail_after(TIMEOUT):
            installer = await trio.lowlevel.open_process(
                [CWS, "plugin", "install", str(source), "--grant", "filesystem"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env,
            )  # fmt: skip
            try:
                await poll(mark.exists, "the install never reached the code check")
                staging = [n for n in plugin_folder_entries(home) if n.startswith(".staging-")]
                assert len(staging) == 1  # staged beside its final place, not yet renamed
                assert not (home / "plugins/slow").exists()
                await sigkill(process)
                assert installer.stderr is not None
                err = (await installer.stderr.receive_some(65536)).decode()
                assert await installer.wait() == 1, err  # an error, not a hang or a success
                assert "failed" in err or "connection" in err, err
            finally:
                if installer.returncode is None:
                    installer.kill()
                    await installer.wait()
                await close_pipes(installer)
    return int(mark.read_text())


async def test_a_daemon_killed_mid_install_leaves_no_half_installed_plugin(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    write_sink(home)  # an installed plugin, which must stay as it was
    source, mark, gate = write_slow(tmp_path / "src", linger=TIMEOUT)
    try:
        describer = await kill_mid_install(home, source, mark)
    finally:
        gate.touch()  # let the describe process finish, whatever happened above
    await poll(lambda: exited(describer), "the describe process did not end")
    assert integrity(home / "state.db") == "ok"
    installed = read_database(home / "state.db", "SELECT name FROM plugins WHERE name = 'slow'")
    assert installed == []
    history = read_database(home / "state.db", "SELECT event FROM history WHERE plugin = 'slow'")
    assert history == []
    assert not (home / "plugins/slow").exists()

    async with cws_daemon(home) as daemon:
        env = daemon.env | {"CWS_TOKEN": await create_cli_token(daemon, "admin")}
        # The next start tidied the staging folder; the old plugin is untouched.
        assert plugin_folder_entries(home) == ["sink"]
        listed = await cws("plugin", "list", "--json", env=env)
        assert listed.code == 0, listed
        plugins = json.loads(listed.out)
        plugins = plugins["plugins"] if isinstance(plugins, dict) else plugins
        assert [(p["name"], p["state"]) for p in plugins] == [("sink", "running")]
        # Nothing half done stands in the way: the same install now goes through.
        again = await cws("plugin", "install", str(source), "--grant", "filesystem", env=env)
        assert again.code == 0, again
        loaded = await cws("plugin", "load", "slow", env=env)
        assert loaded.code == 0, loaded
        said = await cws("slow", env=env)
        assert (said.code, said.out.strip()) == (0, "slow says hello")
    rows = read_database(home / "state.db", "SELECT name, version FROM plugins ORDER BY name")
    assert ("slow", "1.0.0") in rows
    assert integrity(home / "state.db") == "ok"


async def test_the_install_code_check_does_not_outlive_a_killed_daemon(tmp_path: Path) -> None:
    """The architecture's "no orphan processes, ever": the describe process of an install
    must end with the daemon that started it, as plugin processes do, rather than run on
    its plugin's import for as long as that takes."""
    home = tmp_path / "home"
    source, mark, gate = write_slow(tmp_path / "src", linger=TIMEOUT)
    try:
        describer = await kill_mid_install(home, source, mark)
        await poll(
            lambda: exited(describer),
            "the describe process of a killed daemon's install was still running",
            timeout=5,
        )
    finally:
        gate.touch()  # it ends now in any case

"""Issue 19's escapes: a hostile subprocess plugin under the default sandbox tries each
one; every attempt fails with the error the plugin sees (EACCES, EPERM, EAGAIN, EFBIG)
and the plugin keeps running. The same plugin with matching requests succeeds at what
a request can allow (hygiene holds whatever the grants). Nothing here is timed."""

from __future__ import annotations

import json
import os
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from cws_actors import PluginHost
from cws_actors._isolation._kernel import support

from ._fixtures import write_plugin
from .test_host import TIMEOUT, opened, wait_until

pytestmark = pytest.mark.skipif(
    support().landlock_abi < 4 or not support().seccomp or not support().user_notification,
    reason="needs Landlock ABI 4+ and seccomp with user notification (the README says"
    " what is enforced without them)",
)

HOSTILE = '''
import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import time

import trio

from cws_actors import Capabilities, CLICommandSpec, CLIFlagSpec, CommandResult, Plugin


def outcome(attempt):
    try:
        result = attempt()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    except MemoryError:
        return "ENOMEM"
    return "ok" if result is None else result


def read(path):
    return lambda: open(path, "rb").read(16) and None


def write(path):
    def attempt():
        with open(path, "w") as file:
            file.write("pwned")
    return attempt


def connect(port):
    def attempt():
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    return attempt


def bind():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))


def udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"x", ("127.0.0.1", 9))


def shell():
    subprocess.run(["/bin/sh", "-c", "true"], check=True)


def mount():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount")


def signal_daemon(pid):
    return lambda: os.kill(pid, 0)


def forks(limit):
    """Fork children that wait on a pipe until the first refusal."""
    def attempt():
        read_end, write_end = os.pipe()
        children = []
        try:
            for _ in range(limit + 2):
                pid = os.fork()
                if pid == 0:
                    os.close(write_end)
                    os.read(read_end, 1)
                    os._exit(0)
                children.append(pid)
            return f"forked {len(children)}"
        finally:
            os.close(write_end)
            for pid in children:
                os.waitpid(pid, 0)
            os.close(read_end)
    return attempt


def child_exit(body):
    """Run ``body`` in a child; how it ended."""
    def attempt():
        pid = os.fork()
        if pid == 0:
            try:
                body()
            except MemoryError:
                os._exit(3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == 3:
            return "ENOMEM"
        return signal.Signals(-code).name if code < 0 else f"exit {code}"
    return attempt


def hog():
    bytearray(600 * 1024 * 1024)


def spin():
    while True:
        pass


def fill(folder):
    def attempt():
        with open(os.path.join(folder, "big"), "wb") as file:
            for _ in range(8):
                file.write(b"x" * (1024 * 1024))
    return attempt


def leave_behind(folder):
    """Double fork and setsid: a grandchild nobody waits for."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(3600)
            os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)


class EchoPlugin(Plugin):
    capabilities = Capabilities(cli_commands=[
        CLICommandSpec("attack", handler="attack", flags=[CLIFlagSpec("targets", required=True)]),
        CLICommandSpec("echo", handler="echo", flags=[CLIFlagSpec("text", required=True)]),
    ])

    async def initialize(self, ctx, config):
        self.ctx = ctx

    async def echo(self, args):
        return CommandResult("hello " + args["text"])

    async def attack(self, args):
        t = json.loads(args["targets"])
        data = str(self.ctx.data_dir)
        attempts = {
            "daemon environ": read(f"/proc/{t['daemon']}/environ"),
            "daemon mem": read(f"/proc/{t['daemon']}/mem"),
            "other plugin environ": read(f"/proc/{t['other']}/environ"),
            "other plugin mem": read(f"/proc/{t['other']}/mem"),
            "state.db": read(t["state"]),
            "token": read(t["token"]),
            "other plugin data": read(t["other_data"]),
            "write outside": write(t["outside"]),
            "connect daemon port": connect(t["daemon_port"]),
            "connect outside port": connect(t["outside_port"]),
            "bind a port": bind,
            "send UDP": udp,
            "run /bin/sh": shell,
            "mount": mount,
            "signal the daemon": signal_daemon(t["daemon"]),
            "fork past the limit": forks(t["processes"]),
            "memory in a child": child_exit(hog),
            "cpu in a child": child_exit(spin),
            "fill the disk": fill(data),
            "leave a child behind": lambda: leave_behind(data),
            "environment secret": lambda: os.environ.get("AWS_SECRET_ACCESS_KEY", "absent"),
        }
        # In a worker thread: the plugin's probes go on answering meanwhile.
        found = await trio.to_thread.run_sync(
            lambda: {name: outcome(a) for name, a in attempts.items()}
        )
        return CommandResult(json.dumps(found))
'''

LIMITS = "memory_mb = 300\ncpu_seconds = 2\nprocesses = 4\ndisk_mb = 2"


def patient(plugin: Path) -> None:
    """Probes a minute apart: its attack runs in its event loop for seconds on a loaded
    machine, and liveness probes waiting behind it would restart it (this test is about
    the sandbox, not about liveness)."""
    manifest = plugin / "plugin.toml"
    manifest.write_text(manifest.read_text().replace("probe_period = 1.0", "probe_period = 60.0"))


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The daemon's secrets and sockets the plugin goes after."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    home = tmp_path / "home"
    (home / "plugin-data" / "other").mkdir(parents=True)
    (home / "plugin-data" / "other" / "secret").write_text("other's")
    (home / "secrets.db").write_text("state")  # state.db is the host's own
    (home / "token").write_text("token")
    outside = tmp_path / "outside"
    outside.mkdir()
    daemon_port, outside_port = socket.socket(), socket.socket()
    for sock in (daemon_port, outside_port):
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
    try:
        yield {
            "home": home,
            "outside_dir": outside,
            "daemon_port": daemon_port.getsockname()[1],
            "outside_port": outside_port.getsockname()[1],
        }
    finally:
        daemon_port.close()
        outside_port.close()


def targets(world: dict[str, Any], host: PluginHost) -> str:
    home = world["home"]
    other = host._loaded["other"].counters.pid
    return json.dumps({
        "daemon": os.getpid(),
        "other": _descendants(other)[-1],  # its runner, inside its keeper
        "state": str(home / "state.db"),  # made by the host
        "token": str(home / "token"),
        "other_data": str(home / "plugin-data/other/secret"),
        "outside": str(world["outside_dir"] / "pwned"),
        "daemon_port": world["daemon_port"],
        "outside_port": world["outside_port"],
        "processes": 4,
    })  # fmt: skip


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            found += map(int, children)
            stack += map(int, children)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _attack(host: PluginHost, world: dict[str, Any]) -> dict[str, str]:
    result = await host.execute_cli(["attack", "--targets", targets(world, host)])
    assert result.exit_code == 0, result.output
    outcome: dict[str, str] = json.loads(result.output)
    return outcome


@pytest.mark.parametrize("fork_server", [True, False], ids=["fork-server", "fresh-python"])
async def test_every_escape_fails_under_the_default_sandbox(
    world: dict[str, Any], fork_server: bool, caplog: pytest.LogCaptureFixture
) -> None:
    home = world["home"]
    patient(write_plugin(home / "plugins", "evil", isolation="subprocess", code=HOSTILE,
                         limits=LIMITS))  # fmt: skip
    write_plugin(home / "plugins", "other", isolation="subprocess")
    with trio.fail_after(TIMEOUT):
        async with opened(home, fork_server=fork_server) as host:
            host.protected_ports = (world["daemon_port"],)
            await host.load("other")
            await host.load("evil")
            keeper = host._loaded["evil"].counters.pid
            assert keeper is not None
            outcome = await _attack(host, world)
            assert outcome == {
                "daemon environ": "EACCES",
                "daemon mem": "EACCES",
                "other plugin environ": "EACCES",
                "other plugin mem": "EACCES",
                "state.db": "EACCES",
                "token": "EACCES",
                "other plugin data": "EACCES",
                "write outside": "EACCES",
                "connect daemon port": "EPERM",
                "connect outside port": "EPERM",
                "bind a port": "EPERM",
                "send UDP": "EPERM",
                "run /bin/sh": "EPERM",
                "mount": "EPERM",
                "signal the daemon": "ESRCH",  # outside its PID namespace
                "fork past the limit": "EAGAIN",
                "memory in a child": "ENOMEM",
                "cpu in a child": "SIGXCPU",
                "fill the disk": "EFBIG",
                "leave a child behind": "ok",
                "environment secret": "absent",
            }
            assert not (world["outside_dir"] / "pwned").exists()

            # It keeps running, and the keeper logged the denials with its name.
            # (Its probes may have waited on its busy interpreter: ready again, never
            # restarted.)
            async def ready() -> bool:
                return (await host.status("evil")).ready

            await wait_until(ready)
            echoed = await host.execute_cli(["echo", "--text", "x"])
            assert echoed.output == "hello x", echoed.output
            assert (await host.status("evil")).restarts == 0
            denials = [r.getMessage() for r in caplog.records if "cws-sandbox" in r.getMessage()]
            assert any("'evil' denied execve" in line for line in denials), denials
            assert any("'evil' denied clone (EAGAIN)" in line for line in denials), denials
            assert all(r.name == "cws.plugin.evil" for r in caplog.records
                       if "'evil' denied" in r.getMessage())  # fmt: skip
            # The double-forked, setsid child is in its namespace: unload ends it.
            left = _descendants(keeper)
            assert len(left) >= 3  # init, runner, the grandchild
            status = await host.status("evil")
            assert status.sandbox.controls is not None
            assert status.sandbox.controls["filesystem"] == "enforced"
            assert status.sandbox.controls["processes"] == "enforced"
            # Children together: a cgroup where the machine has one, said either way.
            together = "enforced (cgroup" if host.cgroups else "partially enforced"
            assert status.sandbox.controls["memory"].startswith(together)
            await host.unload("evil")

            async def all_gone() -> bool:
                return not any(_alive(pid) for pid in [keeper, *left])

            await wait_until(all_gone)


GRANTS = textwrap.dedent(
    """
    [sandbox]
    network = "loopback"
    exec = ["/bin/sh", "/usr/bin/sh", "/usr/bin/dash", "/bin/dash"]
    filesystem = [{{path = "{outside}", access = "write"}},
                  {{path = "{secret}", access = "read"}}]
    """
)


async def test_the_same_plugin_with_matching_requests_succeeds(world: dict[str, Any]) -> None:
    home = world["home"]
    secret = home / "plugin-data" / "other" / "secret"
    grants = GRANTS.format(outside=world["outside_dir"], secret=secret)
    limits = "memory_mb = 300\ncpu_seconds = 2\nprocesses = 64\ndisk_mb = 64"
    patient(write_plugin(home / "plugins", "evil", isolation="subprocess", code=HOSTILE,
                         limits=limits, extra=grants))  # fmt: skip
    write_plugin(home / "plugins", "other", isolation="subprocess")
    overrides = {"evil": {"env": ["AWS_SECRET_ACCESS_KEY"]}}
    with trio.fail_after(TIMEOUT):
        grants = {"evil": ("all",)}  # as `cws plugin grant evil all` would
        async with opened(home, overrides=overrides, default_grants=grants) as host:
            host.protected_ports = (world["daemon_port"],)
            await host.load("other")
            await host.load("evil")
            outcome = await _attack(host, world)
    granted = {
        "other plugin data": "ok",  # read, as asked (the home around it is not)
        "write outside": "ok",
        "connect outside port": "ok",
        "run /bin/sh": "ok",
        "fork past the limit": "forked 6",
        "fill the disk": "ok",
        "environment secret": "hunter2",  # the operator let it through
    }
    assert {name: outcome[name] for name in granted} == granted
    # Whatever it asks: the daemon, other plugins, the home and the daemon's port stay
    # out of reach, and no request opens UDP, binding, mount or signals.
    held = {
        "daemon environ": "EACCES",
        "daemon mem": "EACCES",
        "other plugin environ": "EACCES",
        "state.db": "EACCES",
        "token": "EACCES",
        "connect daemon port": "EACCES",
        "bind a port": "EACCES",
        "send UDP": "EPERM",
        "mount": "EPERM",
        "signal the daemon": "ESRCH",  # outside its PID namespace
    }
    assert {name: outcome[name] for name in held} == held

"""The plugin's processes together: memory and CPU rate held by a cgroup per run (where
the machine has one; where it has not, the report says so), the cgroup gone when the
run ends however it ends, and a killed daemon's leftovers removed at the next start.
Every fact asserted here is read from the kernel's files; nothing is timed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from cws_actors import PluginHost
from cws_actors._isolation._cgroup import home_tag, leaf_name, probe
from cws_actors._isolation._keeper import process_tree
from cws_actors._isolation._kernel import support

from ._fixtures import write_plugin
from .test_host import TIMEOUT, opened, wait_until

GROUP = '''
import errno
import json
import os
import signal
import threading

import trio

from cws_actors import Capabilities, CLICommandSpec, CLIFlagSpec, CommandResult, Plugin


def child(size, ready):
    """Hold ``size`` MB of touched memory, say so, and wait to be told to go."""
    try:
        hoard = b"\\x01" * (size * 1024 * 1024)
    except MemoryError:
        os._exit(3)
    os.write(ready, b"+")
    signal.pause()
    return hoard


class EchoPlugin(Plugin):
    capabilities = Capabilities(cli_commands=[
        CLICommandSpec("group", handler="echo"),
        CLICommandSpec("children", handler="children", parent="group", flags=[
            CLIFlagSpec("count", type="int", required=True),
            CLIFlagSpec("size", type="int", required=True),
        ]),
        CLICommandSpec("spin", handler="spin", parent="group"),
        CLICommandSpec("burn", handler="burn", parent="group", flags=[
            CLIFlagSpec("count", type="int", required=True),
            CLIFlagSpec("seconds", type="float", required=True),
        ]),
        CLICommandSpec("fill", handler="fill", parent="group"),
        CLICommandSpec("read", handler="read", parent="group"),
    ])

    async def initialize(self, ctx, config):
        self.ctx = ctx

    async def fill(self, args):
        """Small files into the data folder until a write is refused: how many, and why."""
        for count in range(10_000):
            try:
                with open(self.ctx.data_dir / f"f{count}", "wb") as file:
                    file.write(b"x" * 60_000)
            except OSError as exc:
                return CommandResult(f"{count} {errno.errorcode[exc.errno]}")
        return CommandResult("never refused")

    async def read(self, args):
        """What a full data folder must not stop: reading it, and importing."""
        import email.mime.text  # not imported before: opens files, read-only
        first = (self.ctx.data_dir / "f0").read_bytes()
        return CommandResult(f"{len(first)} {email.mime.text.MIMEText.__name__}")

    async def echo(self, args):
        return CommandResult("group")

    async def children(self, args):
        # In a worker thread: the plugin's probes go on answering meanwhile.
        return await trio.to_thread.run_sync(self._children, args)

    def _children(self, args):
        """Fork ``count`` children holding ``size`` MB each, all at once; how each
        ended (the survivors are ended once all have held their share or died)."""
        read_end, write_end = os.pipe()
        pids = []
        for _ in range(args["count"]):
            pid = os.fork()
            if pid == 0:
                os.close(read_end)
                child(args["size"], write_end)
                os._exit(0)
            pids.append(pid)
        os.close(write_end)
        ended = {}
        held = 0
        while held + len(ended) < len(pids):
            for pid in pids:  # reap what died meanwhile (the OOM killer's choice)
                if pid not in ended:
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done:
                        code = os.waitstatus_to_exitcode(status)
                        ended[pid] = signal.Signals(-code).name if code < 0 else f"exit {code}"
            if held + len(ended) >= len(pids):
                break
            import select
            if select.select([read_end], [], [], 0.05)[0]:
                held += len(os.read(read_end, 64))
        for pid in pids:
            if pid not in ended:
                # SIGKILL: forked from a worker thread, they block the other signals.
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                ended[pid] = "held"
        os.close(read_end)
        return CommandResult(json.dumps(sorted(ended.values())))

    async def burn(self, args):
        return await trio.to_thread.run_sync(self._burn, args)

    def _burn(self, args):
        """``count`` children at once, each using ``seconds`` of CPU then exiting; how
        each ended."""
        pids = []
        for _ in range(args["count"]):
            pid = os.fork()
            if pid == 0:
                while os.times().user + os.times().system < args["seconds"]:
                    pass
                os._exit(0)
            pids.append(pid)
        ended = []
        for pid in pids:
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            ended.append(signal.Signals(-code).name if code < 0 else f"exit {code}")
        return CommandResult(json.dumps(sorted(ended)))

    async def spin(self, args):
        threading.Thread(target=self._spin, daemon=True).start()
        return CommandResult("spinning")

    def _spin(self):
        while True:
            pass
'''


def _group(home: Path, limits: str) -> None:
    write_plugin(home / "plugins", "group", isolation="subprocess", code=GROUP, limits=limits)


def _leaves(host: PluginHost, name: str = "group") -> list[Path]:
    assert host.cgroups is not None
    pid = host._loaded[name].counters.pid
    assert pid is not None
    return host.cgroups.leaves(name, pid)


async def _children(host: PluginHost, count: int, size: int) -> list[str]:
    return await _how_they_ended(host, "children", "--count", count, "--size", size)


async def _burn(host: PluginHost, count: int, seconds: float) -> list[str]:
    return await _how_they_ended(host, "burn", "--count", count, "--seconds", seconds)


async def _how_they_ended(host: PluginHost, command: str, *flags: object) -> list[str]:
    """Run ``group COMMAND FLAGS``: how each child it forked ended."""
    result = await host.execute_cli(["group", command, *map(str, flags)])
    assert result.exit_code == 0, result.output
    ended: list[str] = json.loads(result.output)
    return ended


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "no-cgroup"])
async def test_children_together_over_memory_mb_are_stopped(tmp_path: Path, cgroups: bool) -> None:
    """Three children of 110 MB under memory_mb = 300: each is below the per-process
    limit (none gets MemoryError), together they are over it."""
    home = tmp_path / "home"
    _group(home, "memory_mb = 300\nprocesses = 16")
    with trio.fail_after(TIMEOUT):
        # Probes far apart: a group at its memory limit reclaims the runner's pages too,
        # which may slow its answers on a loaded machine (not what is tested here).
        async with opened(home, cgroups=cgroups, probe_period=60.0) as host:
            status = await host.load("group")
            report = status.sandbox.controls
            assert report is not None
            if host.cgroups is None:
                # No cgroup (turned off here, or the machine has none): said, not hidden.
                assert report["memory"].startswith("partially enforced (RLIMIT_AS per process")
                assert await _children(host, 3, 110) == ["held", "held", "held"]
                return
            assert report["memory"].startswith(f"enforced ({host.kernel.cgroup} memory")
            ended = await _children(host, 3, 110)
            assert "exit 3" not in ended, ended  # no child was over its own limit
            usage = await host.plugin_status("group")
            # The kernel's OOM killer ended one of them, in the group: together they
            # never held more than memory_mb.
            assert usage["cgroup_oom_kills"] >= 1, usage
            assert usage["cgroup_memory_peak_bytes"] <= 300 * 1024 * 1024, usage
            # The plugin itself goes on.
            assert (await host.execute_cli(["group"])).output == "group"
            assert (await host.status("group")).restarts == 0


async def test_cpu_percent_throttles_the_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _group(home, "memory_mb = 300\ncpu_percent = 10")
    with trio.fail_after(TIMEOUT):
        async with opened(home, allow_weaker_sandbox=True) as host:
            status = await host.load("group")
            report = status.sandbox.controls
            assert report is not None
            if host.cgroups is None or "cpu" not in host.cgroups.parents:
                assert report["cpu_percent"].startswith("not available (needs a cgroup")
                return
            assert report["cpu_percent"].startswith(f"enforced ({host.kernel.cgroup} cpu")
            cpu = host.cgroups.leaf("cpu", "group", host._loaded["group"].counters.pid or 0)
            assert cpu is not None
            if host.cgroups.kind == "v2":
                assert (cpu / "cpu.max").read_text().split() == ["10000", "100000"]
            else:
                assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "10000"
            assert (await host.execute_cli(["group", "spin"])).output == "spinning"

            async def throttled() -> bool:
                usage = await host.plugin_status("group")
                return int(usage.get("cgroup_cpu_throttled", 0)) > 0

            await wait_until(throttled)


async def test_the_run_cgroup_goes_with_unload_and_with_sigkill(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _group(home, "memory_mb = 300\nprocesses = 8")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("group")
            if host.cgroups is None:
                pytest.fail(f"this machine has no usable cgroup: {host.cgroup_problem}")
            first = _leaves(host)
            keeper = host._loaded["group"].counters.pid
            assert all(leaf.is_dir() for leaf in first)
            procs = (first[0] / "cgroup.procs").read_text().split()
            # The run's init and runner; the keeper made the cgroup, forked the init
            # into it and went back to the daemon's (it runs none of the plugin's code).
            _, init, runner = process_tree(keeper or 0)
            assert sorted(procs) == sorted([str(init), str(runner)])
            own = Path(f"/proc/{keeper}/cgroup").read_text()
            assert leaf_name("group", keeper or 0) not in own
            pids = [p for p in first if "pids" in str(p) or host.cgroups.kind == "v2"]
            # The keeper counts processes where it can; else pids.max (8 + the init).
            counted = support().user_notification and support().seccomp
            assert (pids[0] / "pids.max").read_text().strip() == ("max" if counted else "9")

            # Killed from outside: the run's cgroup goes, the restart gets its own.
            os.kill(keeper or 0, signal.SIGKILL)

            async def restarted() -> bool:
                pid = host._loaded["group"].counters.pid
                return pid != keeper and (await host.status("group")).state == "running"

            await wait_until(restarted)

            async def gone() -> bool:
                return not any(leaf.exists() for leaf in first)

            await wait_until(gone)
            second = _leaves(host)
            assert all(leaf.is_dir() for leaf in second)
            await host.unload("group")

            async def second_gone() -> bool:
                return not any(leaf.exists() for leaf in second)

            await wait_until(second_gone)  # removed from a task of its own, moments later
        # The host closed: its own directories are gone too.
        assert not any(Path(parent).exists() for parent in host.cgroups.parents.values())


DAEMON = textwrap.dedent(
    """
    import sys, trio
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from tests.plugins.test_host import opened

    async def main():
        async with opened(Path({home!r})) as host:
            await host.load("group")
            print(host._loaded["group"].counters.pid, flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)


async def test_a_killed_daemons_leftovers_are_removed_at_the_next_start(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    _group(home, "memory_mb = 300")
    root = str(Path(__file__).resolve().parents[2])
    script = DAEMON.format(tests=root, home=str(home))
    env = {**os.environ, "PYTHONPATH": root}
    with trio.fail_after(TIMEOUT):
        daemon = await trio.lowlevel.open_process(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env
        )
        try:
            assert daemon.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await daemon.stdout.receive_some()
                assert chunk, "the daemon process ended before loading its plugin"
                line += chunk
            keeper = int(line)
        finally:
            daemon.kill()  # no cleanup of its own
            await daemon.wait()
            await daemon.stdout.aclose()
        found = probe()
        if found.kind is None:
            pytest.fail(f"this machine has no usable cgroup: {found.problem}")
        tag = home_tag(home)
        left = [Path(base, tag, leaf_name("group", keeper)) for base in set(found.bases.values())]
        assert all(leaf.is_dir() for leaf in left)  # a leftover, until the next start
        async with opened(home) as host:
            if host.cgroups is None:
                pytest.fail(f"this machine has no usable cgroup: {host.cgroup_problem}")
            assert not any(leaf.exists() for leaf in left)


async def test_writes_past_disk_mb_are_refused_and_reads_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    _group(home, "memory_mb = 300\ndisk_mb = 1")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            report = (await host.load("group")).sandbox.controls
            assert report is not None
            if not support().user_notification:
                assert report["disk"].startswith("partially enforced (RLIMIT_FSIZE")
                return
            assert report["disk"].startswith("partially enforced (a file that may write")
            count, error = (await host.execute_cli(["group", "fill"])).output.split()
            assert error == "ENOSPC"
            # 60 000 bytes take 61 440 on disk: the 18th file crosses 1 MB, the 19th is
            # refused (one file may cross the line: it was opened below it).
            assert 16 <= int(count) <= 18  # allocation granularity differs by filesystem
            usage = await host.plugin_status("group")
            assert usage["data_limit_bytes"] == 1024 * 1024
            assert usage["data_bytes"] >= 1024 * 1024
            # It keeps running; reading its data and importing are untouched.
            assert (await host.execute_cli(["group", "read"])).output == "60000 MIMEText"
            assert (await host.status("group")).restarts == 0
            denials = [r.getMessage() for r in caplog.records
                       if r.name == "cws.plugin.group" and "denied" in r.getMessage()]  # fmt: skip
            assert any("'group' denied openat (ENOSPC)" in line for line in denials), denials


async def test_children_together_over_cpu_seconds_are_ended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two children of 1.5 CPU seconds each under cpu_seconds = 2: each is below the
    per-process limit (RLIMIT_CPU), together they pass it, and the keeper ends them; the
    plugin's own process goes on. (A cgroup bounds the rate, not a total.)"""
    home = tmp_path / "home"
    _group(home, "memory_mb = 300\ncpu_seconds = 2\nprocesses = 16")
    with trio.fail_after(TIMEOUT):
        async with opened(home, probe_period=60.0) as host:
            status = await host.load("group")
            report = status.sandbox.controls
            assert report is not None
            assert report["cpu_seconds"].startswith("enforced (RLIMIT_CPU on each process")
            # Alone, a child of 1.5 s is within both limits.
            assert await _burn(host, 1, 1.5) == ["exit 0"]
            # One more of 1.5 s passes 2 s for the children together: ended.
            assert await _burn(host, 2, 1.5) == ["SIGXCPU", "SIGXCPU"]
            assert (await host.execute_cli(["group"])).output == "group"
            assert (await host.status("group")).restarts == 0
            usage = await host.plugin_status("group")
            assert usage["cpu_seconds"] >= 2, usage  # the children's time is counted
    said = [r.getMessage() for r in caplog.records if "cpu_seconds is 2" in r.getMessage()]
    assert said, "the keeper logs why it ended them, with the plugin's name"
    assert "plugin 'group'" in said[0]

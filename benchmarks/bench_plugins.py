"""Subprocess plugin benchmark: crash to ready again (p50, p99; forked from the fork
server, and from a fresh interpreter), and ask round trips to a subprocess plugin beside
raw pipes to a Trio echo process, measured in the same run.

The asks and the raw pipes take turns, in five blocks each, so that a neighbour's load
on the machine falls on both alike; a rate is the sum of its blocks. The 10 askers go
to the plugin as it is by default (one message at a time) and to the same plugin with
``[concurrency] max = 10``.

Run: ``.venv/bin/python benchmarks/bench_plugins.py [--crashes 50] [--asks 5000] [--json]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from cws_actors import ActorRef, HostConfig, PluginCall, Runtime, open_plugin_host, open_runtime
from supervision import Backoff

PLUGIN = """
from cws_actors import Capabilities, CLICommandSpec, CommandResult, Plugin

class Echo(Plugin):
    capabilities = Capabilities(cli_commands=[CLICommandSpec("echo", handler="echo")])

    async def echo(self, args):
        return CommandResult(args["text"])
"""

MANIFEST = """
[plugin]
name = "echo"
version = "1.0.0"
api_version = "1.0"
isolation = "subprocess"
entry = "echo_plugin:Echo"

[supervision]
backoff_initial = 0.0
probe_period = 5.0
"""

# The same plugin, handling up to 10 calls at once.
MANIFEST_10 = (
    MANIFEST.replace('name = "echo"', 'name = "echo10"')
    + """
[concurrency]
max = 10
"""
)
BLOCKS = 5

# The reference: a Trio process echoing the same length-prefixed JSON frames.
RAW_ECHO = """
import json, struct, sys, trio
async def main():
    stdin, stdout = trio.lowlevel.FdStream(0), trio.lowlevel.FdStream(1)
    buffer = bytearray()
    while True:
        chunk = await stdin.receive_some(65536)
        if not chunk:
            return
        buffer += chunk
        out = bytearray()
        while len(buffer) >= 4:
            (length,) = struct.unpack(">I", buffer[:4])
            if len(buffer) < 4 + length:
                break
            message = json.loads(bytes(buffer[4:4 + length]))
            del buffer[:4 + length]
            body = json.dumps({"type": "result", "value": message["payload"]}).encode()
            out += struct.pack(">I", len(body)) + body
        if out:
            await stdout.send_all(bytes(out))
trio.run(main)
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@attrs.define(eq=False)
class RawEcho:
    """The reference: length-prefixed JSON frames to a Trio echo process and back."""

    process: trio.Process
    frame: bytes
    reply_size: int

    @classmethod
    async def open(cls) -> RawEcho:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", RAW_ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        frame = json.dumps({"type": "call", "handler": "echo", "payload": {"text": "x"}}).encode()
        reply = json.dumps({"type": "result", "value": {"text": "x"}}).encode()
        return cls(process, struct.pack(">I", len(frame)) + frame, 4 + len(reply))

    async def _read(self, count: int) -> None:
        assert self.process.stdout is not None
        pending = count * self.reply_size
        while pending:
            pending -= len(await self.process.stdout.receive_some(65536))

    async def sequential(self, asks: int) -> float:
        """Seconds for ``asks`` round trips, one after the other."""
        assert self.process.stdin is not None
        began = time.perf_counter()
        for _ in range(asks):
            await self.process.stdin.send_all(self.frame)
            await self._read(1)
        return time.perf_counter() - began

    async def pipelined(self, asks: int) -> float:
        """Seconds for ``asks`` frames written while the answers are read."""
        assert self.process.stdin is not None
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, asks)
            for _ in range(asks):
                await self.process.stdin.send_all(self.frame)
        return time.perf_counter() - began

    async def aclose(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        await self.process.stdin.aclose()
        await self.process.wait()
        await self.process.stdout.aclose()


async def timed_asks(ref: ActorRef, call: PluginCall, asks: int, askers: int) -> float:
    """Seconds for ``asks`` asks from ``askers`` tasks at once."""

    async def many(count: int) -> None:
        for _ in range(count):
            await ref.ask(call, timeout=30)

    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(askers):
            nursery.start_soon(many, asks // askers)
    return time.perf_counter() - began


async def ask_figures(runtime: Runtime, asks: int) -> dict[str, float]:
    """Asks to ``echo`` and ``echo10`` and the raw pipes, block by block in turns."""
    call = PluginCall("cli", "echo", {"text": "x"})
    echo, echo10 = runtime.lookup("/plugins/echo"), runtime.lookup("/plugins/echo10")
    for ref in (echo, echo10):
        for _ in range(100):
            await ref.ask(call, timeout=10)
    raw = await RawEcho.open()
    spent = dict.fromkeys(("seq", "raw_seq", "ten_1", "ten_10", "raw_pipelined"), 0.0)
    block = max(10, asks // BLOCKS)
    try:
        await raw.sequential(100)
        for _ in range(BLOCKS):
            spent["seq"] += await timed_asks(echo, call, block, 1)
            spent["raw_seq"] += await raw.sequential(block)
            spent["ten_1"] += await timed_asks(echo, call, block, 10)
            spent["ten_10"] += await timed_asks(echo10, call, block, 10)
            spent["raw_pipelined"] += await raw.pipelined(block)
    finally:
        await raw.aclose()
    total = block * BLOCKS
    return {
        "ask_sequential_per_s": total / spent["seq"],
        "raw_pipes_sequential_per_s": total / spent["raw_seq"],
        "ask_10_concurrent_per_s": total / spent["ten_1"],
        "ask_10_concurrent_n10_per_s": total / spent["ten_10"],
        "raw_pipes_pipelined_per_s": total / spent["raw_pipelined"],
    }


def plugin_process(keeper: int) -> int:
    """The runner of a sandboxed plugin whose keeper is ``keeper`` (keeper, init, runner:
    the init's first child)."""
    process = keeper
    for _ in range(2):
        children = [
            int(child)
            for task in os.listdir(f"/proc/{process}/task")
            for child in Path(f"/proc/{process}/task/{task}/children").read_text().split()
        ]
        process = min(children)
    return process


async def recovered(runtime: Runtime, path: str, counters: Any, old: int) -> None:
    """Return as the plugin at ``path`` is ready in a process other than ``old``: woken
    by the supervisor's own change of state, not by a poll (a Trio sleep lasts at least
    a millisecond, a tenth of what is measured). Polled only until the supervisor has
    seen the old run end (the old run is ready until then)."""
    while True:
        await runtime.wait_ready(path)
        if counters.pid != old:
            return
        await trio.sleep(0.0005)


async def plugin_figures(
    home: Path,
    crashes: int,
    asks: int,
    *,
    fork_server: bool,
    sandbox: bool = True,
    cgroups: bool = True,
    spares: bool = True,
    kill_runner: bool = False,
) -> dict[str, Any]:
    # Crash to ready is the machinery's cost: no backoff, and a budget that fits every
    # crash (the daemon's defaults would back off, then quarantine a crash loop).
    config = HostConfig(
        home=home, system_dir=home / "system", entry_points=False, fork_server=fork_server,
        max_restarts=crashes + 1, backoff=Backoff(0.0, 0.0), sandbox=sandbox,
        cgroups=cgroups, allow_weaker_sandbox=True,  # cpu_percent without a cgroup
        # A warm spare (the daemon's default), forked 0.1 s after a run is up rather
        # than a second (the default): after what is measured, as by default. Each
        # crash below waits for it, as a crash a second or more after the last start
        # finds it; spares=False measures the cold start.
        warm_spares="always" if spares else "never", spare_delay=0.1,
    )  # fmt: skip
    async with open_runtime() as runtime, open_plugin_host(runtime, config) as host:
        await host.load("echo")
        figures: dict[str, Any] = {}
        if asks:
            await host.load("echo10")
            figures = await ask_figures(runtime, asks)
        gc.freeze()  # as the daemon does once its plugins are loaded (api/_daemon.py)
        ref = runtime.lookup("/plugins/echo")
        call = PluginCall("cli", "echo", {"text": "x"})
        counters = host._loaded["echo"].counters
        recoveries: list[float] = []
        spare = host._loaded["echo"].spares
        for _ in range(crashes):
            while spares and fork_server and not (spare and spare.ready):  # noqa: ASYNC110
                await trio.sleep(0.0005)
            old = counters.pid
            assert old is not None
            # SIGKILL of the process the daemon tracks (what `cws faults` injects): with
            # the sandbox on, its keeper. kill_runner: the plugin's own process dies
            # instead (the runner, below the keeper and its init), as when its code
            # crashes; the keeper then passes its end on.
            victim = plugin_process(old) if sandbox and kill_runner else old
            killed = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            await recovered(runtime, "/plugins/echo", counters, old)
            recoveries.append(time.perf_counter() - killed)
            await ref.ask(call, timeout=10)  # it serves again
    return figures | {
        "crash_to_ready_p50_ms": percentile(recoveries, 0.5) * 1000,
        "crash_to_ready_p99_ms": percentile(recoveries, 0.99) * 1000,
        "crash_to_ready_mean_ms": statistics.fmean(recoveries) * 1000,
        "crashes": crashes,
    }


async def main(crashes: int, asks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        plugin_dir = home / "plugins" / "echo"
        plugin_dir.mkdir(parents=True)
        (plugin_dir / "plugin.toml").write_text(textwrap.dedent(MANIFEST))
        (plugin_dir / "echo_plugin.py").write_text(textwrap.dedent(PLUGIN))
        plugin_10 = home / "plugins" / "echo10"
        plugin_10.mkdir(parents=True)
        (plugin_10 / "plugin.toml").write_text(textwrap.dedent(MANIFEST_10))
        (plugin_10 / "echo_plugin.py").write_text(textwrap.dedent(PLUGIN))
        ours = await plugin_figures(home, crashes, asks, fork_server=True)
        fresh = await plugin_figures(home, crashes, 0, fork_server=False)
    return ours | {
        "fresh_python_crash_to_ready_p50_ms": fresh["crash_to_ready_p50_ms"],
        "fresh_python_crash_to_ready_p99_ms": fresh["crash_to_ready_p99_ms"],
    }


def report(result: dict[str, Any]) -> str:
    seq, raw = result["ask_sequential_per_s"], result["raw_pipes_sequential_per_s"]
    return "\n".join(
        [
            f"crash to ready ({result['crashes']} SIGKILLs), fork server: p50"
            f" {result['crash_to_ready_p50_ms']:.1f} ms, p99"
            f" {result['crash_to_ready_p99_ms']:.1f} ms",
            f"crash to ready, fresh interpreter: p50"
            f" {result['fresh_python_crash_to_ready_p50_ms']:.1f} ms, p99"
            f" {result['fresh_python_crash_to_ready_p99_ms']:.1f} ms",
            f"ask to a subprocess plugin: {seq:,.0f}/s vs raw pipes {raw:,.0f}/s:"
            f" ratio {seq / raw:.2f}",
            f"10 concurrent askers: {result['ask_10_concurrent_per_s']:,.0f}/s"
            f" (one message at a time per actor),"
            f" {result['ask_10_concurrent_n10_per_s']:,.0f}/s with [concurrency] max = 10;"
            f" raw pipes pipelined {result['raw_pipes_pipelined_per_s']:,.0f}/s",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crashes", type=int, default=50)
    parser.add_argument("--asks", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = trio.run(main, args.crashes, args.asks)
    print(json.dumps(result, indent=2) if args.json else report(result))

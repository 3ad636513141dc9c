"""What the plugin sandbox costs (issue 19): crash to ready p99 and subprocess ask
throughput with the sandbox on (keeper, PID namespace, cgroup, Landlock, seccomp with
user notification, rlimits) beside the same plugin with it off, in the same run,
alternating rounds so that the machine's drift falls on both. Restarts adopt the warm
spare, as the daemon's do by default; the cold start (no spare) is measured beside.

Run: ``.venv/bin/python benchmarks/bench_sandbox.py [--crashes 50] [--asks 5000] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import trio

from cws_actors import HostConfig, open_plugin_host, open_runtime
from supervision import Backoff

try:
    from . import bench_plugins
except ImportError:  # run as a script
    import bench_plugins  # type: ignore[no-redef]


async def main(crashes: int, asks: int, rounds: int = 2) -> dict[str, Any]:
    # Sandbox off, on, and on without the run's cgroup (what the cgroup itself costs),
    # each restart adopting the warm spare (the daemon's default); then off and on with
    # no spare (a crash within a second of the last start finds none: the cold start).
    # on_runner: the plugin's own process (the runner) dies instead of its keeper.
    variants = {
        "off": (False, False, True), "on": (True, True, True), "on_nocg": (True, False, True),
        "on_runner": (True, True, True),
        "cold_off": (False, False, False), "cold_on": (True, True, False),
    }  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    # Limits the cgroup holds (not cpu_percent: it would slow what is measured).
    limits = "\n[limits]\nmemory_mb = 512\nprocesses = 64\n"
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        for name, manifest in (("echo", bench_plugins.MANIFEST),
                               ("echo10", bench_plugins.MANIFEST_10)):  # fmt: skip
            plugin_dir = home / "plugins" / name
            plugin_dir.mkdir(parents=True)
            (plugin_dir / "plugin.toml").write_text(textwrap.dedent(manifest) + limits)
            (plugin_dir / "echo_plugin.py").write_text(textwrap.dedent(bench_plugins.PLUGIN))
        for _ in range(rounds):
            for name, (sandbox, cgroups, spares) in variants.items():
                figures = await bench_plugins.plugin_figures(
                    # Every warm variant runs the same asks first (and has echo10
                    # loaded), so that their crashes meet the same daemon.
                    home, crashes, asks if not name.startswith("cold") else 0,
                    fork_server=True,
                    sandbox=sandbox, cgroups=cgroups, spares=spares,
                    kill_runner=name == "on_runner",
                )  # fmt: skip
                runs[name].append(figures)

    gcp = {spares: await gcp_restarts(spares, max(3, crashes // 10)) for spares in (True, False)}

    def pooled(name: str, key: str, worst: bool) -> float:
        values = [run[key] for run in runs[name]]
        return max(values) if worst else sum(values) / len(values)

    return {
        f"{name}_{key}": pooled(name, key, worst)
        for name in variants
        for key, worst in (("crash_to_ready_p99_ms", True), ("crash_to_ready_p50_ms", False),
                           ("ask_sequential_per_s", False))
        if name in ("on", "off") or key != "ask_sequential_per_s"
    } | {
        "crashes": crashes * rounds, "asks": asks * rounds,
        "gcp_spare_crash_to_ready_p50_ms": statistics.median(gcp[True]),
        "gcp_cold_crash_to_ready_p50_ms": statistics.median(gcp[False]),
    }  # fmt: skip


async def gcp_restarts(spares: bool, crashes: int) -> list[float]:
    """The gcp plugin as shipped (sandboxed, its SDK in ``preload``): crash to ready,
    its restart adopting the warm spare, or not. Milliseconds, one per crash."""
    recoveries = []
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        config = HostConfig(
            home=home, system_dir=home / "system", spare_delay=0.1,
            warm_spares="always" if spares else "never",
            backoff=Backoff(0.0, 0.0), max_restarts=crashes + 1,
        )  # fmt: skip
        async with open_runtime() as runtime, open_plugin_host(runtime, config) as host:
            await host.load("gcp")
            gc.freeze()  # as the daemon does once its plugins are loaded
            loaded = host._loaded["gcp"]
            for _ in range(crashes):
                while spares and not (loaded.spares and loaded.spares.ready):  # noqa: ASYNC110
                    await trio.sleep(0.001)
                old = loaded.counters.pid
                assert old is not None
                killed = time.perf_counter()
                os.kill(old, signal.SIGKILL)
                await bench_plugins.recovered(runtime, "/plugins/gcp", loaded.counters, old)
                recoveries.append((time.perf_counter() - killed) * 1000)
    return recoveries


def report(result: dict[str, Any]) -> str:
    on, off = result["on_crash_to_ready_p99_ms"], result["off_crash_to_ready_p99_ms"]
    ask_on, ask_off = result["on_ask_sequential_per_s"], result["off_ask_sequential_per_s"]
    nocg = result["on_nocg_crash_to_ready_p99_ms"]
    return "\n".join([
        f"crash to ready p99: sandbox on {on:.1f} ms, off {off:.1f} ms ({on / off:.2f}x)",
        f"crash to ready p99, sandbox on without the run's cgroup: {nocg:.1f} ms",
        "crash to ready p50: on {:.1f} ms, without the cgroup {:.1f} ms, off {:.1f} ms".format(
            result["on_crash_to_ready_p50_ms"], result["on_nocg_crash_to_ready_p50_ms"],
            result["off_crash_to_ready_p50_ms"],
        ),
        f"ask: sandbox on {ask_on:.0f}/s, off {ask_off:.0f}/s ({ask_on / ask_off:.2f}x)",
        "cold start (no warm spare) crash to ready p99: on {:.1f} ms, off {:.1f} ms ({:.2f}x);"
        " p50 on {:.1f} ms, off {:.1f} ms".format(
            result["cold_on_crash_to_ready_p99_ms"], result["cold_off_crash_to_ready_p99_ms"],
            result["cold_on_crash_to_ready_p99_ms"] / result["cold_off_crash_to_ready_p99_ms"],
            result["cold_on_crash_to_ready_p50_ms"], result["cold_off_crash_to_ready_p50_ms"],
        ),
        "crash to ready p99 when the runner dies (not its keeper): {:.1f} ms ({:.2f}x off);"
        " p50 {:.1f} ms".format(
            result["on_runner_crash_to_ready_p99_ms"],
            result["on_runner_crash_to_ready_p99_ms"] / off,
            result["on_runner_crash_to_ready_p50_ms"],
        ),
        "gcp plugin crash to ready p50: warm spare {:.1f} ms, cold {:.1f} ms".format(
            result["gcp_spare_crash_to_ready_p50_ms"], result["gcp_cold_crash_to_ready_p50_ms"]
        ),
    ])  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--crashes", type=int, default=50)
    parser.add_argument("--asks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = trio.run(main, args.crashes, args.asks, args.rounds)
    print(json.dumps(result, indent=2) if args.json else report(result))

"""What the plugin sandbox costs (issue 19): crash to ready p99 and subprocess ask
throughput with the sandbox on (keeper, PID namespace, Landlock, seccomp with user
notification, rlimits) beside the same plugin with it off, in the same run, alternating
rounds so that the machine's drift falls on both.

Run: ``.venv/bin/python benchmarks/bench_sandbox.py [--crashes 50] [--asks 5000] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import trio

try:
    from . import bench_plugins
except ImportError:  # run as a script
    import bench_plugins  # type: ignore[no-redef]


async def main(crashes: int, asks: int, rounds: int = 2) -> dict[str, Any]:
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        plugin_dir = home / "plugins" / "echo"
        plugin_dir.mkdir(parents=True)
        (plugin_dir / "plugin.toml").write_text(textwrap.dedent(bench_plugins.MANIFEST))
        (plugin_dir / "echo_plugin.py").write_text(textwrap.dedent(bench_plugins.PLUGIN))
        # plugin_figures asks echo10 too (the same plugin with [concurrency] max = 10).
        plugin_10 = home / "plugins" / "echo10"
        plugin_10.mkdir(parents=True)
        (plugin_10 / "plugin.toml").write_text(textwrap.dedent(bench_plugins.MANIFEST_10))
        (plugin_10 / "echo_plugin.py").write_text(textwrap.dedent(bench_plugins.PLUGIN))
        for _ in range(rounds):
            for sandbox in (False, True):
                figures = await bench_plugins.plugin_figures(
                    home, crashes, asks, fork_server=True, sandbox=sandbox
                )
                runs[sandbox].append(figures)

    def pooled(sandbox: bool, key: str, worst: bool) -> float:
        values = [run[key] for run in runs[sandbox]]
        return max(values) if worst else sum(values) / len(values)

    return {
        f"{name}_{key}": pooled(sandbox, key, worst)
        for name, sandbox in (("on", True), ("off", False))
        for key, worst in (("crash_to_ready_p99_ms", True), ("crash_to_ready_p50_ms", False),
                           ("ask_sequential_per_s", False))
    } | {"crashes": crashes * rounds, "asks": asks * rounds}  # fmt: skip


def report(result: dict[str, Any]) -> str:
    on, off = result["on_crash_to_ready_p99_ms"], result["off_crash_to_ready_p99_ms"]
    ask_on, ask_off = result["on_ask_sequential_per_s"], result["off_ask_sequential_per_s"]
    return "\n".join([
        f"crash to ready p99: sandbox on {on:.1f} ms, off {off:.1f} ms ({on / off:.2f}x)",
        f"ask: sandbox on {ask_on:.0f}/s, off {ask_off:.0f}/s ({ask_on / ask_off:.2f}x)",
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

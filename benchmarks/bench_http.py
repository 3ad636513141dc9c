"""HTTP benchmark: a plugin endpoint routed through the router and the plugin's actor,
beside a bare quart-trio route in the same daemon, in the same run, driven by wrk
(Debian's ``wrk``: a load generator in C, so it is not the bottleneck).

Without wrk (``--load-generator auto`` on a machine without it, as in CI), an httpx
client in its own Python process drives both routes instead. Both routes still see the
same load, but a Python client can be the bottleneck, so its ratio leans towards 1.

Run: ``.venv/bin/python -m benchmarks.bench_http [--seconds 10] [--connections 32] [--json]``
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from benchmarks._harness import HELLO_PLUGIN, served_daemon, write_plugin

# The fallback load generator: its own process, so it does not share the server's loop.
HTTPX_LOAD = """
import json, sys, time, httpx, trio
async def main(url, seconds, connections):
    latencies, errors = [], 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits) as client:
        deadline = time.perf_counter() + seconds
        async def worker():
            nonlocal errors
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - began)
                errors += response.status_code > 399
        began = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - began
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0
    print(json.dumps({"rps": len(latencies) / elapsed, "p99_ms": p99, "errors": errors,
                      "requests": len(latencies)}))
trio.run(main, sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
"""


def choose_load_generator(requested: str) -> str:
    """``wrk`` or ``httpx``: ``auto`` takes wrk when it is installed."""
    if requested == "auto":
        return "wrk" if shutil.which("wrk") else "httpx"
    if requested == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("--load-generator wrk needs wrk: apt-get install wrk")
    if requested not in ("wrk", "httpx"):
        raise ValueError(f"load generator must be auto, wrk or httpx, got {requested!r}")
    return requested


async def httpx_load(url: str, seconds: int, connections: int) -> dict[str, float]:
    """The same figures as :func:`wrk`, from an httpx client in a child process."""
    done = await trio.run_process(
        [sys.executable, "-c", HTTPX_LOAD, url, str(seconds), str(connections)],
        capture_stdout=True,
    )
    figures: dict[str, float] = json.loads(done.stdout)
    return {name: float(value) for name, value in figures.items()}


async def load(generator: str, url: str, seconds: int, connections: int) -> dict[str, float]:
    if generator == "wrk":
        return await trio.to_thread.run_sync(wrk, url, seconds, connections)
    return await httpx_load(url, seconds, connections)


def wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    """Requests per second and p99 latency (ms) from wrk's --latency report."""
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    requests = float(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    return {"rps": rps, "p99_ms": p99, "errors": float(errors[1]) if errors else 0.0,
            "requests": requests}  # fmt: skip


async def main(
    seconds: int, connections: int, *, warmup: int = 2, load_generator: str = "auto"
) -> dict[str, Any]:
    generator = choose_load_generator(load_generator)
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        source = HELLO_PLUGIN.format(path="/bench/plugin")
        write_plugin(home / "plugins", "bench", source, "Hello", "[mailbox]\ncapacity = 10000")

        async def bare() -> Any:
            return {"hello": "world"}

        async with served_daemon(home, {"/bench/bare": bare}) as base:
            results = {}
            for name, path in (("bare", "/bench/bare"), ("plugin", "/bench/plugin")):
                if warmup:
                    await load(generator, f"{base}{path}", warmup, connections)
                results[name] = await load(generator, f"{base}{path}", seconds, connections)
    return {
        "bare_rps": results["bare"]["rps"],
        "bare_p99_ms": results["bare"]["p99_ms"],
        "plugin_rps": results["plugin"]["rps"],
        "plugin_p99_ms": results["plugin"]["p99_ms"],
        "plugin_errors": results["plugin"]["errors"],
        "ratio": results["plugin"]["rps"] / results["bare"]["rps"],
        "seconds": seconds,
        "connections": connections,
        "load_generator": generator,
    }


def report(result: dict[str, Any]) -> str:
    return (
        f"plugin endpoint: {result['plugin_rps']:,.0f} req/s, p99 {result['plugin_p99_ms']:.2f} ms"
        f" vs bare quart-trio route {result['bare_rps']:,.0f} req/s, p99"
        f" {result['bare_p99_ms']:.2f} ms: ratio {result['ratio']:.2f}"
        f" ({result['connections']} connections, {result['seconds']} s each,"
        f" {result['load_generator']})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each")
    parser.add_argument("--load-generator", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    run = functools.partial(main, warmup=args.warmup, load_generator=args.load_generator)
    result = trio.run(run, args.seconds, args.connections)
    print(json.dumps(result, indent=2) if args.json else report(result))

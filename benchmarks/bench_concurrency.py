"""Concurrent plugins over HTTP (issue 17), in one daemon served by hypercorn, each
figure beside its reference from the same run:

- A subprocess plugin endpoint whose handler waits 100 ms (a cloud API call), with
  ``[concurrency] max = 50``, under 50 connections at once (wrk, or httpx in a child
  process): requests a second against 50 / 0.1 s, the rate at which every client waits
  for the handler and for nothing else. A bare quart-trio route that waits 100 ms is
  measured the same way: the HTTP stack's own ceiling on the machine.
- A fast request behind 10 slow ones (2 s each) in flight to the same plugin, against
  the same request alone: the median of several.
- 429s a second that the daemon answers on a plugin route limited to one request a
  second, against 200s a second of a bare quart-trio route, both under the same load
  (wrk, or httpx in a child process without it, which caps both and is not judged).

Run: ``.venv/bin/python -m benchmarks.bench_concurrency [--seconds 5] [--rounds 4] [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from benchmarks._harness import HELLO_PLUGIN, served_daemon, write_plugin
from benchmarks.bench_http import choose_load_generator, load

CLIENTS = 50
HANDLER_S = 0.1
SLOW_S = 2.0
SLOW_CALLS = 10

PLUGIN = """
import trio
from cws_actors import APIEndpointSpec, APIResult, Capabilities, Plugin

class Waits(Plugin):
    capabilities = Capabilities(api_endpoints=[
        APIEndpointSpec("/bench/wait", handler="wait", protected=False),
        APIEndpointSpec("/bench/slow", handler="slow", protected=False),
        APIEndpointSpec("/bench/fast", handler="fast", protected=False),
    ])

    async def wait(self, request):
        await trio.sleep({handler_s})
        return APIResult(200, {{"waited": {handler_s}}})

    async def slow(self, request):
        await trio.sleep({slow_s})
        return APIResult(200, {{"waited": {slow_s}}})

    async def fast(self, request):
        return APIResult(200, {{"waited": 0}})
"""

WAITS_SETTINGS = f"""
isolation = "subprocess"

[mailbox]
capacity = 10000

[concurrency]
max = {CLIENTS}
"""

LIMITED_SETTINGS = """
[rate_limit]
rate = 1.0
burst = 1
"""


def write_plugins(folder: Path) -> None:
    source = PLUGIN.format(handler_s=HANDLER_S, slow_s=SLOW_S)
    write_plugin(folder, "waits", source, "Waits", WAITS_SETTINGS)
    limited = HELLO_PLUGIN.format(path="/bench/limited")
    write_plugin(folder, "limited", limited, "Hello", LIMITED_SETTINGS)


async def timed_get(client: httpx.AsyncClient, url: str) -> float:
    began = time.perf_counter()
    response = await client.get(url)
    elapsed = time.perf_counter() - began
    if response.status_code != 200:
        raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
    return elapsed


async def fast_behind_slow(base: str, rounds: int) -> dict[str, float]:
    """Medians of the fast request alone and behind 10 slow ones in flight."""
    alone: list[float] = []
    behind: list[float] = []
    limits = httpx.Limits(max_connections=SLOW_CALLS + 2)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        for _ in range(5):
            await timed_get(client, "/bench/fast")  # warm: connections, the worker
        for _ in range(rounds):
            for _ in range(5):
                alone.append(await timed_get(client, "/bench/fast"))
            async with trio.open_nursery() as nursery:
                for _ in range(SLOW_CALLS):
                    nursery.start_soon(timed_get, client, "/bench/slow")
                # Benchmarks may sleep: the slow calls reach their handlers meanwhile.
                await trio.sleep(SLOW_S / 4)
                for _ in range(5):
                    behind.append(await timed_get(client, "/bench/fast"))
    return {
        "fast_alone_ms": statistics.median(alone) * 1000,
        "fast_behind_slow_ms": statistics.median(behind) * 1000,
        "fast_samples": len(behind),
    }


async def refusals(generator: str, base: str, seconds: int, connections: int) -> dict[str, Any]:
    """429s a second on the limited route, 200s a second on the bare one."""
    await load(generator, f"{base}/bench/bare", 1, connections)  # warm
    bare = await load(generator, f"{base}/bench/bare", seconds, connections)
    limited = await load(generator, f"{base}/bench/limited", seconds, connections)
    refused = limited["errors"] / max(1.0, limited["requests"])
    return {
        "bare_200_per_s": bare["rps"] * (1 - bare["errors"] / max(1.0, bare["requests"])),
        "limited_429_per_s": limited["rps"] * refused,
        "limited_refused_share": refused,
        "bare_errors": bare["errors"],
    }


async def main(seconds: int, rounds: int, *, load_generator: str = "auto") -> dict[str, Any]:
    generator = choose_load_generator(load_generator)
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        write_plugins(home / "plugins")

        async def bare() -> Any:
            return {"hello": "world"}

        async def bare_wait() -> Any:
            await trio.sleep(HANDLER_S)
            return {"waited": HANDLER_S}

        routes = {"/bench/bare": bare, "/bench/bare-wait": bare_wait}
        async with served_daemon(home, routes) as base:
            figures: dict[str, Any] = {"load_generator": generator}
            await load(generator, f"{base}/bench/wait", 1, CLIENTS)  # warm
            plugin = await load(generator, f"{base}/bench/wait", seconds, CLIENTS)
            bare_wait_load = await load(generator, f"{base}/bench/bare-wait", seconds, CLIENTS)
            figures |= {
                "wait_plugin_rps": plugin["rps"],
                "wait_plugin_errors": plugin["errors"],
                "wait_bare_rps": bare_wait_load["rps"],
                "wait_ideal_rps": CLIENTS / HANDLER_S,
            }
            figures |= await fast_behind_slow(base, rounds)
            figures |= await refusals(generator, base, seconds, 32)
    return figures | {"seconds": seconds, "rounds": rounds, "clients": CLIENTS}


def report(f: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"100 ms handler, {f['clients']} clients: {f['wait_plugin_rps']:,.0f} req/s vs"
            f" {f['wait_ideal_rps']:,.0f} ideal: ratio"
            f" {f['wait_plugin_rps'] / f['wait_ideal_rps']:.2f} (bare quart-trio route"
            f" waiting 100 ms: {f['wait_bare_rps']:,.0f} req/s)",
            f"fast request behind {SLOW_CALLS} slow ones: {f['fast_behind_slow_ms']:.1f} ms vs"
            f" alone {f['fast_alone_ms']:.1f} ms: ratio"
            f" {f['fast_behind_slow_ms'] / f['fast_alone_ms']:.2f}",
            f"429s on a limited plugin route: {f['limited_429_per_s']:,.0f}/s vs 200s of a bare"
            f" route {f['bare_200_per_s']:,.0f}/s: ratio"
            f" {f['limited_429_per_s'] / f['bare_200_per_s']:.2f} ({f['load_generator']})",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--load-generator", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    result = trio.run(
        lambda: main(arguments.seconds, arguments.rounds, load_generator=arguments.load_generator)
    )
    print(json.dumps(result, indent=2) if arguments.json else report(result))

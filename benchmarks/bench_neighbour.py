"""Rate-limit isolation: the latency of one plugin's endpoint while the plugin beside it
is driven at ten times its rate limit, against the same endpoint's latency alone, in the
same daemon and run.

The load is open-loop (each request leaves at its scheduled time whether or not the
earlier ones have been answered, so slow replies show up as latency instead of hiding
as a lower rate) and comes from an httpx client in its own process.

Run: ``.venv/bin/python -m benchmarks.bench_neighbour [--seconds 5] [--json]``
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from api import Daemon, serve_daemon
from benchmarks._harness import daemon_config, write_plugin

LIMIT = 50.0  # the hot plugin's rate limit, requests a second (burst the same)
STORM = 10  # how many times its limit it is driven at
CALM = 50.0  # requests a second to the neighbour, in both phases

PLUGIN = """
from cws_actors import APIEndpointSpec, APIResult, Capabilities, Plugin

class Ping(Plugin):
    capabilities = Capabilities(
        api_endpoints=[APIEndpointSpec("/api/v1/{name}/ping", handler="ping", protected=False)]
    )

    async def ping(self, request):
        return APIResult(200, {{"plugin": "{name}"}})
"""

# The load generator, in its own process: open-loop streams, one per (path, rate).
LOAD = """
import json, sys, time, httpx, trio

async def stream(client, path, rate, seconds, out):
    async def one():
        began = time.perf_counter()
        response = await client.get(path)
        out["latencies"].append(time.perf_counter() - began)
        out["statuses"][response.status_code] = out["statuses"].get(response.status_code, 0) + 1
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(int(rate * seconds)):
            await trio.sleep_until(start + i / rate)
            nursery.start_soon(one)
    out["offered"] = int(rate * seconds) / (trio.current_time() - start)

async def main(base, seconds, streams):
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    results = {path: {"latencies": [], "statuses": {}} for path, _ in streams}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        for path, _ in streams:  # open the connections before measuring
            await client.get(path)
        async with trio.open_nursery() as nursery:
            for path, rate in streams:
                nursery.start_soon(stream, client, path, rate, seconds, results[path])
    for out in results.values():
        ordered = sorted(out.pop("latencies"))
        out["p50_ms"] = ordered[len(ordered) // 2] * 1000
        out["p99_ms"] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(json.dumps(results))

trio.run(main, sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3]))
"""


async def load(base: str, seconds: float, streams: list[tuple[str, float]]) -> dict[str, Any]:
    done = await trio.run_process(
        [sys.executable, "-c", LOAD, base, str(seconds), json.dumps(streams)],
        capture_stdout=True,
    )
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


async def main(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        for name, settings in (
            ("hot", f"[rate_limit]\nrate = {LIMIT}\nburst = {LIMIT:.0f}"),
            ("calm", ""),
        ):
            write_plugin(home / "plugins", name, PLUGIN.format(name=name), "Ping", settings)
        config = daemon_config(home)
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(
                functools.partial(serve_daemon, config, on_url=lambda url: None)
            )
            await daemon.plugins_loaded.wait()
            assert daemon.url is not None
            calm, hot = "/api/v1/calm/ping", "/api/v1/hot/ping"
            alone = await load(daemon.url, seconds, [(calm, CALM)])
            storm = await load(daemon.url, seconds, [(calm, CALM), (hot, LIMIT * STORM)])
            nursery.cancel_scope.cancel()
    hot_statuses = storm[hot]["statuses"]
    return {
        "alone_p50_ms": alone[calm]["p50_ms"],
        "alone_p99_ms": alone[calm]["p99_ms"],
        "storm_p50_ms": storm[calm]["p50_ms"],
        "storm_p99_ms": storm[calm]["p99_ms"],
        "calm_statuses": storm[calm]["statuses"],
        "hot_statuses": hot_statuses,
        "hot_offered_per_s": storm[hot]["offered"],
        "hot_limit_per_s": LIMIT,
        "seconds": seconds,
    }


def report(result: dict[str, Any]) -> str:
    return (
        f"neighbour latency p50/p99 {result['storm_p50_ms']:.2f}/{result['storm_p99_ms']:.2f} ms"
        f" while the plugin beside it is driven at {result['hot_offered_per_s']:.0f} req/s"
        f" (its limit is {result['hot_limit_per_s']:.0f}; replies {result['hot_statuses']}),"
        f" against {result['alone_p50_ms']:.2f}/{result['alone_p99_ms']:.2f} ms alone;"
        f" the neighbour's replies {result['calm_statuses']}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = trio.run(main, args.seconds)
    print(json.dumps(result, indent=2) if args.json else report(result))

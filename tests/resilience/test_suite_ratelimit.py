"""A plugin driven at 10x its rate limit, over real HTTP (hypercorn on 127.0.0.1 port 0):
it answers 429s with ``Retry-After`` while the plugin beside it answers every request.

The load is open-loop (each request leaves at its scheduled time, whether or not the
ones before it have been answered), so a slow reply cannot slow the storm down. How
much the storm costs the neighbour's latency is a figure, measured in
``benchmarks/bench_neighbour.py`` (``ratelimit.neighbour_p50``, ``_p99``), not asserted here."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import attrs
import httpx
import trio

from api._daemon import Daemon

from ..api._daemon import TIMEOUT, running_daemon

RATE, BURST = 5.0, 5
STORM = 10 * RATE  # requests a second to the limited plugin: ten times its limit
CALM = 20.0  # requests a second to its neighbour
SECONDS = 3.0

CODE = """
from cws_actors import APIEndpointSpec, APIResult, Capabilities, Plugin


class Ping(Plugin):
    capabilities = Capabilities(
        api_endpoints=[APIEndpointSpec("/api/v1/{name}/ping", handler="ping", protected=False)]
    )

    async def initialize(self, ctx, config):
        self.answered = 0

    async def ping(self, request):
        self.answered += 1
        return APIResult(200, {{"plugin": "{name}", "answered": self.answered}})
"""

MANIFEST = """
[plugin]
name = "{name}"
version = "1.0.0"
api_version = "1.0"
entry = "ping_plugin:Ping"
{limit}
"""


def write_ping_plugin(folder: Path, name: str, limit: str = "") -> None:
    plugin_dir = folder / name
    plugin_dir.mkdir(parents=True)
    manifest = MANIFEST.format(name=name, limit=textwrap.dedent(limit))
    (plugin_dir / "plugin.toml").write_text(manifest)
    (plugin_dir / "ping_plugin.py").write_text(CODE.format(name=name))


@attrs.define
class Load:
    """Every reply to one open-loop stream of requests."""

    responses: list[httpx.Response] = attrs.Factory(list)
    latencies: list[float] = attrs.Factory(list)
    errors: list[BaseException] = attrs.Factory(list)
    sent: list[float] = attrs.Factory(list)

    def offered(self) -> float:
        """Requests a second, as sent."""
        return (len(self.sent) - 1) / (self.sent[-1] - self.sent[0])

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for response in self.responses:
            counts[response.status_code] = counts.get(response.status_code, 0) + 1
        return counts

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


async def drive(http: httpx.AsyncClient, path: str, rate: float, seconds: float) -> Load:
    """Send ``rate * seconds`` GETs, the i-th at ``i / rate`` seconds from now."""
    load = Load()

    async def one() -> None:
        began = time.perf_counter()
        try:
            response = await http.get(path)
        except httpx.HTTPError as exc:
            load.errors.append(exc)
            return
        load.latencies.append(time.perf_counter() - began)
        load.responses.append(response)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(int(rate * seconds)):
            await trio.sleep_until(start + i / rate)
            load.sent.append(trio.current_time())
            nursery.start_soon(one)
    return load


def rejected(metrics: str, actor: str) -> float:
    prefix = f'cws_messages_rejected_total{{actor="{actor}",reason="rate_limited"}} '
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


async def test_a_plugin_at_ten_times_its_rate_limit_refuses_while_its_neighbour_serves(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    write_ping_plugin(home / "plugins", "hot", f"[rate_limit]\nrate = {RATE}\nburst = {BURST}")
    write_ping_plugin(home / "plugins", "calm")
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    with trio.fail_after(60):
        async with running_daemon(home) as daemon:
            assert daemon.url is not None
            # Room for every request of the storm in flight at once.
            http = httpx.AsyncClient(base_url=daemon.url, limits=limits, timeout=TIMEOUT)
            async with http:
                assert (await http.get("/api/v1/calm/ping")).status_code == 200  # warm up
                began = trio.current_time()
                async with trio.open_nursery() as nursery:
                    loads: dict[str, Load] = {}

                    async def run(name: str, rate: float) -> None:
                        loads[name] = await drive(http, f"/api/v1/{name}/ping", rate, SECONDS)

                    nursery.start_soon(run, "hot", STORM)
                    nursery.start_soon(run, "calm", CALM)
                elapsed = trio.current_time() - began
                hot, calm = loads["hot"], loads["calm"]
                metrics = (await http.get("/metrics")).text
                await check_recovery(http, daemon, hot)

    # The storm really was ten times the limit.
    assert len(hot.responses) + len(hot.errors) == int(STORM * SECONDS)
    assert hot.offered() >= 9.5 * RATE
    assert hot.errors == []
    assert calm.errors == []

    # The neighbour answered everything, and nothing it asked was refused.
    assert calm.statuses() == {200: int(CALM * SECONDS)}
    assert rejected(metrics, "/plugins/calm") == 0

    # The limited plugin admitted its burst and its refill, and refused the rest with 429s.
    statuses = hot.statuses()
    assert set(statuses) == {200, 429}, statuses
    admitted_at_most = BURST + RATE * elapsed + 1
    # Its burst at once, and refills meanwhile (the storm is far above the refill rate).
    assert BURST + 1 <= statuses[200] <= admitted_at_most, (statuses, elapsed)
    assert statuses[429] >= int(STORM * SECONDS) - admitted_at_most
    assert rejected(metrics, "/plugins/hot") == statuses[429]
    for response in hot.responses:
        if response.status_code == 200:
            continue
        assert response.headers["content-type"] == "application/problem+json"
        assert 1 <= int(response.headers["retry-after"]) <= 1 / RATE + 1
        assert response.headers["ratelimit-policy"] == f'"default";q={BURST};w={BURST / RATE:g}'
        body = response.json()
        assert body["status"] == 429
        assert "plugin 'hot' is over its rate limit" in body["detail"]
        assert 0 < body["retry_after"] <= 1 / RATE + 1e-6
    # Each 200 came from the handler, so none of the refused requests reached it.
    answered = sorted(r.json()["answered"] for r in hot.responses if r.status_code == 200)
    assert answered == list(range(1, statuses[200] + 1))
    print(
        f"\ncalm neighbour during the storm: p50 {calm.p(0.5):.1f} ms, p99 {calm.p(0.99):.1f} ms;"
        f" hot: {statuses} in {elapsed:.2f} s"
    )


async def check_recovery(http: httpx.AsyncClient, daemon: Daemon, hot: Load) -> None:
    """Once the storm is over and ``Retry-After`` has passed, the limited plugin answers
    again; rate limiting restarted nothing."""
    last = [r for r in hot.responses if r.status_code == 429][-1]
    await trio.sleep(int(last.headers["retry-after"]))  # what a polite client does
    assert (await http.get("/api/v1/hot/ping")).status_code == 200
    tree = daemon.runtime.actors()
    for path in ("/plugins/hot", "/plugins/calm"):
        node = tree.find(path)
        assert (node.state, node.ready, node.restarts) == ("running", True, 0), path

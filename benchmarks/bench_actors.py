"""Actor benchmark: tell throughput, ask round trips, idle actors, bus fan-out and router
overhead, each beside raw Trio measured in the same run.

Run: ``.venv/bin/python benchmarks/bench_actors.py [--messages 1000000] [--json]``
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from typing import Any

import trio
import trio.lowlevel

from cws_actors import Actor, Event, MailboxConfig, Overflow, on_event, open_runtime


class Counter(Actor):
    def __init__(self) -> None:
        self.count = 0
        self.done = trio.Event()
        self.target = 0

    async def receive(self, message: Any) -> Any:
        self.count += 1
        if self.count == self.target:
            self.done.set()
        return message


class Idle(Actor):
    """An actor with no state of its own: what an idle actor costs is the runtime's
    (cell, mailbox, supervision, its task), not its fields."""

    async def receive(self, message: Any) -> Any:
        return message


class Subscriber(Actor):
    received = 0

    @on_event("bench.*")
    async def got(self, event: Event) -> None:
        Subscriber.received += 1


async def raw_channel_throughput(n: int) -> float:
    send, receive = trio.open_memory_channel[Any](1000)
    began = time.perf_counter()

    async def consume() -> None:
        async for _ in receive:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        async with send:
            for i in range(n):
                await send.send(i)
    return n / (time.perf_counter() - began)


async def tell_throughput(n: int) -> float:
    async with open_runtime() as runtime:
        actor = Counter()
        actor.target = n
        ref = await runtime.spawn(
            lambda: actor, name="counter", mailbox=MailboxConfig(1000, Overflow.BLOCK)
        )
        began = time.perf_counter()
        for i in range(n):
            await ref.send(i)
        await actor.done.wait()
        return n / (time.perf_counter() - began)


async def raw_batched_drain(n: int) -> float:
    send, receive = trio.open_memory_channel[Any](n)
    began = time.perf_counter()
    for i in range(n):
        send.send_nowait(i)
    received = 0
    while received < n:
        try:
            receive.receive_nowait()
            received += 1
        except trio.WouldBlock:
            await trio.lowlevel.checkpoint()
    return n / (time.perf_counter() - began)


async def batched_tell(n: int) -> float:
    """Bursts of tell() (no checkpoint) into a big mailbox, drained in batches."""
    async with open_runtime() as runtime:
        actor = Counter()
        actor.target = n
        ref = await runtime.spawn(lambda: actor, name="counter", mailbox=MailboxConfig(n))
        began = time.perf_counter()
        for i in range(n):
            ref.tell(i)
        await actor.done.wait()
        return n / (time.perf_counter() - began)


def pykka_ask_rate(n: int) -> float | None:
    try:
        import pykka
    except ImportError:
        return None

    class Echo(pykka.ThreadingActor):  # type: ignore[misc]
        def on_receive(self, message: Any) -> Any:
            return message

    ref = Echo.start()
    try:
        began = time.perf_counter()
        for i in range(n):
            ref.ask(i)
        return n / (time.perf_counter() - began)
    finally:
        ref.stop()


def thespian_ask_rate(n: int) -> float | None:
    try:
        from thespian.actors import Actor as ThespianActor
        from thespian.actors import ActorSystem
    except ImportError:
        return None

    class Echo(ThespianActor):  # type: ignore[misc]
        def receiveMessage(self, message: Any, sender: Any) -> None:
            self.send(sender, message)

    system = ActorSystem("simpleSystemBase")
    try:
        echo = system.createActor(Echo)
        began = time.perf_counter()
        for i in range(n):
            system.ask(echo, i, 5)
        return n / (time.perf_counter() - began)
    finally:
        system.shutdown()


async def raw_ping_pong(n: int) -> float:
    to_server, server_inbox = trio.open_memory_channel[Any](0)
    to_client, client_inbox = trio.open_memory_channel[Any](0)

    async def server() -> None:
        async for message in server_inbox:
            await to_client.send(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        began = time.perf_counter()
        for i in range(n):
            await to_server.send(i)
            await client_inbox.receive()
        rate = n / (time.perf_counter() - began)
        nursery.cancel_scope.cancel()
    return rate


async def ask_rate(n: int) -> float:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Counter, name="echo")
        began = time.perf_counter()
        for i in range(n):
            await ref.ask(i)
        return n / (time.perf_counter() - began)


async def idle_actors(n: int) -> tuple[float, float]:
    async with open_runtime() as runtime:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        began = time.perf_counter()
        for i in range(n):
            await runtime.spawn(Idle, name=f"a{i}")
        spawn_us = (time.perf_counter() - began) / n * 1e6
        gc.collect()
        per_actor = (tracemalloc.get_traced_memory()[0] - before) / n
        tracemalloc.stop()
        return per_actor, spawn_us


async def bus_fanout(subscribers: int, events: int) -> float:
    async with open_runtime() as runtime:
        for i in range(subscribers):
            await runtime.spawn(Subscriber, name=f"s{i}", mailbox=MailboxConfig(events))
        Subscriber.received = 0
        began = time.perf_counter()
        for i in range(events):
            runtime.publish_nowait("bench.tick", i)
        while Subscriber.received < subscribers * events:
            await trio.lowlevel.checkpoint()
        return subscribers * events / (time.perf_counter() - began)


async def router_overhead(n: int) -> float:
    async with open_runtime() as runtime:
        ref = await runtime.spawn(Counter, name="sink", mailbox=MailboxConfig(n + 1))
        began = time.perf_counter()
        for i in range(n):
            ref.tell(i)
        return (time.perf_counter() - began) / n * 1e6


async def main(
    messages: int,
    asks: int,
    actors: int,
    *,
    subscribers: int = 100,
    events: int = 1000,
    router_tells: int = 100_000,
) -> dict[str, Any]:
    await tell_throughput(messages // 10)
    figures: dict[str, Any] = {}
    figures["tell_per_s"] = await tell_throughput(messages)
    figures["raw_channel_per_s"] = await raw_channel_throughput(messages)
    figures["tell_ratio"] = figures["tell_per_s"] / figures["raw_channel_per_s"]
    figures["ask_per_s"] = await ask_rate(asks)
    figures["raw_ping_pong_per_s"] = await raw_ping_pong(asks)
    figures["ask_ratio"] = figures["ask_per_s"] / figures["raw_ping_pong_per_s"]
    figures["batched_tell_per_s"] = await batched_tell(messages)
    figures["raw_batched_drain_per_s"] = await raw_batched_drain(messages)
    figures["batched_ratio"] = figures["batched_tell_per_s"] / figures["raw_batched_drain_per_s"]
    figures["bytes_per_idle_actor"], figures["spawn_us"] = await idle_actors(actors)
    figures["bus_deliveries_per_s"] = await bus_fanout(subscribers, events)
    figures["router_us_per_tell"] = await router_overhead(router_tells)
    return figures


def peer_figures(asks: int) -> dict[str, float | None]:
    """pykka and thespian ask rates (None when not installed). Call outside trio.run:
    they run on threads, not on Trio."""
    return {
        "pykka_ask_per_s": pykka_ask_rate(min(asks, 20_000)),
        "thespian_ask_per_s": thespian_ask_rate(asks),
    }


def report(r: dict[str, Any]) -> str:
    def peer(name: str) -> str:
        rate = r[f"{name}_ask_per_s"]
        if rate is None:
            return f"{name} ask: not installed (pip install -e '.[bench]')"
        return f"{name} ask: {rate:,.0f}/s; ours is {r['ask_per_s'] / rate:.1f}x"

    return "\n".join(
        [
            f"tell: {r['tell_per_s']:,.0f} msg/s vs raw Trio channel"
            f" {r['raw_channel_per_s']:,.0f} msg/s: ratio {r['tell_ratio']:.2f}",
            f"batched drain: {r['batched_tell_per_s']:,.0f} msg/s vs raw Trio"
            f" send_nowait/receive_nowait {r['raw_batched_drain_per_s']:,.0f} msg/s:"
            f" ratio {r['batched_ratio']:.2f}",
            f"ask: {r['ask_per_s']:,.0f}/s vs raw Trio ping-pong"
            f" {r['raw_ping_pong_per_s']:,.0f}/s: ratio {r['ask_ratio']:.2f}",
            peer("pykka"),
            peer("thespian"),
            f"idle actor: {r['bytes_per_idle_actor']:,.0f} bytes, spawn {r['spawn_us']:.1f} us",
            f"bus fan-out (1 publisher, 100 actors): {r['bus_deliveries_per_s']:,.0f} deliveries/s",
            f"router: {r['router_us_per_tell']:.2f} us per tell (checks + queueing)",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--asks", type=int, default=100_000)
    parser.add_argument("--actors", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    result = trio.run(main, arguments.messages, arguments.asks, arguments.actors)
    result |= peer_figures(arguments.asks)  # in the same process, right after
    if arguments.json:
        print(json.dumps(result, indent=2))
    else:
        print(report(result))

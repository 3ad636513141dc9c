"""Supervision benchmark: restart latency and memory per idle child, beside raw Trio.

Run: ``.venv/bin/python benchmarks/bench_supervision.py [--crashes 10000] [--json]``

- Restart latency: a child calls ``task_status.started()`` and raises at once; we time
  from just before the raise to the next run's call of ``started()``, over ``--crashes``
  crashes (one_for_one, no backoff). Reference, measured in the same run: a bare
  ``await nursery.start(fn)`` of a function that calls ``started()`` and returns.
- Memory per idle child: tracemalloc, ``--children`` children sleeping forever under a
  supervisor, against the same number of bare tasks started with ``nursery.start``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import tracemalloc
from typing import Any

import trio

from supervision import ChildSpec, open_supervisor


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50_us": ordered[len(ordered) // 2] / 1000,
        "p99_us": ordered[int(len(ordered) * 0.99)] / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
    }


async def restart_latency(crashes: int) -> list[int]:
    samples: list[int] = []
    crashed_at = [0]
    done = trio.Event()

    async def crasher(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        now = time.perf_counter_ns()
        if crashed_at[0]:
            samples.append(now - crashed_at[0])
        task_status.started()
        if len(samples) >= crashes:
            done.set()
            await trio.sleep_forever()
        crashed_at[0] = time.perf_counter_ns()
        raise RuntimeError("crash")

    async with open_supervisor(max_restarts=10**9, period=1.0) as supervisor:
        await supervisor.start_child(ChildSpec("crasher", crasher))
        await done.wait()
    return samples


async def bare_start(count: int) -> list[int]:
    samples = []

    async def ready(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            began = time.perf_counter_ns()
            await nursery.start(ready)
            samples.append(time.perf_counter_ns() - began)
    return samples


async def idle(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await trio.sleep_forever()


async def memory_supervised(children: int) -> float:
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    async with open_supervisor() as supervisor:
        for n in range(children):
            await supervisor.start_child(ChildSpec(f"c{n}", idle))
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        supervisor._body_scope.cancel()  # close it without waiting on anything else
    return (after - before) / children


async def memory_bare(children: int) -> float:
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    async with trio.open_nursery() as nursery:
        for _ in range(children):
            await nursery.start(idle)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        nursery.cancel_scope.cancel()
    return (after - before) / children


async def main(crashes: int, children: int) -> dict[str, Any]:
    await restart_latency(crashes // 10)  # warm up both paths
    await bare_start(crashes // 10)
    ours = percentiles(await restart_latency(crashes))
    bare = percentiles(await bare_start(crashes))
    tracemalloc.start()
    supervised_bytes = await memory_supervised(children)
    bare_bytes = await memory_bare(children)
    tracemalloc.stop()
    return {
        "restart_latency": ours,
        "bare_nursery_start": bare,
        "ratio_p50": ours["p50_us"] / bare["p50_us"],
        "ratio_p99": ours["p99_us"] / bare["p99_us"],
        "bytes_per_supervised_child": supervised_bytes,
        "bytes_per_bare_task": bare_bytes,
        "memory_ratio": supervised_bytes / bare_bytes,
        "crashes": crashes,
        "children": children,
    }


def report(figures: dict[str, Any]) -> str:
    ours, bare = figures["restart_latency"], figures["bare_nursery_start"]
    rows = [
        ("measure", "cws supervision", "raw Trio", "ratio"),
        ("restart p50 (us)", f"{ours['p50_us']:.1f}", f"{bare['p50_us']:.1f}",
         f"{figures['ratio_p50']:.2f}x"),
        ("restart p99 (us)", f"{ours['p99_us']:.1f}", f"{bare['p99_us']:.1f}",
         f"{figures['ratio_p99']:.2f}x"),
        ("restart mean (us)", f"{ours['mean_us']:.1f}", f"{bare['mean_us']:.1f}",
         f"{ours['mean_us'] / bare['mean_us']:.2f}x"),
        ("bytes per idle child", f"{figures['bytes_per_supervised_child']:.0f}",
         f"{figures['bytes_per_bare_task']:.0f}", f"{figures['memory_ratio']:.2f}x"),
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.append(
        f"({figures['crashes']} crashes vs {figures['crashes']} bare nursery.start calls;"
        f" {figures['children']} idle children vs bare tasks)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crashes", type=int, default=10_000)
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    arguments = parser.parse_args()
    figures = trio.run(main, arguments.crashes, arguments.children)
    print(json.dumps(figures, indent=2) if arguments.json else report(figures))

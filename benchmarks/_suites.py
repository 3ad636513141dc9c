"""The suites: what each runs at quick and full sizes, and the rows made of its figures.
The targets are all here, in :data:`TARGETS`, each with the reason for its bound."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._harness import Row, Target

TARGETS: dict[str, Target] = {
    "actors.tell": Target(
        ">=", 0.9, "issue 17: tells through the router and mailbox at 0.9x a raw channel's rate"
    ),
    "actors.batched_tell": Target(
        ">=",
        0.5,
        "issue 17: a burst of tells drained in batches at half the rate of raw"
        " send_nowait/receive_nowait",
    ),
    "actors.ask": Target(
        "<=",
        1.05,
        "issue 17: an ask, with its envelope, reply and deadline, at 0.95x the rate of a"
        " raw ping-pong of two unbuffered channels (its round trip within 1.05x)",
    ),
    "actors.idle_bytes": Target(
        "<=", 1.0, "issue 17: an idle actor within 4 KiB (an Erlang process: 2.6 KiB)"
    ),
    "actors.ask_vs_pykka": Target(">=", 1.0, "beat pykka's threaded ask"),
    "actors.ask_vs_thespian": Target(
        ">=", 1.0, "beat thespian's simpleSystemBase, a synchronous in-process system"
    ),
    "supervision.restart_p50": Target(
        "<=", 2.0, "issue 17: a supervised restart within 2x a bare nursery.start of the child"
    ),
    "plugins.ask": Target(
        ">=",
        0.85,
        "issue 17: framing, the actor and supervision cost at most ~15% over raw pipes",
    ),
    "sandbox.crash_p99": Target(
        "<=",
        1.1,
        "the sandbox (keeper, PID namespace, cgroup, Landlock, seccomp) costs under 10%"
        " of crash to ready p99 (issue 19), restarts adopting the warm spare",
    ),
    "sandbox.ask": Target(
        ">=", 0.9, "the sandbox costs under 10% of subprocess ask throughput (issue 19)"
    ),
    "ratelimit.neighbour_p50": Target(
        "<=",
        1.5,
        "a plugin driven at 10x its rate limit is refused cheaply enough that the typical"
        " request to the plugin beside it is at most 1.5x slower than with no storm",
    ),
    "startup.healthz": Target(
        "<=",
        4.0,
        "cws daemon answers /healthz within 4x an interpreter that imports trio (quart-trio"
        " and hypercorn alone import in about 3x)",
    ),
    "startup.cli_version": Target(
        "<=", 2.0, "the CLI imports lazily: cws --version within 2x an import of httpx"
    ),
    "startup.cli_plugin_list": Target(
        "<=", 2.0, "cws plugin list, a round trip to the daemon, within 2x an import of httpx"
    ),
    "connections.healthz_p99": Target(
        "<=",
        2.0,
        "/healthz p99 with 1,000 idle connections held against 1,024 descriptors within 2x"
        " of the same daemon's with none (issue 16, item 11)",
    ),
    **{
        f"attacks.{key}_p99": Target(
            "<=", 2.0, "issue 16: /healthz p99 while the attack runs within 2x of idle"
        )
        for key in ("faults", "patterns", "bodies", "bad_input", "connections")
    },
    "http.plugin_rps": Target(
        ">=", 0.85, "routing through the plugin's actor costs at most 15% of a bare route"
    ),
    "concurrency.wait_rps": Target(
        ">=",
        0.8,
        "issue 17: 50 clients of a plugin handler that waits 100 ms, with max_concurrency"
        " 50, get at least 0.8x of 50 / 0.1 s",
    ),
    "concurrency.fast_behind_slow": Target(
        "<=",
        2.0,
        "issue 17: a fast request behind 10 slow ones in flight (max_concurrency >= 11)"
        " within 2x of the same request alone",
    ),
    "concurrency.refusals": Target(
        ">=",
        3.0,
        "issue 17: refusing must be much cheaper than serving: 429s a second on a"
        " rate-limited plugin route at least 3x the 200s of a bare quart-trio route",
    ),
    "plugins.ask_concurrent_n10": Target(
        ">=",
        0.5,
        "issue 17: 10 askers of a subprocess plugin with max_concurrency 10 get at least"
        " half of raw pipes, pipelined",
    ),
}


@attrs.frozen
class Suite:
    """``run(params)`` returns the figures; ``rows(figures)`` turns them into rows."""

    name: str
    quick: dict[str, Any]
    full: dict[str, Any]
    run: Callable[[dict[str, Any]], dict[str, Any]]
    rows: Callable[[dict[str, Any]], list[Row]]


def row(suite: str, key: str, metric: str, unit: str, ours: float | None, **more: Any) -> Row:
    full_key = f"{suite}.{key}"
    return Row(suite, full_key, metric, unit, ours, target=TARGETS.get(full_key), **more)


def run_actors(params: dict[str, Any]) -> dict[str, Any]:
    from . import bench_actors

    figures = trio.run(functools.partial(bench_actors.main, **params))
    # Off Trio, right after: the peers run on their own threads.
    return figures | bench_actors.peer_figures(params["asks"])


def peer_row(figures: dict[str, Any], peer: str) -> Row:
    rate = figures[f"{peer}_ask_per_s"]
    note = "" if rate is not None else f"skipped: {peer} not installed (pip install -e '.[bench]')"
    return row("actors", f"ask_vs_{peer}", f"ask vs {peer}", "asks/s",
               figures["ask_per_s"] if rate is not None else None,
               reference=rate, reference_name=f"{peer} ask", note=note)  # fmt: skip


def actors_rows(f: dict[str, Any]) -> list[Row]:
    return [
        row("actors", "tell", "tell throughput", "msg/s", f["tell_per_s"],
            reference=f["raw_channel_per_s"], reference_name="raw Trio memory channel"),
        row("actors", "batched_tell", "tell burst, batched drain", "msg/s",
            f["batched_tell_per_s"], reference=f["raw_batched_drain_per_s"],
            reference_name="raw send_nowait/receive_nowait"),
        row("actors", "ask", "ask round trip", "us", 1e6 / f["ask_per_s"],
            reference=1e6 / f["raw_ping_pong_per_s"], reference_name="raw Trio ping-pong"),
        peer_row(f, "pykka"),
        peer_row(f, "thespian"),
        row("actors", "idle_bytes", "memory per idle actor", "bytes", f["bytes_per_idle_actor"],
            reference=4096, reference_name="4 KiB"),
        row("actors", "spawn", "spawn", "us", f["spawn_us"]),
        row("actors", "bus", "bus fan-out to 100 actors", "deliveries/s",
            f["bus_deliveries_per_s"]),
        row("actors", "router", "router cost per tell", "us", f["router_us_per_tell"]),
    ]  # fmt: skip


def run_supervision(params: dict[str, Any]) -> dict[str, Any]:
    from . import bench_supervision

    return trio.run(bench_supervision.main, params["crashes"], params["children"])


def supervision_rows(f: dict[str, Any]) -> list[Row]:
    ours, bare = f["restart_latency"], f["bare_nursery_start"]
    reference = "bare nursery.start"
    return [
        row("supervision", "restart_p50", "restart latency p50", "us", ours["p50_us"],
            reference=bare["p50_us"], reference_name=reference),
        row("supervision", "restart_p99", "restart latency p99", "us", ours["p99_us"],
            reference=bare["p99_us"], reference_name=reference),
        row("supervision", "child_bytes", "memory per idle child", "bytes",
            f["bytes_per_supervised_child"], reference=f["bytes_per_bare_task"],
            reference_name="bare task"),
    ]  # fmt: skip


def run_plugins(params: dict[str, Any]) -> dict[str, Any]:
    from . import bench_plugins

    return trio.run(bench_plugins.main, params["crashes"], params["asks"])


def plugins_rows(f: dict[str, Any]) -> list[Row]:
    return [
        row("plugins", "ask", "subprocess plugin ask", "asks/s", f["ask_sequential_per_s"],
            reference=f["raw_pipes_sequential_per_s"], reference_name="raw pipes, Trio echo"),
        row("plugins", "ask_concurrent", "subprocess plugin, 10 askers", "asks/s",
            f["ask_10_concurrent_per_s"], reference=f["raw_pipes_pipelined_per_s"],
            reference_name="raw pipes, pipelined",
            note="max_concurrency 1 (the default): one call at a time"),
        row("plugins", "ask_concurrent_n10", "subprocess plugin, 10 askers, N = 10", "asks/s",
            f["ask_10_concurrent_n10_per_s"], reference=f["raw_pipes_pipelined_per_s"],
            reference_name="raw pipes, pipelined", note="[concurrency] max = 10"),
        row("plugins", "crash_p50", "crash to ready p50 (fork server)", "ms",
            f["crash_to_ready_p50_ms"], reference=f["fresh_python_crash_to_ready_p50_ms"],
            reference_name="fresh interpreter"),
        row("plugins", "crash_p99", "crash to ready p99 (fork server)", "ms",
            f["crash_to_ready_p99_ms"], reference=f["fresh_python_crash_to_ready_p99_ms"],
            reference_name="fresh interpreter"),
    ]  # fmt: skip


def run_sandbox(params: dict[str, Any]) -> dict[str, Any]:
    from . import bench_sandbox

    return trio.run(bench_sandbox.main, params["crashes"], params["asks"], params["rounds"])


def sandbox_rows(f: dict[str, Any]) -> list[Row]:
    return [
        row("sandbox", "crash_p99", "crash to ready p99, sandbox on", "ms",
            f["on_crash_to_ready_p99_ms"], reference=f["off_crash_to_ready_p99_ms"],
            reference_name="sandbox off"),
        row("sandbox", "runner_crash_p99", "crash to ready p99, sandbox on, the runner dies",
            "ms", f["on_runner_crash_to_ready_p99_ms"], reference=f["off_crash_to_ready_p99_ms"],
            reference_name="sandbox off",
            note="the plugin's own process killed, not its keeper: init and keeper pass it on"),
        row("sandbox", "cgroup_crash_p99", "crash to ready p99, sandbox on", "ms",
            f["on_crash_to_ready_p99_ms"], reference=f["on_nocg_crash_to_ready_p99_ms"],
            reference_name="sandbox on, no run cgroup"),
        row("sandbox", "ask", "subprocess plugin ask, sandbox on", "asks/s",
            f["on_ask_sequential_per_s"], reference=f["off_ask_sequential_per_s"],
            reference_name="sandbox off"),
        row("sandbox", "cold_crash_p99", "crash to ready p99, sandbox on, no warm spare",
            "ms", f["cold_on_crash_to_ready_p99_ms"],
            reference=f["cold_off_crash_to_ready_p99_ms"],
            reference_name="sandbox off, no warm spare",
            note="a crash within a second of the last start (its spare not forked yet)"),
        row("sandbox", "spare_crash_p99", "crash to ready p99, sandbox on", "ms",
            f["on_crash_to_ready_p99_ms"], reference=f["cold_on_crash_to_ready_p99_ms"],
            reference_name="sandbox on, no warm spare"),
        row("sandbox", "gcp_crash_p50", "gcp plugin crash to ready p50 (its SDK preloaded)",
            "ms", f["gcp_spare_crash_to_ready_p50_ms"],
            reference=f["gcp_cold_crash_to_ready_p50_ms"], reference_name="no warm spare"),
    ]  # fmt: skip


def run_http(params: dict[str, Any]) -> dict[str, Any]:
    from . import bench_http

    return trio.run(
        functools.partial(
            bench_http.main,
            params["seconds"],
            params["connections"],
            warmup=params["warmup"],
            load_generator="auto",
        )
    )


def http_rows(f: dict[str, Any]) -> list[Row]:
    with_wrk = f["load_generator"] == "wrk"
    notes = [] if with_wrk else ["wrk not installed: load from httpx, which caps both routes"]
    if f["plugin_errors"]:
        notes.append(f"{f['plugin_errors']:.0f} non-2xx/3xx replies")
    return [
        row("http", "plugin_rps", "plugin endpoint throughput", "req/s", f["plugin_rps"],
            reference=f["bare_rps"], reference_name="bare quart-trio route",
            note="; ".join(notes), judged=with_wrk),
        row("http", "plugin_p99", "plugin endpoint latency p99", "ms", f["plugin_p99_ms"],
            reference=f["bare_p99_ms"], reference_name="bare quart-trio route"),
    ]  # fmt: skip


def run_concurrency(params: dict[str, Any]) -> dict[str, Any]:
    from . import bench_concurrency

    return trio.run(functools.partial(bench_concurrency.main, params["seconds"], params["rounds"]))


def concurrency_rows(f: dict[str, Any]) -> list[Row]:
    with_wrk = f["load_generator"] == "wrk"
    ideal, bare = f["wait_ideal_rps"], f["wait_bare_rps"]
    wait_note = (f"a bare quart-trio route waiting 100 ms: {bare:,.0f} req/s"
                 f" ({bare / ideal:.2f}x of the ideal)")  # fmt: skip
    if not with_wrk:
        wait_note += "; wrk not installed: load from httpx"
    return [
        row("concurrency", "wait_rps", "plugin endpoint, 100 ms handler, 50 clients, N = 50",
            "req/s", f["wait_plugin_rps"], reference=ideal,
            reference_name="50 clients / 0.1 s (ideal)", note=wait_note),
        row("concurrency", "fast_behind_slow", "fast request behind 10 slow ones, N = 50",
            "ms", f["fast_behind_slow_ms"], reference=f["fast_alone_ms"],
            reference_name="the same request alone",
            note=f"medians of {f['fast_samples']} each"),
        row("concurrency", "refusals", "429s a second, rate-limited plugin route", "req/s",
            f["limited_429_per_s"], reference=f["bare_200_per_s"],
            reference_name="200s of a bare quart-trio route",
            note="" if with_wrk else "wrk not installed: load from httpx, which caps both",
            judged=with_wrk),
    ]  # fmt: skip


def run_ratelimit(params: dict[str, Any]) -> dict[str, Any]:
    from . import bench_neighbour

    return trio.run(bench_neighbour.main, params["seconds"])


def ratelimit_rows(f: dict[str, Any]) -> list[Row]:
    statuses = f["hot_statuses"]
    refused = statuses.get("429", 0) / max(1, sum(statuses.values()))
    storm = (
        f"beside {f['hot_offered_per_s']:.0f} req/s to a plugin limited to"
        f" {f['hot_limit_per_s']:.0f}"
    )
    alone = "same endpoint, no storm"
    calm_ok = f["calm_statuses"] == {"200": sum(f["calm_statuses"].values())}
    return [
        row("ratelimit", "neighbour_p50", "neighbour latency p50, 10x storm", "ms",
            f["storm_p50_ms"], reference=f["alone_p50_ms"], reference_name=alone,
            note=storm if calm_ok else f"neighbour replies {f['calm_statuses']}"),
        row("ratelimit", "neighbour_p99", "neighbour latency p99, 10x storm", "ms",
            f["storm_p99_ms"], reference=f["alone_p99_ms"], reference_name=alone,
            note="the storm's 429s share the daemon's event loop and the machine's cores"),
        row("ratelimit", "refused", "storm refused with 429", "%", refused * 100),
    ]  # fmt: skip


def run_startup(params: dict[str, Any]) -> dict[str, Any]:
    from . import bench_startup

    return bench_startup.main(params["rounds"])


def startup_rows(f: dict[str, Any]) -> list[Row]:
    trio_ = "python -c 'import trio'"
    httpx_ = "python -c 'import httpx'"
    return [
        row("startup", "healthz", "exec to /healthz 200", "s", f["daemon_healthz_s"],
            reference=f["python_import_trio_s"], reference_name=trio_),
        row("startup", "readyz", "exec to /readyz 200 (default plugins)", "s",
            f["daemon_readyz_s"], reference=f["python_import_trio_s"], reference_name=trio_,
            note=f"target under 2 s: {'met' if f['daemon_readyz_s'] < 2 else 'MISSED'}"),
        row("startup", "cli_version", "cws --version", "s", f["cli_version_s"],
            reference=f["python_import_httpx_s"], reference_name=httpx_),
        row("startup", "cli_plugin_list", "cws plugin list", "s", f["cli_plugin_list_s"],
            reference=f["python_import_httpx_s"], reference_name=httpx_),
    ]  # fmt: skip


def run_connections(params: dict[str, Any]) -> dict[str, Any]:
    from . import bench_connections

    return trio.run(bench_connections.main, params["probes"])


def connections_rows(f: dict[str, Any]) -> list[Row]:
    idle, held = f["idle"], f["held"]
    alone = "/healthz, no other connection"
    kept = held["attack_opened"] - held["attack_closed"]
    return [
        row("connections", "healthz_p50", "/healthz p50, 1,000 idle connections", "ms",
            held["p50_ms"], reference=idle["p50_ms"], reference_name=alone),
        row("connections", "healthz_p99", "/healthz p99, 1,000 idle connections", "ms",
            held["p99_ms"], reference=idle["p99_ms"], reference_name=alone,
            note=f"{kept} kept open under {f['open_files']} descriptors,"
                 f" {held['attack_closed']} closed idle-longest first"),
    ]  # fmt: skip


def run_attacks(params: dict[str, Any]) -> dict[str, Any]:
    from . import bench_attacks

    return bench_attacks.main(**params)


def answers_note(answers: dict[str, dict[str, int]]) -> str:
    """``label: status xN, ...; ...``, or the statuses of all labels together when
    there are many."""
    if len(answers) > 4:
        total: dict[str, int] = {}
        for counts in answers.values():
            for status, count in counts.items():
                total[status] = total.get(status, 0) + count
        answers = {f"{len(answers)} bodies": total}
    return "; ".join(
        f"{label}: " + ", ".join(f"{status} x{count:,}" for status, count in counts.items())
        for label, counts in answers.items()
    )


def attack_row(f: dict[str, Any], key: str, metric: str, extra: str = "") -> Row:
    figures = f[key]
    notes = [answers_note(figures["answers"])]
    probes = figures["attack"]["answers"]
    if set(probes) != {"200"}:
        notes.append("probes " + ", ".join(f"{a} x{n}" for a, n in probes.items()))
    if figures["leaks"]:
        notes.append(f"{figures['leaks']} answers named a path or held a traceback")
    after = (figures["healthz_after"], figures["publish_after"])
    if after != (200, 202):
        notes.append(f"afterwards /healthz {after[0]}, publish {after[1]}")
    if extra:
        notes.append(extra)
    return row("attacks", f"{key}_p99", metric, "ms", figures["attack"]["p99_ms"],
               reference=figures["idle"]["p99_ms"], reference_name="/healthz p99 idle",
               note="; ".join(notes))  # fmt: skip


def attacks_rows(f: dict[str, Any]) -> list[Row]:
    bodies = f["bodies"]
    upload = next(label for label in bodies["answers"] if label.startswith("chunked upload"))
    sent = bodies["mib_sent_when_answered_max"]
    patterns, connections = f["patterns"], f["connections"]
    held = connections["answers"]
    count = sum(next(counts for label, counts in held.items() if "keep-alive" in label).values())
    return [
        attack_row(f, "faults", "/healthz p99, 1: fault targets of 35 and 50,000 '*'"),
        attack_row(f, "patterns", "/healthz p99, 2: 1,500-segment stream pattern",
                   f"{patterns['delivered']} of {patterns['published']} events delivered"),
        attack_row(f, "bodies", f"/healthz p99, 3: {upload}, 8 x 99 MiB anonymous",
                   f"upload answered after {sent[upload]:.0f} MiB, bodies after"
                   f" {sent['99 MiB bodies']:.2f} MiB"),
        row("attacks", "bodies_rss", "daemon RSS after item 3", "MiB",
            bodies["memory_after"]["rss_mib"], reference=bodies["memory_before"]["rss_mib"],
            reference_name="RSS before item 3",
            note=f"peak (VmHWM) {bodies['memory_before']['hwm_mib']:.0f} ->"
                 f" {bodies['memory_after']['hwm_mib']:.0f} MiB"),
        attack_row(f, "bad_input", "/healthz p99, 4: deep JSON, long number, NaN, '..'"),
        attack_row(f, "connections", f"/healthz p99, 11: {count:,} idle keep-alive connections",
                   f"daemon descriptors {connections['daemon_descriptors_held']} of"
                   f" {f['nofile']}, {connections['closed_by_daemon']} closed by it"),
    ]  # fmt: skip


SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            "actors",
            quick=dict(
                messages=50_000,
                asks=5_000,
                actors=1_000,
                subscribers=100,
                events=100,
                router_tells=10_000,
            ),
            full=dict(
                messages=1_000_000,
                asks=100_000,
                actors=10_000,
                subscribers=100,
                events=1_000,
                router_tells=100_000,
            ),
            run=run_actors,
            rows=actors_rows,
        ),
        Suite(
            "supervision",
            quick=dict(crashes=1_000, children=1_000),
            full=dict(crashes=10_000, children=10_000),
            run=run_supervision,
            rows=supervision_rows,
        ),
        Suite(
            "plugins",
            quick=dict(crashes=5, asks=500),
            full=dict(crashes=50, asks=5_000),
            run=run_plugins,
            rows=plugins_rows,
        ),
        Suite(
            "concurrency",
            quick=dict(seconds=1, rounds=1),
            full=dict(seconds=5, rounds=4),
            run=run_concurrency,
            rows=concurrency_rows,
        ),
        Suite(
            "sandbox",
            quick=dict(crashes=10, asks=500, rounds=2),
            full=dict(crashes=100, asks=5_000, rounds=2),
            run=run_sandbox,
            rows=sandbox_rows,
        ),
        Suite(
            "ratelimit",
            quick=dict(seconds=1),
            full=dict(seconds=5),
            run=run_ratelimit,
            rows=ratelimit_rows,
        ),
        Suite(
            "http",
            quick=dict(seconds=1, connections=32, warmup=1),
            full=dict(seconds=10, connections=32, warmup=2),
            run=run_http,
            rows=http_rows,
        ),
        Suite(
            "connections",
            quick=dict(probes=200),
            full=dict(probes=1_000),
            run=run_connections,
            rows=connections_rows,
        ),
        Suite(
            "startup",
            quick=dict(rounds=1),
            full=dict(rounds=7),
            run=run_startup,
            rows=startup_rows,
        ),
        Suite(
            "attacks",
            quick=dict(
                idle_seconds=2.0,
                attack_seconds=2.0,
                upload_mib=128,
                upload_rounds=1,
                connections=1000,
                probe_timeout=2.0,
            ),
            full=dict(
                idle_seconds=10.0,
                attack_seconds=10.0,
                upload_mib=1000,
                upload_rounds=3,
                connections=1000,
                probe_timeout=5.0,
            ),
            run=run_attacks,
            rows=attacks_rows,
        ),
    )
}

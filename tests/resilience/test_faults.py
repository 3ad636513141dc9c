"""Fault injection: every kind does what it says, on in-process actors (Trio's mock
clock) and on real subprocess plugins; specs parse and render; seeded runs repeat."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from cws_actors import (
    Actor,
    ActorError,
    AskTimeout,
    HandlerFailed,
    HealthProbe,
    PluginHost,
    ProbeKind,
    Runtime,
    RuntimeConfig,
    open_runtime,
)
from cws_actors._isolation._keeper import process_tree
from cws_actors.faults import (
    ChaosPlan,
    ChaosReport,
    ChaosRun,
    FaultInjector,
    FaultKind,
    FaultNotFound,
    FaultSpec,
    FaultSpecError,
    FaultState,
    FaultTargetError,
    InjectedFault,
    parse_fault_list,
)
from tests.plugins._fixtures import code_for, write_plugin
from tests.plugins.test_host import TIMEOUT, opened, wait_until
from tests.plugins.test_subprocess import alive, gone, plugin_pid, restarted

# ---------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("crash:0.05", {"kind": "crash", "probability": 0.05}),
        ("crash:after 3", {"kind": "crash", "after": 3, "count": 1}),
        ("crash:next", {"kind": "crash", "count": 1}),
        ("hang", {"kind": "hang"}),
        ("hang:0.5", {"kind": "hang", "probability": 0.5}),
        ("latency:10ms", {"kind": "latency", "delay": 0.01, "distribution": "fixed"}),
        (
            "latency:10ms..50ms",
            {"kind": "latency", "delay": 0.01, "delay_max": 0.05, "distribution": "uniform"},
        ),
        ("latency:exp 20ms", {"kind": "latency", "delay": 0.02, "distribution": "exponential"}),
        ("error_rate:0.1", {"kind": "error_rate", "probability": 0.1}),
        ("drop:1.0", {"kind": "drop", "probability": 1.0}),
        ("slow_start:2s", {"kind": "slow_start", "delay": 2.0}),
        ("kill:once", {"kind": "kill", "count": 1}),
        ("kill:every 10s", {"kind": "kill", "every": 10.0}),
        ("pause:1.5s", {"kind": "pause", "pause_for": 1.5, "count": 1}),
        ("memory_hog", {"kind": "memory_hog", "count": 1}),
        ("drop:0.2 for 2m", {"kind": "drop", "probability": 0.2, "duration": 120.0}),
        ("crash:0.5 times 3", {"kind": "crash", "probability": 0.5, "count": 3}),
        (
            "kill:every 250ms for 1m times 4",
            {"kind": "kill", "every": 0.25, "duration": 60.0, "count": 4},
        ),
    ],
)
def test_every_kind_parses_renders_and_round_trips(text: str, fields: dict[str, Any]) -> None:
    spec = FaultSpec.parse(text)
    assert spec.as_dict() == fields
    assert str(spec) == text  # the canonical form renders back as written
    assert FaultSpec.parse(str(spec)) == spec
    assert FaultSpec.from_dict(json.loads(json.dumps(spec.as_dict()))) == spec


def test_the_cli_example_and_the_lenient_forms() -> None:
    specs = parse_fault_list("crash:0.05,latency:10ms..50ms,kill:every 10s")
    assert [str(spec) for spec in specs] == ["crash:0.05", "latency:10ms..50ms", "kill:every 10s"]
    assert parse_fault_list("  ") == []
    lenient = parse_fault_list(" crash , kill ,latency: exp  20ms , hang times 2 for 1.5s")
    assert [str(spec) for spec in lenient] == [
        "crash:next", "kill:once", "latency:exp 20ms", "hang for 1.5s times 2",
    ]  # fmt: skip
    assert FaultSpec.parse("slow_start:2m").delay == 120.0
    assert FaultSpec.parse("latency:0.5ms").delay == 0.0005
    assert FaultSpec.from_dict({"kind": "latency", "delay": "10ms"}).delay == 0.01
    assert FaultSpec("crash", probability=1) == FaultSpec.parse("crash:1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latncy:10ms", "unknown fault kind 'latncy' (did you mean 'latency'?); expected one of"),
        ("crash:1.5", "crash probability must be from 0 to 1, got 1.5"),
        ("drop:-0.1", "drop takes P (P a probability from 0 to 1), got '-0.1'"),
        ("error_rate", "error_rate needs a probability, as in error_rate:0.1"),
        ("latency", "latency needs a delay: latency:10ms, latency:10ms..50ms"),
        ("latency:10", "'10' is not a duration; expected a number with ms, s or m"),
        ("latency:50ms..10ms", "latency delay_max must be >= delay, got 0.01 < 0.05"),
        ("slow_start:soon", "'soon' is not a duration"),
        ("kill:twice", "kill takes 'once' or 'every DURATION', got 'twice'"),
        ("kill:every 0s", "kill every must be > 0 seconds, got 0.0"),
        ("crash:after x", "crash after takes a whole number, got 'x'"),
        ("memory_hog:1", "memory_hog takes no argument, got '1'"),
        ("hang times 0", "count must be a whole number >= 1, got 0"),
        ("drop:0.1 for 1s for 2s", "'for' is given twice"),
        ("crash:0.1,,hang", "fault 2 of 'crash:0.1,,hang' is empty"),
    ],
)
def test_bad_text_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(FaultSpecError) as caught:
        parse_fault_list(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_the_position_of_a_bad_fault_is_named() -> None:
    with pytest.raises(FaultSpecError, match=r"fault 2 \('kill:twice'\): kill takes"):
        parse_fault_list("crash:0.1,kill:twice")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"delay": 1}, "a fault spec needs a 'kind'"),
        ({"kind": "explode"}, "unknown fault kind 'explode'"),
        ({"kind": "crash", "prob": 0.1}, "unknown field 'prob' in a crash fault; it takes"),
        ({"kind": "crash", "probability": 2}, "crash probability must be from 0 to 1, got 2"),
        ({"kind": "crash", "probability": "often"}, "crash probability must be a number"),
        ({"kind": "drop", "probability": 0.1, "duration": -1}, "duration must be > 0 seconds"),
        ({"kind": "latency", "delay": -0.5}, "latency delay must be >= 0 seconds, got -0.5"),
        ({"kind": "latency", "delay": math.nan}, "latency delay must be a finite number"),
        ({"kind": "latency", "delay": 1, "distribution": "normal"}, "fixed, uniform or"),
        ({"kind": "crash", "probability": 0.1, "after": 2}, "probability or after, not both"),
        ({"kind": "hang", "count": True}, "count must be a whole number >= 1, got True"),
    ],
)
def test_bad_dicts_say_what_is_wrong(data: dict[str, Any], message: str) -> None:
    with pytest.raises(FaultSpecError) as caught:
        FaultSpec.from_dict(data)
    assert message in str(caught.value)


def test_a_parameter_of_another_kind_is_refused() -> None:
    with pytest.raises(FaultSpecError, match="probability does not apply to latency faults"):
        FaultSpec(FaultKind.LATENCY, delay=0.1, probability=0.5)


# ---------------------------------------------------------------------- in-process actors


@attrs.define
class Log:
    handled: list[Any] = attrs.field(factory=list)
    starts: list[float] = attrs.field(factory=list)


class Echo(Actor):
    """Answers what it got; records every start and every message it saw."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.starts.append(trio.current_time())

    async def receive(self, message: Any) -> Any:
        self.log.handled.append(message)
        return message


async def spawn_echo(runtime: Runtime, name: str = "a", **options: Any) -> tuple[Any, Log]:
    log = Log()
    ref = await runtime.spawn(lambda: Echo(log), name=name, **options)
    return ref, log


def node(runtime: Runtime, path: str = "/a") -> Any:
    return runtime.actors().find(path)


async def test_crash_on_the_next_message_restarts_the_actor(autojump_clock: Any) -> None:
    async with open_runtime() as runtime:
        ref, log = await spawn_echo(runtime)
        record = runtime.faults.inject("/a", "crash:next")
        with pytest.raises(HandlerFailed) as caught:
            await ref.ask("first")
        assert isinstance(caught.value.exception, InjectedFault)
        assert caught.value.exception.fault_id == record.id
        await trio.testing.wait_all_tasks_blocked()
        assert (node(runtime).restarts, len(log.starts)) == (1, 2)
        assert "InjectedFault: fault 'f1' (crash) injected into /a" in node(runtime).last_exit
        assert await ref.ask("second") == "second"  # spent: it fired once
        assert log.handled == ["second"]  # the actor never saw the crashing message
        assert runtime.faults.get(record.id).state is FaultState.SPENT
        assert runtime.faults.list() == []


async def test_crash_after_n_lets_n_messages_through(autojump_clock: Any) -> None:
    async with open_runtime() as runtime:
        ref, _ = await spawn_echo(runtime)
        runtime.faults.inject("/a", "crash:after 3 times 2")
        outcomes = []
        for i in range(9):
            try:
                outcomes.append(await ref.ask(i))
            except HandlerFailed:
                outcomes.append("crash")
            await trio.testing.wait_all_tasks_blocked()
        assert outcomes == [0, 1, 2, "crash", 4, 5, 6, "crash", 8]
        assert node(runtime).restarts == 2


async def test_crash_with_a_probability(autojump_clock: Any) -> None:
    async with open_runtime(config=RuntimeConfig(fault_seed=7, max_restarts=1000)) as runtime:
        ref, _ = await spawn_echo(runtime)
        record = runtime.faults.inject("/a", "crash:0.25")
        crashes = 0
        for i in range(400):
            try:
                await ref.ask(i)
            except HandlerFailed:
                crashes += 1
            await trio.testing.wait_all_tasks_blocked()
        assert 70 <= crashes <= 130
        assert runtime.faults.get(record.id).fired == crashes == node(runtime).restarts
        assert runtime.faults.get(record.id).seen == 400


async def test_a_hang_is_caught_by_liveness_and_restarted(autojump_clock: Any) -> None:
    probe = HealthProbe(ProbeKind.LIVENESS, period=1, timeout=0.5, failure_threshold=2)
    async with open_runtime() as runtime:
        ref, log = await spawn_echo(runtime, probes=[probe])
        runtime.faults.inject("/a", "hang times 1")
        began = trio.current_time()
        with pytest.raises(ActorError):  # ActorRestarting: cancelled by the restart
            await ref.ask("stuck", timeout=60)
        assert trio.current_time() - began < 5
        await runtime.wait_ready("/a")  # the asker may hear of the restart before it is done
        snapshot = node(runtime)
        assert snapshot.restarts == 1
        assert "liveness" in snapshot.last_exit
        assert await ref.ask("after") == "after"
        assert log.handled == ["after"]


async def test_fixed_latency_delays_each_message(autojump_clock: Any) -> None:
    async with open_runtime() as runtime:
        ref, _ = await spawn_echo(runtime)
        runtime.faults.inject("/a", "latency:250ms")
        for i in range(3):
            began = trio.current_time()
            assert await ref.ask(i) == i
            assert trio.current_time() - began == pytest.approx(0.25, abs=1e-9)


async def test_uniform_and_exponential_latency(autojump_clock: Any) -> None:
    async with open_runtime(config=RuntimeConfig(fault_seed=3)) as runtime:
        ref, _ = await spawn_echo(runtime)
        uniform = runtime.faults.inject("/a", "latency:10ms..50ms")
        delays = []
        for i in range(200):
            began = trio.current_time()
            await ref.ask(i)
            delays.append(trio.current_time() - began)
        assert all(0.01 - 1e-9 <= delay <= 0.05 + 1e-9 for delay in delays)
        assert max(delays) - min(delays) > 0.03  # spread over the range, not one value
        drawn = [float(f.detail[:-1]) for f in runtime.faults.firings() if f.fault_id == uniform.id]
        assert drawn == pytest.approx(delays, abs=1e-9)  # the log says what it did
        runtime.faults.clear(uniform.id)
        runtime.faults.inject("/a", "latency:exp 20ms")
        began = trio.current_time()
        for i in range(400):
            await ref.ask(i)
        assert (trio.current_time() - began) / 400 == pytest.approx(0.02, rel=0.2)


async def test_error_rate_fails_the_asker_without_a_restart(autojump_clock: Any) -> None:
    async with open_runtime(config=RuntimeConfig(fault_seed=11)) as runtime:
        ref, log = await spawn_echo(runtime)
        runtime.faults.inject("/a", "error_rate:1")
        with pytest.raises(HandlerFailed, match="InjectedFault") as caught:
            await ref.ask("x")
        injected = caught.value.exception
        assert isinstance(injected, InjectedFault)
        assert injected.kind is FaultKind.ERROR_RATE
        assert caught.value.__cause__ is caught.value.exception
        ref.tell("told")  # a tell fails silently: nobody waits for it
        await trio.testing.wait_all_tasks_blocked()
        assert (node(runtime).restarts, node(runtime).state, log.handled) == (0, "running", [])
        runtime.faults.clear()
        runtime.faults.inject("/a", "error_rate:0.3")
        failed = 0
        for i in range(300):
            try:
                await ref.ask(i)
            except HandlerFailed:
                failed += 1
        assert 60 <= failed <= 120
        assert len(log.handled) == 300 - failed
        assert node(runtime).restarts == 0


async def test_drop_makes_dead_letters_with_reason_fault(autojump_clock: Any) -> None:
    async with open_runtime(config=RuntimeConfig(fault_seed=5)) as runtime:
        ref, log = await spawn_echo(runtime)
        record = runtime.faults.inject("/a", "drop:1")
        ref.tell("lost")
        with pytest.raises(AskTimeout):
            await ref.ask("lost ask", timeout=2)
        assert trio.current_time() == 2.0  # no reply: the asker's deadline ends it
        with pytest.raises(AskTimeout):
            await ref.ask("no deadline", timeout=math.inf)  # fails at once, never hangs
        assert trio.current_time() == 2.0
        letters = runtime.dead_letters()
        assert [(d.reason, d.envelope.payload) for d in letters] == [
            ("fault", "lost"), ("fault", "lost ask"), ("fault", "no deadline"),
        ]  # fmt: skip
        assert f"dropped by fault {record.id!r} (drop:1.0)" in letters[0].detail
        assert log.handled == []
        assert node(runtime).restarts == 0
        runtime.faults.clear(record.id)
        runtime.faults.inject("/a", "drop:0.5")
        for i in range(200):
            ref.tell(i)
            await trio.testing.wait_all_tasks_blocked()
        dropped = sum(1 for d in runtime.dead_letters() if d.reason == "fault") - 3
        assert 70 <= dropped <= 130
        assert len(log.handled) == 200 - dropped


async def test_slow_start_delays_each_start(autojump_clock: Any) -> None:
    async with open_runtime() as runtime:
        runtime.faults.inject("/a", "slow_start:2s")  # before the actor exists
        ref, log = await spawn_echo(runtime)
        assert trio.current_time() == 2.0  # spawn waited for the slow start
        runtime.faults.inject("/a", "crash:next")
        with pytest.raises(HandlerFailed):
            await ref.ask("boom")
        await runtime.wait_ready("/a")
        assert log.starts == [2.0, 4.0]


async def test_a_glob_reaches_actors_spawned_later_and_only_those_it_matches(
    autojump_clock: Any,
) -> None:
    async with open_runtime() as runtime:
        await runtime.spawn_supervisor("plugins")
        runtime.faults.inject("/plugins/*", "error_rate:1")
        inside, _ = await spawn_echo(runtime, "x", parent="/plugins")
        outside, _ = await spawn_echo(runtime, "x")
        with pytest.raises(HandlerFailed):
            await inside.ask(1)
        assert await outside.ask(1) == 1
        runtime.faults.inject("/**", "latency:1s")
        began = trio.current_time()
        assert await outside.ask(2) == 2
        assert trio.current_time() - began == 1.0


async def test_a_fault_expires_after_its_duration(autojump_clock: Any) -> None:
    async with open_runtime() as runtime:
        ref, _ = await spawn_echo(runtime)
        record = runtime.faults.inject("/a", "latency:1s for 3s")
        assert record.expires_at == 3.0
        for _ in range(3):
            await ref.ask("slow")
        assert trio.current_time() == 3.0
        await ref.ask("fast")  # the fault expired at 3 s
        assert trio.current_time() == 3.0
        assert runtime.faults.list() == []
        (finished,) = runtime.faults.list(include_finished=True)
        assert (finished.state, finished.fired) == (FaultState.EXPIRED, 3)


async def test_a_fault_stops_after_its_count(autojump_clock: Any) -> None:
    async with open_runtime() as runtime:
        ref, log = await spawn_echo(runtime)
        runtime.faults.inject("/a", "drop:1 times 2")
        for i in range(4):
            ref.tell(i)
        await trio.testing.wait_all_tasks_blocked()
        assert log.handled == [2, 3]
        (spent,) = runtime.faults.list(include_finished=True)
        assert (spent.state, spent.fired, spent.seen) == (FaultState.SPENT, 2, 2)


async def test_list_get_and_clear(autojump_clock: Any) -> None:
    async with open_runtime() as runtime:
        ref, _ = await spawn_echo(runtime)
        faults = runtime.faults
        a = faults.inject("/a", "latency:1s")
        b = faults.inject("/b", FaultSpec(FaultKind.DROP, probability=0.5))
        c = faults.inject("/a", {"kind": "crash", "probability": 0.001}, id="mine")
        assert [r.id for r in faults.list()] == ["f1", "f2", "mine"]
        assert faults.get("mine").spec == FaultSpec.parse("crash:0.001")
        json.dumps([r.as_dict() for r in faults.list()])  # JSON-ready for the HTTP API
        assert faults.list()[0].as_dict()["text"] == "latency:1s"
        with pytest.raises(FaultSpecError, match="'mine' is already active"):
            faults.inject("/a", "hang", id="mine")
        assert [r.id for r in faults.clear(target="/a")] == [a.id, c.id]
        assert [r.id for r in faults.list()] == [b.id]
        began = trio.current_time()
        await ref.ask("no longer slow")
        assert trio.current_time() == began
        with pytest.raises(FaultNotFound, match="no active fault 'f1' \\(it is cleared\\)"):
            faults.clear("f1")
        with pytest.raises(FaultNotFound):
            faults.get("nope")
        faults.inject("/c", "hang")
        assert len(faults.clear()) == 2
        assert faults.list() == []
        assert {r.state for r in faults.list(include_finished=True)} == {FaultState.CLEARED}


async def test_reached_and_check_process_target_answer_before_any_injection(
    autojump_clock: Any,
) -> None:
    async with open_runtime() as runtime:
        await spawn_echo(runtime, "a")
        await spawn_echo(runtime, "b")
        assert runtime.faults.reached("/*") == ["/a", "/b"]
        assert runtime.faults.reached("/a") == ["/a"]
        assert runtime.faults.reached("/c") == []  # a fault there waits for it
        runtime.faults.check_process_target("/*", FaultKind.KILL)  # a glob: the eligible
        runtime.faults.check_process_target("/c", FaultKind.KILL)  # not spawned yet
        with pytest.raises(FaultTargetError, match="kill needs a subprocess plugin; /a runs"):
            runtime.faults.check_process_target("/a", FaultKind.KILL)
        with pytest.raises(FaultTargetError, match="a fault target is an actor path"):
            runtime.faults.reached("a")
        assert runtime.faults.list() == []


async def test_bad_targets_and_process_faults_on_in_process_actors(autojump_clock: Any) -> None:
    async with open_runtime() as runtime:
        await spawn_echo(runtime)
        with pytest.raises(FaultTargetError, match="a fault target is an actor path or a glob"):
            runtime.faults.inject("a", "hang")
        for text in ("kill:once", "pause:1s", "memory_hog"):
            with pytest.raises(FaultTargetError, match="needs a subprocess plugin; /a runs in"):
                runtime.faults.inject("/a", text)
        with pytest.raises(TypeError, match="a fault spec is a FaultSpec"):
            runtime.faults.inject("/a", 42)  # type: ignore[arg-type]
        assert runtime.faults.list() == []


def firing_sequence(seed: int) -> list[tuple[Any, ...]]:
    """A run of several random faults on one actor, in a Trio run of its own."""

    async def scenario() -> list[tuple[Any, ...]]:
        config = RuntimeConfig(fault_seed=seed, max_restarts=10_000)
        async with open_runtime(config=config) as runtime:
            ref, _ = await spawn_echo(runtime)
            for text in ("crash:0.1", "latency:exp 5ms", "error_rate:0.2", "drop:0.1"):
                runtime.faults.inject("/a", text)
            for i in range(300):
                with contextlib.suppress(ActorError):
                    await ref.ask(i, timeout=1)
                await trio.testing.wait_all_tasks_blocked()
            return [
                (f.fault_id, f.kind, f.path, f.number, f.seen, f.at, f.detail)
                for f in runtime.faults.firings()
            ]

    return trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_same_seed_makes_the_same_firings() -> None:
    first, again, other = firing_sequence(42), firing_sequence(42), firing_sequence(43)
    assert first == again
    assert {kind for _, kind, *_ in first} == {
        FaultKind.CRASH, FaultKind.LATENCY, FaultKind.ERROR_RATE, FaultKind.DROP,
    }  # fmt: skip
    assert first != other


def test_an_injector_without_a_seed_picks_one_that_replays() -> None:
    injector = FaultInjector()
    assert isinstance(injector.seed, int)
    assert FaultInjector(seed=42).seed == 42
    with pytest.raises(TypeError):
        FaultInjector(seed="42")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- subprocess plugins


@contextlib.asynccontextmanager
async def subprocess_host(
    tmp_path: Path, limits: str = "memory_mb = 200"
) -> AsyncIterator[PluginHost]:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess", limits=limits)
    async with opened(home) as host:
        await host.load("echo")
        yield host


async def test_kill_is_detected_and_the_plugin_restarted(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with subprocess_host(tmp_path) as host:
            old = plugin_pid(host)
            record = host.runtime.faults.inject("/plugins/echo", "kill:once")
            await wait_until(lambda: restarted(host, old))
            status = await host.status("echo")
            assert status.restarts == 1
            assert "killed by SIGKILL" in (status.last_exit or "")
            assert not alive(old)
            assert host.runtime.faults.get(record.id).state is FaultState.SPENT
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"
            (firing,) = host.runtime.faults.firings()
            assert (firing.path, firing.detail) == ("/plugins/echo", "SIGKILL")


async def test_kill_every_interval(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with subprocess_host(tmp_path) as host:
            record = host.runtime.faults.inject("/plugins/*", "kill:every 500ms times 2")

            async def killed_twice() -> bool:
                status = await host.status("echo")
                return status.restarts == 2 and status.ready

            await wait_until(killed_twice)
            # On the fault's schedule: multiples of 500 ms from the injection (a tick
            # that falls while the plugin restarts is skipped).
            ticks = [(f.at - record.created_at) / 0.5 for f in host.runtime.faults.firings()]
            assert len(ticks) == 2
            assert ticks[0] == pytest.approx(1, abs=0.2)
            assert ticks[1] == pytest.approx(round(ticks[1]), abs=0.2)
            assert round(ticks[1]) >= 2
            assert host.runtime.faults.get(record.id).state is FaultState.SPENT


async def test_pause_stops_the_process_then_resumes_it(tmp_path: Path) -> None:
    def state(pid: int) -> str:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

    with trio.fail_after(TIMEOUT):
        async with subprocess_host(tmp_path) as host:
            pid = plugin_pid(host)
            # Sandboxed, the tracked process is the keeper; the plugin's code runs in
            # the runner below it and its init: the runner stops and goes on; the
            # keeper and the init stay able to end the run meanwhile.
            keeper, init, runner = process_tree(pid)
            host.runtime.faults.inject("/plugins/echo", "pause:1s")

            async def stopped() -> bool:
                return state(runner) == "T"

            async def resumed() -> bool:
                return state(runner) != "T"

            await wait_until(stopped)
            assert state(keeper) != "T"
            assert state(init) != "T"
            began = trio.current_time()
            await wait_until(resumed)
            assert 0.5 < trio.current_time() - began < 1.5

            async def ready() -> bool:
                return (await host.status("echo")).ready

            await wait_until(ready)  # ready again, in the same process
            assert plugin_pid(host) == pid
            assert (await host.status("echo")).restarts == 0
            assert (await host.execute_cli(["echo", "--text", "y"])).output == "hello y"
            (firing,) = host.runtime.faults.firings()
            assert firing.detail == "SIGSTOP"


async def test_memory_hog_ends_with_a_kill_for_the_limit_and_a_restart(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with subprocess_host(tmp_path) as host:
            old = plugin_pid(host)
            host.runtime.faults.inject("/plugins/echo", "memory_hog")
            await wait_until(lambda: restarted(host, old))
            status = await host.status("echo")
            assert status.restarts == 1
            assert "out of memory under its memory limit" in (status.last_exit or "")
            await wait_until(lambda: gone(old))  # its keeper exits at idle priority
            assert (await host.execute_cli(["echo", "--text", "z"])).output == "hello z"


async def test_message_faults_and_refusals_on_plugins(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess", limits="")
    write_plugin(home / "plugins", "local", code=code_for("local"))
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.load("echo")
            await host.load("local")
            faults = host.runtime.faults
            with pytest.raises(FaultTargetError, match="memory_hog needs a memory limit"):
                faults.inject("/plugins/echo", "memory_hog")
            with pytest.raises(FaultTargetError, match="kill needs a subprocess plugin"):
                faults.inject("/plugins/local", "kill:once")
            old = plugin_pid(host)
            faults.inject("/plugins/echo", "crash:next")
            result = await host.execute_cli(["echo", "--text", "x"])
            assert result.exit_code == 1
            assert "InjectedFault" in result.output
            await wait_until(lambda: restarted(host, old))
            assert "InjectedFault" in ((await host.status("echo")).last_exit or "")


# ---------------------------------------------------------------------- chaos runs


async def test_back_to_back_chaos_runs_report_only_their_own_faults(autojump_clock: Any) -> None:
    """A second run on the same runtime neither counts the first run's firings nor
    waits for their recoveries, its faults have ids of their own, and the same plan with
    the same seed replays the same decisions."""
    async with open_runtime(config=RuntimeConfig(fault_seed=1)) as runtime:
        group = await runtime.spawn_supervisor("w", max_restarts=1000, period=60.0)
        for i in range(3):
            await spawn_echo(runtime, f"a{i}", parent=group)

        async def chaos(faults: str, seed: int) -> dict[str, Any]:
            plan = ChaosPlan.from_dict(
                {"faults": faults, "target": "/w/*", "seed": seed, "duration": "2s",
                 "rate": 20, "ask_timeout": "500ms", "settle": "30s"}
            )  # fmt: skip
            began = trio.current_time()
            report = await ChaosRun(runtime, plan, message=lambda path, seq: seq).run()
            data = report.as_dict()
            data["took"] = trio.current_time() - began
            return data

        first = await chaos("crash:0.2,drop:0.1", seed=42)
        assert first["faults"]["firings_by_kind"]["crash"] >= 5
        assert first["recovery"]["count"] >= 5
        calm = await chaos("latency:1ms", seed=7)
        assert set(calm["faults"]["firings_by_kind"]) == {"latency"}
        assert calm["faults"]["firings_by_kind"]["latency"] == calm["asks"]["sent"] == 120
        assert calm["recovery"]["count"] == 0
        assert calm["recovery"]["unrecovered"] == 0
        assert calm["restarts"]["total"] == 0
        assert calm["took"] < 2.5  # it did not wait out `settle` for the first run's crashes
        again = await chaos("crash:0.2,drop:0.1", seed=42)
        for key in ("asks", "messages", "restarts", "dead_letters"):
            assert again[key] == first[key], key
        assert again["faults"]["firings_by_kind"] == first["faults"]["firings_by_kind"]
        ids = [record.id for record in runtime.faults.list(include_finished=True)]
        assert ids == ["chaos1-1", "chaos1-2", "chaos2-1", "chaos3-1", "chaos3-2"]
        assert runtime.faults.list() == []


async def test_an_ask_handled_after_its_timeout_is_answered_late_not_lost(
    autojump_clock: Any,
) -> None:
    async with open_runtime(config=RuntimeConfig(fault_seed=2)) as runtime:
        await spawn_echo(runtime, "a")
        runtime.faults.inject("/a", "latency:300ms")
        with pytest.raises(AskTimeout):
            await runtime.router.ask("/a", "slow", timeout=0.1, correlation_id="c-1")
        await trio.sleep(0.5)  # the handler finishes, with nobody waiting
        assert [e.correlation_id for e in runtime.router.late_replies] == ["c-1"]
        assert runtime.router.late["/a"] == 1
        await spawn_echo(runtime, "b")  # failed by error_rate after the ask gave up: late too
        runtime.faults.inject("/b", "latency:300ms")
        runtime.faults.inject("/b", "error_rate:1")
        with pytest.raises(AskTimeout):
            await runtime.router.ask("/b", "slow", timeout=0.1, correlation_id="c-2")
        await trio.sleep(0.5)
        assert [r.correlation_id for r in runtime.router.late_replies] == ["c-1", "c-2"]
        runtime.faults.clear(target="/b")
        assert list(runtime.dead_letters()) == []  # handled, so not a dead letter

        plan = ChaosPlan.from_dict(
            {"faults": "latency:300ms", "target": "/a", "duration": "1s", "rate": 10,
             "ask_timeout": "100ms", "settle": "5s"}
        )  # fmt: skip
        report = (await ChaosRun(runtime, plan, message=lambda path, seq: seq).run()).as_dict()
        messages = report["messages"]
        # One at a time, 300 ms each: the one in the handler is answered late; those
        # queued behind it expire in the mailbox (dead letters). None is lost.
        assert messages["answered_late"] >= 1
        assert messages["dead_lettered"] >= 1
        assert report["asks"]["timed_out"] == messages["answered_late"] + messages["dead_lettered"]
        assert messages["unaccounted"] == 0
        assert "| timed out but handled (answered late) |" in ChaosReport(report).markdown()

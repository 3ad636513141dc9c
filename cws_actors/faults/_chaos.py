"""Chaos runs: inject a seeded schedule of faults into a set of actors for a while, drive
them with numbered asks meanwhile, and report what happened.

Public names (exported by :mod:`cws_actors`): :class:`ChaosPlan`, :class:`ChaosRun`,
:class:`ChaosReport`, :class:`ChaosPlanError`.

A run:

1. resolves ``plan.target`` (a path or glob, as for faults) to the actors there now;
2. injects each of ``plan.faults`` on that target, seeded by ``plan.seed`` (the same
   seed and plan make the same fault decisions for the same message sequence);
3. for ``plan.duration`` seconds sends each target ``plan.rate`` asks a second, each
   with a sequence number (in its correlation id ``chaos:SEQ``), and samples the actor
   tree every ``plan.sample_interval`` seconds (restarts, readiness, quarantines) and,
   if given, the ``health`` callable's latency;
4. clears its faults, waits up to ``plan.settle`` seconds for every target to be ready
   again, and builds a :class:`ChaosReport`.

Every ask ends one way: ``ok``; ``failed`` (the handler raised, an injected crash or
error included); ``refused`` (the router said no: not ready, rate limited, restarting...,
by reason); or ``timed_out``. A timed-out ask whose message is among the dead letters
(a ``drop`` fault, an expiry) is accounted for, and so is one that its actor handled
after the asker gave up (``answered_late``, from the router's late replies); any other
is *unaccounted*: sent, never answered, with no trace. That is the figure a trustworthy
runtime keeps at zero outside hangs (a hung handler swallows its message until liveness
restarts it).

Recovery time is measured from each disruptive firing (crash, hang, kill, memory_hog)
to the first sample that shows the actor restarted and ready again, so its resolution is
``sample_interval``.
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from .._core._envelope import Source
from .._core._exceptions import ActorError, AskTimeout, DeadlineExceeded, HandlerFailed
from ._exceptions import ChaosPlanError
from ._spec import FaultKind, FaultSpec, format_duration, parse_duration, parse_fault_list
from ._targets import compile_target

_DISRUPTIVE = frozenset({FaultKind.CRASH, FaultKind.HANG, FaultKind.KILL, FaultKind.MEMORY_HOG})


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ChaosPlanError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        raise ChaosPlanError(f"{name} must be a finite number above 0, got {value!r}")
    return float(value)


def _duration(name: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ChaosPlanError(f"{name}: {exc}") from None
    return _positive(name, value)


@attrs.frozen
class ChaosPlan:
    """What a chaos run does. Build it directly or with :meth:`from_dict` (the HTTP
    API's body: durations as seconds or text such as ``"60s"``, faults as the compact
    text ``"crash:0.05,latency:10ms..50ms"`` or a list of specs)."""

    faults: tuple[FaultSpec, ...]
    target: str = "/plugins/*"
    duration: float = 60.0
    seed: int = 0
    rate: float = 20.0
    """Asks a second to each target."""
    ask_timeout: float = 2.0
    settle: float = 10.0
    """After the faults are cleared, how long to wait for the targets to be ready."""
    sample_interval: float = 0.01

    def __attrs_post_init__(self) -> None:
        if not self.faults:
            raise ChaosPlanError("a chaos plan needs at least one fault, such as 'crash:0.05'")
        compile_target(self.target)  # raises FaultTargetError (a ValueError) when bad
        for name in ("duration", "rate", "ask_timeout", "sample_interval"):
            _positive(name, getattr(self, name))
        _positive("settle", self.settle, allow_zero=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ChaosPlanError(f"seed must be a whole number, got {self.seed!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChaosPlan:
        """Raises:
        ChaosPlanError: an unknown key or a bad value (FaultSpecError for a bad fault).
        """
        if not isinstance(data, Mapping):
            raise ChaosPlanError(f"a chaos plan is a JSON object, got {type(data).__name__}")
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ChaosPlanError(f"unknown chaos plan keys {unknown}; expected {sorted(known)}")
        if "faults" not in data:
            raise ChaosPlanError("a chaos plan needs 'faults', such as 'crash:0.05,kill:every 10s'")
        raw = data["faults"]
        if isinstance(raw, str):
            faults = tuple(parse_fault_list(raw))
        elif isinstance(raw, list):
            faults = tuple(
                FaultSpec.parse(f) if isinstance(f, str) else FaultSpec.from_dict(f) for f in raw
            )
        else:
            raise ChaosPlanError(f"faults must be text or a list of specs, got {raw!r}")
        values: dict[str, Any] = {"faults": faults}
        for name in ("duration", "ask_timeout", "settle", "sample_interval"):
            if name in data:
                values[name] = _duration(name, data[name]) if data[name] != 0 else 0.0
        for name in ("target", "seed", "rate"):
            if name in data:
                values[name] = data[name]
        if "target" in values and not isinstance(values["target"], str):
            raise ChaosPlanError(f"target must be a path or glob, got {values['target']!r}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "faults": ",".join(str(f) for f in self.faults),
            "target": self.target,
            "duration": self.duration,
            "seed": self.seed,
            "rate": self.rate,
            "ask_timeout": self.ask_timeout,
            "settle": self.settle,
        }


def _percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {"count": len(ordered), "p50": at(0.50), "p99": at(0.99), "max": ordered[-1]}


@attrs.frozen
class ChaosReport:
    """What a chaos run saw, as plain data (``data``) and markdown (``markdown()``)."""

    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return self.data

    def markdown(self) -> str:
        d = self.data
        plan = d["plan"]

        def secs(value: float | None) -> str:
            if value is None:
                return "-"
            return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.2f}s"

        lines = [
            f"# Chaos run, seed {plan['seed']}",
            "",
            f"`{plan['faults']}` on `{plan['target']}` for {format_duration(plan['duration'])}, "
            f"{plan['rate']:g} asks/s per target; {len(d['targets'])} targets: "
            + ", ".join(f"`{t}`" for t in d["targets"]),
            "",
            "| measure | value |",
            "|---|---|",
        ]
        firings = d["faults"]["firings_by_kind"]
        asks = d["asks"]
        rec = d["recovery"]
        health = d["health_probe_latency"]
        rows = [
            ("faults fired", f"{d['faults']['fired']} ("
             + ", ".join(f"{k} {v}" for k, v in sorted(firings.items())) + ")"),
            ("restarts", f"{d['restarts']['total']}"),
            ("recovery, fault to ready: p50 / p99 / max",
             f"{secs(rec['p50'])} / {secs(rec['p99'])} / {secs(rec['max'])} ({rec['count']}"
             f" recoveries, {rec['unrecovered']} not recovered)"),
            ("asks sent", f"{asks['sent']}"),
            ("asks ok / failed / timed out", f"{asks['ok']} / {asks['failed']} / "
             f"{asks['timed_out']}"),
            ("asks refused", f"{sum(asks['refused'].values())}" + (
                " (" + ", ".join(f"{k} {v}" for k, v in sorted(asks["refused"].items())) + ")"
                if asks["refused"] else "")),
            ("timed out but handled (answered late)", f"{d['messages']['answered_late']}"),
            ("messages lost: dead-lettered / unaccounted",
             f"{d['messages']['dead_lettered']} / {d['messages']['unaccounted']}"),
            ("dead letters by reason", ", ".join(
                f"{k} {v}" for k, v in sorted(d["dead_letters"].items())) or "none"),
            ("quarantines", ", ".join(d["quarantines"]) or "none"),
            ("not ready at the end", ", ".join(d["not_ready_at_end"]) or "none"),
            ("health-probe latency p50 / p99", f"{secs(health['p50'])} / "
             f"{secs(health['p99'])} ({health['count']} probes, {health.get('via', '-')})"),
        ]  # fmt: skip
        lines += [f"| {name} | {value} |" for name, value in rows]
        return "\n".join(lines) + "\n"


Message = Callable[[str, int], Any]


def _status_call(path: str, seq: int) -> Any:
    from .._isolation._launch import PluginCall

    return PluginCall("status", payload={"chaos_seq": seq})


@attrs.define(eq=False)
class ChaosRun:
    """One chaos run on ``runtime``: ``await run.run()`` returns the report.

    Args:
        message: the ask sent to a target, from its path and the sequence number; the
            default is a plugin status call (every plugin answers it).
        health: an async callable sampled every 100 ms for its latency (the daemon's
            health check); None: not measured.
    """

    runtime: Any
    plan: ChaosPlan
    message: Message = _status_call
    health: Callable[[], Awaitable[Any]] | None = None
    state: str = attrs.field(default="pending", init=False)
    """pending, running, settling, done, failed or cancelled."""
    error: str | None = attrs.field(default=None, init=False)
    report: ChaosReport | None = attrs.field(default=None, init=False)
    _targets: list[str] = attrs.field(factory=list, init=False)
    _outcomes: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _refused: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _timed_out: set[int] = attrs.field(factory=set, init=False)
    _sent: int = attrs.field(default=0, init=False)
    _started: float | None = attrs.field(default=None, init=False)
    _fault_ids: list[str] = attrs.field(factory=list, init=False)
    _recoveries: list[float] = attrs.field(factory=list, init=False)
    _pending: dict[str, list[tuple[float, int]]] = attrs.field(factory=dict, init=False)
    _seen_firings: set[tuple[str, int]] = attrs.field(factory=set, init=False)
    _quarantines: set[str] = attrs.field(factory=set, init=False)
    _health: list[float] = attrs.field(factory=list, init=False)
    _cancel: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)

    def progress(self) -> dict[str, Any]:
        """Where the run is: for a progress bar."""
        elapsed = 0.0 if self._started is None else trio.current_time() - self._started
        return {
            "state": self.state,
            "elapsed": min(elapsed, self.plan.duration),
            "duration": self.plan.duration,
            "sent": self._sent,
            **{k: self._outcomes[k] for k in ("ok", "failed", "refused", "timed_out")},
            "firings": len(self._seen_firings),
            "error": self.error,
        }

    def cancel(self) -> None:
        """End the run early (its faults are cleared and a report is still built)."""
        self._cancel.cancel()

    def _snapshots(self) -> dict[str, Any]:
        tree = self.runtime.actors()
        found = {}
        for path in self._targets:
            try:
                found[path] = tree.find(path)
            except KeyError:
                continue
        return found

    def _drained(self, snapshots: Mapping[str, Any]) -> bool:
        """No running target holds a message it has not finished with (so that every
        expiry is in the dead letters and every late answer recorded before the report);
        a quarantined one keeps what it holds until it is cleared."""
        cells = self.runtime.router.cells
        return all(
            cells[path].in_flight == 0
            for path, snap in snapshots.items()
            if path in cells and snap.state != "quarantined"
        )

    def _reaches(self, path: str, spec: FaultSpec) -> bool:
        try:
            self.runtime.faults.check_process_target(path, spec.kind)
        except ValueError:
            return False
        return True

    async def run(self) -> ChaosReport:
        """Raises:
        ChaosPlanError: no actor matches the target, or a process fault (kill, pause,
            memory_hog) can reach none of the targets (it skips those that run in the
            daemon's process and applies to the others).
        """
        matches = compile_target(self.plan.target)
        self._targets = sorted(p for p in self.runtime.router.cells if matches(p))
        if not self._targets:
            raise ChaosPlanError(f"no actor matches {self.plan.target!r}")
        for spec in self.plan.faults:
            if spec.kind.process_level and not any(
                self._reaches(path, spec) for path in self._targets
            ):
                raise ChaosPlanError(
                    f"{spec}: none of the targets ({', '.join(self._targets)}) can take it;"
                    f" {spec.kind.value} needs a subprocess plugin"
                    + (" with a memory limit" if spec.kind.value == "memory_hog" else "")
                )
        self.state = "running"
        faults = self.runtime.faults
        started_wall = time.time()
        self._started = start = trio.current_time()
        before = {p: s.restarts for p, s in self._snapshots().items()}
        letters_before = {id(d) for d in self.runtime.dead_letters()}
        late_before = {r.envelope_id for r in self.runtime.router.late_replies}
        # Ids of their own (chaos1-1, chaos2-1... so that the faults of earlier runs are
        # not mistaken for this one's), random sources named by position (chaos-1...)
        # so that the same seed replays the same decisions.
        taken = {record.id.partition("-")[0] for record in faults.list(include_finished=True)}
        run = next(f"chaos{k}" for k in itertools.count(1) if f"chaos{k}" not in taken)
        try:
            for n, spec in enumerate(self.plan.faults, 1):
                record = faults.inject(self.plan.target, spec, id=f"{run}-{n}",
                                       seed=self.plan.seed, stream=f"chaos-{n}")  # fmt: skip
                self._fault_ids.append(record.id)
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sample, nursery.cancel_scope)
                    if self.health is not None:
                        nursery.start_soon(self._probe_health)
                    async with trio.open_nursery() as load:
                        for path in self._targets:
                            load.start_soon(self._drive, path, start)
                    nursery.cancel_scope.cancel()  # the sampler and the health probe
        except BaseException:
            self.state = "failed"
            raise
        finally:
            records = []
            for fault_id in self._fault_ids:
                try:
                    records.append(faults.get(fault_id))
                    faults.clear(fault_id)
                except LookupError:
                    pass
        cancelled = self._cancel.cancelled_caught
        self.state = "settling"
        with trio.move_on_after(self.plan.settle):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sample, nursery.cancel_scope, True)
        after = self._snapshots()
        elapsed = trio.current_time() - start
        letters = [d for d in self.runtime.dead_letters() if id(d) not in letters_before]
        lettered = {
            int(d.envelope.correlation_id.partition(":")[2])
            for d in letters
            if (d.envelope.correlation_id or "").startswith("chaos:")
        }
        late = {
            int(r.correlation_id.partition(":")[2])
            for r in self.runtime.router.late_replies
            if r.envelope_id not in late_before and (r.correlation_id or "").startswith("chaos:")
        }
        firings = [
            f for f in self.runtime.faults.firings() if (f.fault_id, f.number) in self._seen_firings
        ]
        restarts = {p: after[p].restarts - before.get(p, 0) for p in after}
        recovery = _percentiles(self._recoveries)
        recovery["unrecovered"] = sum(len(v) for v in self._pending.values())
        health = _percentiles(self._health)
        health["via"] = "in-process" if self.health is not None else None
        self.report = ChaosReport({
            "plan": self.plan.as_dict(),
            "started": started_wall,
            "elapsed": elapsed,
            "cancelled": cancelled,
            "targets": self._targets,
            "faults": {
                "injected": [r.as_dict() for r in records],
                "fired": len(firings),
                "firings_by_kind": dict(collections.Counter(f.kind.value for f in firings)),
            },
            "restarts": {"total": sum(restarts.values()), "by_actor": restarts},
            "recovery": recovery,
            "asks": {
                "sent": self._sent,
                "ok": self._outcomes["ok"],
                "failed": self._outcomes["failed"],
                "timed_out": self._outcomes["timed_out"],
                "refused": dict(self._refused),
            },
            "messages": {
                "sent": self._sent,
                "answered": self._sent - self._outcomes["timed_out"],
                "dead_lettered": len(self._timed_out & lettered),
                "answered_late": len((self._timed_out - lettered) & late),
                "unaccounted": len(self._timed_out - lettered - late),
            },
            "dead_letters": dict(collections.Counter(d.reason for d in letters)),
            "quarantines": sorted(self._quarantines),
            "not_ready_at_end": sorted(p for p, s in after.items() if not s.ready),
            "health_probe_latency": health,
        })  # fmt: skip
        self.state = "cancelled" if cancelled else "done"
        return self.report

    async def _drive(self, path: str, start: float) -> None:
        """``rate x duration`` asks (rounded up), the k-th at ``start + k / rate``."""
        count = math.ceil(self.plan.duration * self.plan.rate - 1e-9)
        async with trio.open_nursery() as asks:
            for k in range(count):
                await trio.sleep_until(start + k / self.plan.rate)
                self._sent += 1
                asks.start_soon(self._ask, path, self._sent)
            await trio.sleep_until(start + self.plan.duration)

    async def _ask(self, path: str, seq: int) -> None:
        try:
            await self.runtime.router.ask(
                path, self.message(path, seq), timeout=self.plan.ask_timeout,
                source=Source.ACTOR, correlation_id=f"chaos:{seq}",
            )  # fmt: skip
        except (AskTimeout, DeadlineExceeded):
            self._outcomes["timed_out"] += 1
            self._timed_out.add(seq)
        except HandlerFailed:
            self._outcomes["failed"] += 1
        except ActorError as exc:
            self._outcomes["refused"] += 1
            self._refused[type(exc).__name__] += 1
        except Exception:  # noqa: BLE001 - any other failure of the handler is a failure
            self._outcomes["failed"] += 1
        else:
            self._outcomes["ok"] += 1

    async def _probe_health(self) -> None:
        assert self.health is not None
        while True:
            began = time.perf_counter()
            try:
                await self.health()
            except Exception:  # noqa: BLE001 - a failing probe still took its time
                pass
            self._health.append(time.perf_counter() - began)
            await trio.sleep(0.1)

    async def _sample(self, scope: trio.CancelScope, settling: bool = False) -> None:
        """Track restarts and readiness; when settling, end once every target that is
        not quarantined is ready and no recovery is pending."""
        last = {p: s.restarts for p, s in self._snapshots().items()}
        while True:
            now = trio.current_time()
            for firing in self.runtime.faults.firings():
                key = (firing.fault_id, firing.number)
                if (
                    firing.fault_id in self._fault_ids
                    and firing.at >= self._started
                    and key not in self._seen_firings
                ):
                    self._seen_firings.add(key)
                    if firing.kind in _DISRUPTIVE:
                        self._pending.setdefault(firing.path, []).append(
                            (firing.at, last.get(firing.path, 0))
                        )
            snapshots = self._snapshots()
            for path, snap in snapshots.items():
                if snap.state == "quarantined":
                    self._quarantines.add(path)
                pending = self._pending.get(path)
                if pending and snap.ready:
                    still = [(at, r) for at, r in pending if snap.restarts <= r]
                    self._recoveries += [now - at for at, r in pending if snap.restarts > r]
                    self._pending[path] = still
                last[path] = snap.restarts
            if settling and all(
                s.ready or s.state == "quarantined" for s in snapshots.values()
            ) and not any(self._pending.values()) and self._drained(snapshots):  # fmt: skip
                scope.cancel()
                return
            await trio.sleep(self.plan.sample_interval)

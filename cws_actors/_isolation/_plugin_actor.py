"""A plugin as a supervised actor, run in the daemon (in_process) or in its own Python
process (subprocess), behind one driver interface."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import trio

from .._core._actor import Actor
from .._core._bus import Event, topic_matches
from .._core._exceptions import PluginCrashed
from .._plugins._model import (
    APIEndpointSpec,
    CLICommandSpec,
    HealthStatus,
    Isolation,
)
from ..faults._spec import FaultKind
from ._drivers import SubprocessDriver
from ._launch import PluginCall, PluginCounters, PluginDriver, PluginLaunch, SwapLaunch

_PROCESS_FAULTS = frozenset({FaultKind.KILL, FaultKind.PAUSE})
_PROCESS_FAULTS_LIMITED = _PROCESS_FAULTS | {FaultKind.MEMORY_HOG}


class PluginActor(Actor):
    """The actor at ``/plugins/<name>``: it runs a plugin through its driver."""

    background_tasks = True

    def __init__(
        self,
        launch: PluginLaunch,
        make_driver: Callable[[PluginLaunch], PluginDriver],
        counters: PluginCounters,
    ) -> None:
        self.launch = launch
        self.make_driver = make_driver
        self.counters = counters
        self.driver: PluginDriver | None = None
        concurrency = launch.metadata.concurrency
        self.max_concurrency = concurrency.max
        self.concurrency_groups = dict(concurrency.groups)
        capabilities = launch.capabilities
        specs: list[CLICommandSpec | APIEndpointSpec] = [
            *capabilities.cli_commands,
            *capabilities.api_endpoints,
        ]
        self._groups = {spec.handler: spec.group for spec in specs if spec.group is not None}
        # Calls in flight per driver: a hot swap lets the old version finish its own.
        self._active: dict[int, int] = {}
        self._drained = trio.lowlevel.ParkingLot()

    def events_in_order(self, event: Event) -> bool:
        specs = self.launch.capabilities.event_handlers
        matching = [spec for spec in specs if topic_matches(spec.event_type, event.topic)]
        return not matching or any(spec.ordered for spec in matching)

    def concurrency_group(self, message: Any) -> str | None:
        if isinstance(message, PluginCall):
            return self._groups.get(message.handler)
        return None

    def subscriptions(self) -> tuple[str, ...]:
        return tuple(
            dict.fromkeys(spec.event_type for spec in self.launch.capabilities.event_handlers)
        )

    async def on_start(self) -> None:
        self.driver = self.make_driver(self.launch)
        with _start_deadline(self.launch):
            await self.driver.open(self.nursery)

    async def on_stop(self) -> None:
        if self.driver is not None:
            await self.driver.close()

    async def receive(self, message: Any) -> Any:
        if isinstance(message, SwapLaunch):
            return await self._swap(message.launch)
        if not isinstance(message, PluginCall):
            raise TypeError(f"a plugin actor takes PluginCall messages, got {message!r}")
        driver = self.driver
        assert driver is not None
        self.counters.calls += 1
        key = id(driver)
        self._active[key] = self._active.get(key, 0) + 1
        try:
            if message.kind == "status":
                return await driver.status()
            return await driver.call(message.handler, message.payload)
        except Exception as exc:
            self.counters.errors += 1
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]
                self._drained.unpark_all()

    async def _swap(self, launch: PluginLaunch) -> str | None:
        """Hot reload: messages arriving meanwhile wait in the mailbox, then reach the new
        version, so none is lost and the actor's path never changes."""
        new = self.make_driver(launch)
        try:
            # The deadline is the actor's own, so that it always answers the host (whose
            # ask waits longer than this and the close below together).
            with _start_deadline(launch):
                await new.open(self.nursery)
                health = await new.health()
            if health.status is HealthStatus.CRITICAL:
                raise RuntimeError(f"its health is critical: {health.message}")
        except Exception as exc:  # noqa: BLE001 - reported to the host, which rolls back
            with trio.CancelScope(shield=True), trio.move_on_after(launch.stop_budget):
                try:
                    await new.close()
                except Exception:  # noqa: BLE001 - the failure above is the one to report
                    pass
            return f"{type(exc).__name__}: {exc}"
        old, self.driver, self.launch = self.driver, new, launch
        if old is not None:
            # New calls go to the new version; the old one finishes the calls it has
            # (with max_concurrency above 1 there may be some), then stops.
            with trio.move_on_after(launch.stop_budget):
                while self._active.get(id(old)):
                    await self._drained.park()
            await old.close()
        return None

    async def _dispatch_event(self, event: Event) -> None:
        assert self.driver is not None
        self.counters.events += 1
        for spec in self.launch.capabilities.event_handlers:
            if topic_matches(spec.event_type, event.topic):
                await self.driver.call(spec.handler, event)

    async def liveness(self) -> bool:
        assert self.driver is not None
        return (await self.driver.health()).status is not HealthStatus.CRITICAL

    # The process faults (cws_actors.faults._injector.FaultableProcess) of a subprocess plugin.

    @property
    def process_fault_kinds(self) -> frozenset[FaultKind]:
        """kill and pause for a subprocess plugin, and memory_hog if it has a memory
        limit (without one the hog would take the machine's memory); none in-process."""
        metadata = self.launch.metadata
        if metadata.isolation is not Isolation.SUBPROCESS:
            return frozenset()
        return _PROCESS_FAULTS_LIMITED if metadata.limits.memory_mb else _PROCESS_FAULTS

    def fault_signal(self, signum: int) -> bool:
        driver = self.driver
        return isinstance(driver, SubprocessDriver) and driver.send_fault_signal(signum)

    async def fault_memory_hog(self) -> None:
        driver = self.driver
        if isinstance(driver, SubprocessDriver):
            await driver.memory_hog()

    async def readiness(self) -> bool:
        assert self.driver is not None
        return await self.driver.ready()


@contextlib.contextmanager
def _start_deadline(launch: PluginLaunch) -> Iterator[None]:
    """Fail a start that takes longer than ``launch.start_timeout`` as a crash, so that a
    plugin stuck in its handshake or ``initialize`` never holds the supervisor (and the
    host) waiting."""
    try:
        with trio.fail_after(launch.start_timeout):
            yield
    except trio.TooSlowError:
        raise PluginCrashed(
            f"plugin {launch.metadata.name!r} did not start within {launch.start_timeout:g}s"
        ) from None

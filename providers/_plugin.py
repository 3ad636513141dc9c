"""A cloud provider as a plugin of the daemon, written against ``cws_actors``' public
names only, like any third party's plugin.

It declares the ``cloud-provider`` service type; the daemon's ``/api/v1/instances``
routes and ``cws instances`` call its service handlers (``list_instances``,
``get_instance``, ``start_instance``, ``stop_instance``) through the router. After each
operation it publishes ``instance.started`` / ``instance.stopped`` (and
``instance.launched`` / ``instance.terminated`` when polling sees them) carrying the
InstanceInfo. While its cloud is down (the circuit breaker is open) ``ready()`` says no,
so its routes answer 503 and its events become dead letters; it comes back by itself.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import itertools
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

import trio

from cws_actors import (
    Capabilities,
    Concurrency,
    Endpoint,
    Health,
    HealthStatus,
    Isolation,
    NetworkMode,
    PathRule,
    Plugin,
    PluginContext,
    PluginMetadata,
    Sandbox,
)

from ._base import (
    BreakerState,
    CloudProvider,
    InstanceInfo,
    InstanceState,
    ProviderError,
    ProviderNotConfigured,
)

SERVICE_TYPE = "cloud-provider"

_EVENTS = {
    InstanceState.RUNNING: "instance.started",
    InstanceState.STOPPED: "instance.stopped",
    InstanceState.TERMINATED: "instance.terminated",
}


PROVIDER_CONCURRENCY = 16
"""Calls a cloud provider plugin handles at once (its ``[concurrency] max``; the
operator's ``[plugins.overrides.NAME.concurrency]`` wins)."""


def provider_metadata(
    name: str, description: str, *, credentials: Iterable[str | None]
) -> PluginMetadata:
    """The metadata of the cloud-provider plugin ``name``: a process of its own, up to
    ``PROVIDER_CONCURRENCY`` calls at once, and a sandbox that reads ``credentials``
    (the absolute paths among them: files or folders) and reaches HTTPS."""
    return PluginMetadata(
        name=name,
        version=importlib.metadata.version("cws-actors"),
        description=description,
        author="cws-actors developers",
        isolation=Isolation.SUBPROCESS,
        # Calls of different instances run side by side: a `start --wait` polling its
        # operation never delays a list (the SDK's calls run in worker threads).
        concurrency=Concurrency(max=PROVIDER_CONCURRENCY),
        # Its sandbox: HTTPS to the cloud's API (Landlock filters ports, not hosts) and
        # its credentials files, read. A test pointing it at a local fake overrides the
        # network ([plugins.overrides.NAME] sandbox = { network = "loopback" }).
        sandbox=Sandbox(
            filesystem=[PathRule(path) for path in credentials if path and os.path.isabs(path)],
            network=NetworkMode.LIST,
            endpoints=[Endpoint(None, 443)],
            declared=True,
        ),
    )


class ProviderPlugin(Plugin):
    """Subclasses set ``metadata`` and implement ``make_provider``."""

    capabilities: ClassVar[Capabilities] = Capabilities(service_types=(SERVICE_TYPE,))
    provider: CloudProvider | None = None
    not_configured: str | None = None
    """Why the provider could not be built from the config. The plugin then stays loaded,
    health WARNING, and answers every call with ProviderNotConfigured (HTTP 503 naming
    the missing setting) until it is configured and reloaded."""

    async def make_provider(self, config: Mapping[str, Any]) -> CloudProvider:
        raise NotImplementedError

    async def initialize(self, ctx: PluginContext, config: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.config = config
        self.seen: dict[str, InstanceState] = {}
        # Lists and polls run side by side (PROVIDER_CONCURRENCY): each takes a ticket
        # before it asks the cloud, and only a list newer than the last one compared
        # publishes changes, so an older answer never undoes a newer one.
        self._tickets = itertools.count()
        self._compared = -1
        self._comparing = trio.Lock()

    async def start(self, ctx: PluginContext) -> None:
        try:
            self.provider = await self.make_provider(self.config)
        except ProviderNotConfigured as exc:
            # Not a crash: restarting would not configure it. It waits, not ready, for
            # the operator to set the missing value and reload it.
            self.not_configured = str(exc)

    async def stop(self, ctx: PluginContext) -> None:
        if self.provider is not None:
            await self.provider.close()

    async def ready(self) -> bool:
        if self.not_configured is not None:
            return True  # to answer why it cannot serve, rather than a bare 503
        breaker = getattr(self.provider, "breaker", None)
        return self.provider is not None and (breaker is None or breaker.allows_a_call())

    async def health(self) -> Health:
        if self.not_configured is not None:
            return Health(HealthStatus.WARNING, f"not configured: {self.not_configured}")
        if self.provider is None:
            return Health(HealthStatus.CRITICAL, "the provider client did not start")
        breaker = getattr(self.provider, "breaker", None)
        if breaker is not None and breaker.state is not BreakerState.CLOSED:
            # Warning, not critical: a cloud outage is no reason to restart the plugin.
            return Health(HealthStatus.WARNING, f"circuit {breaker.state.value}")
        return Health()

    # ------------------------------------------------------------------ service handlers

    async def list_instances(self, payload: Any) -> Any:
        async def work() -> Any:
            filters = (payload or {}).get("filters")
            ticket = next(self._tickets)
            instances = await self._provider().list_instances(filters=filters)
            await self._publish_changes(instances, ticket=ticket)
            return [info.as_dict() for info in instances]

        return await _answer(work)

    async def get_instance(self, payload: Any) -> Any:
        async def work() -> Any:
            return (await self._provider().get_instance_info(_id(payload))).as_dict()

        return await _answer(work)

    async def start_instance(self, payload: Any) -> Any:
        async def work() -> Any:
            wait = bool(payload.get("wait"))
            info = await self._provider().start_instance(_id(payload), wait=wait)
            await self._publish("instance.started", info)
            return info.as_dict()

        return await _answer(work)

    async def stop_instance(self, payload: Any) -> Any:
        async def work() -> Any:
            info = await self._provider().stop_instance(
                _id(payload),
                wait=bool(payload.get("wait")),
                hibernate=bool(payload.get("hibernate")),
            )
            await self._publish("instance.stopped", info)
            return info.as_dict()

        return await _answer(work)

    async def poll(self, payload: Any = None) -> Any:
        """List every instance and publish the state changes seen since the last poll;
        return how many. The daemon calls it every ``poll_interval`` seconds."""

        async def work() -> Any:
            ticket = next(self._tickets)
            instances = await self._provider().list_instances()
            return await self._publish_changes(instances, ticket=ticket)

        return await _answer(work)

    # ------------------------------------------------------------------ helpers

    def _provider(self) -> CloudProvider:
        if self.not_configured is not None:
            raise ProviderNotConfigured(self.not_configured)
        if self.provider is None:
            raise ProviderError("the provider client is not running")
        return self.provider

    async def _publish(self, topic: str, info: InstanceInfo) -> None:
        self.seen[info.id] = info.state
        await self.ctx.publish(topic, _event(info))

    async def _publish_changes(
        self,
        instances: list[InstanceInfo],
        *,
        ticket: int,
    ) -> int:
        async with self._comparing:  # one comparison at a time, whole
            if ticket < self._compared:
                return 0  # a newer list was compared meanwhile: this answer is stale
            self._compared = ticket
            return await self._compare(instances)

    async def _compare(self, instances: list[InstanceInfo]) -> int:
        before = dict(self.seen)
        published = 0
        for info in instances:
            previous = before.get(info.id)
            self.seen[info.id] = info.state
            if previous == info.state:
                continue
            if previous is None and info.state in (InstanceState.PENDING, InstanceState.RUNNING):
                topic: str | None = "instance.launched" if before else None
            else:
                topic = _EVENTS.get(info.state)
            if topic is not None:
                await self.ctx.publish(topic, _event(info))
                published += 1
        return published


def _event(info: InstanceInfo) -> dict[str, Any]:
    """An event's payload: the InstanceInfo, and ``at``, when the plugin saw the change
    (UTC, ISO 8601), which the analytics plugin counts usage hours from."""
    at = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    return {**info.as_dict(), "at": at}


async def _answer(work: Callable[[], Awaitable[Any]]) -> Any:
    """A provider error is an answer, not a crash: an outage must not restart the plugin
    (that would reset its circuit breaker). The daemon maps ``{"error": ...}`` to HTTP."""
    try:
        return await work()
    except ProviderError as exc:
        return {"error": {"type": type(exc).__name__, "message": str(exc)}}


def _id(payload: Any) -> str:
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
        raise ProviderError("expected a payload with an instance 'id' string")
    return str(payload["id"])

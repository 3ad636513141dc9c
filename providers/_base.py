"""What every cloud provider offers: the ``CloudProvider`` protocol, ``InstanceInfo``,
one error tree, and the resilience every provider call goes through (deadline,
retries with full-jitter backoff on throttling and 5xx, a circuit breaker).

Errors::

    ProviderError
    ├── InstanceNotFound       the instance id does not exist (404)
    ├── ProviderAuthError      credentials missing, wrong or not allowed (401/403)
    ├── ProviderThrottled      the cloud said slow down, and retries ran out
    ├── ProviderUnavailable    5xx, a refused connection or a timeout, retries ran out
    │   └── CircuitOpen        recent calls failed: not trying until the breaker half-opens
    ├── ProviderRequestError   the request itself was wrong (bad id format, bad filter)
    └── ProviderNotConfigured  the plugin lacks a setting it cannot guess (GCP's project)
"""

from __future__ import annotations

import datetime
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import attrs
import trio

from cws_actors import Backoff

T = TypeVar("T")

_log = logging.getLogger("providers")
"""Each circuit breaker's change of state, at WARNING. (In a subprocess plugin, the
record reaches the daemon's log through the plugin's stderr, as ``cws.plugin.<name>``.)"""


class InstanceState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    TERMINATED = "terminated"
    UNKNOWN = "unknown"


@attrs.frozen
class InstanceInfo:
    """One instance, normalized across providers."""

    id: str
    name: str
    type: str
    region: str
    zone: str
    state: InstanceState
    raw_state: str
    """The provider's own word for the state (``shutting-down``, ``TERMINATED``...)."""
    launch_time: datetime.datetime | None
    """Timezone-aware."""
    provider: str
    tags: Mapping[str, str] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape events and the API carry."""
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "region": self.region,
            "zone": self.zone,
            "state": self.state.value,
            "raw_state": self.raw_state,
            "launch_time": self.launch_time.isoformat() if self.launch_time else None,
            "provider": self.provider,
            "tags": dict(self.tags),
        }


class ProviderError(Exception):
    """Base of every provider error; no botocore or google.api_core error leaks."""


class InstanceNotFound(ProviderError, LookupError):
    """The instance does not exist (or is not visible to these credentials)."""


class ProviderAuthError(ProviderError):
    """The credentials are missing, wrong, or not allowed to do this."""


class ProviderThrottled(ProviderError):
    """The cloud kept throttling after every retry."""


class ProviderUnavailable(ProviderError):
    """The cloud answered 5xx, refused the connection or timed out, after every retry."""


class CircuitOpen(ProviderUnavailable):
    """The breaker is open after repeated failures; calls fail at once until it half-opens
    (``retry_after`` seconds)."""

    def __init__(self, provider: str, retry_after: float) -> None:
        super().__init__(
            f"{provider}: circuit open after repeated failures; retry in {retry_after:.1f}s"
        )
        self.retry_after = retry_after


class ProviderRequestError(ProviderError, ValueError):
    """The request itself was wrong (a malformed id, an unknown filter)."""


class ProviderNotConfigured(ProviderError):
    """The provider lacks a setting it cannot do without; the message names it and where
    to set it. Its plugin stays loaded but not ready until it is configured and reloaded."""


class CloudProvider(Protocol):
    """What a provider implements. Every method is async and never blocks Trio."""

    provider_name: str
    provider_version: str
    api_version: str

    async def get_instance_info(self, instance_id: str) -> InstanceInfo: ...

    async def list_instances(
        self, *, filters: Mapping[str, str | list[str]] | None = None
    ) -> list[InstanceInfo]: ...

    async def start_instance(self, instance_id: str, *, wait: bool = False) -> InstanceInfo: ...

    async def stop_instance(
        self, instance_id: str, *, wait: bool = False, hibernate: bool = False
    ) -> InstanceInfo: ...

    async def close(self) -> None: ...


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.define(eq=False)
class CircuitBreaker:
    """Closed: calls pass, and ``failure_threshold`` failures in a row open it. Open:
    calls fail at once with CircuitOpen for ``reset_timeout`` seconds. Half-open: one
    trial call passes; success closes it, failure opens it again. Only outages count
    (ProviderUnavailable, ProviderThrottled): a missing instance is not the cloud's
    failure."""

    name: str
    failure_threshold: int = 5
    reset_timeout: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    _trial: bool = False

    def allows_a_call(self) -> bool:
        """Whether a call would be let through now (closed, or open long enough to try
        once): what a provider plugin's readiness reports."""
        if self.state is BreakerState.OPEN:
            return trio.current_time() - self.opened_at >= self.reset_timeout
        return self.state is BreakerState.CLOSED or not self._trial

    def before(self) -> None:
        if self.state is BreakerState.OPEN:
            waited = trio.current_time() - self.opened_at
            if waited < self.reset_timeout:
                raise CircuitOpen(self.name, self.reset_timeout - waited)
            self._change(BreakerState.HALF_OPEN, "letting one trial call through")
            self._trial = False
        if self.state is BreakerState.HALF_OPEN:
            if self._trial:
                raise CircuitOpen(self.name, self.reset_timeout)
            self._trial = True

    def success(self) -> None:
        if self.state is not BreakerState.CLOSED:
            self._change(BreakerState.CLOSED, "the cloud answered; calls go through again")
        self.failures, self._trial = 0, False

    def failure(self) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            if self.state is BreakerState.HALF_OPEN:
                why = "the trial call failed"
            else:
                why = f"{self.failures} failures in a row"
            self._change(
                BreakerState.OPEN,
                f"{why}; calls fail at once for {self.reset_timeout:g} s",
            )
            self.opened_at = trio.current_time()
            self._trial = False

    def _change(self, state: BreakerState, why: str) -> None:
        previous, self.state = self.state, state
        if previous is not state:
            _log.warning(
                "%s: circuit breaker %s (was %s): %s",
                self.name, state.value.replace("_", "-"), previous.value.replace("_", "-"), why,
                extra={"provider": self.name, "breaker": state.value,
                       "previous": previous.value, "failures": self.failures},
            )  # fmt: skip


@attrs.frozen
class Resilience:
    """How provider calls are retried and bounded (all configurable in the plugin's
    config under ``[config.resilience]``)."""

    deadline: float = 30.0
    """Seconds for one call, retries included."""
    retries: int = 4
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    failure_threshold: int = 5
    reset_timeout: float = 30.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Resilience:
        section = dict(config.get("resilience", {}))
        known = [field.name for field in attrs.fields(cls)]
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ProviderRequestError(
                f"config 'resilience' has an unknown setting {unknown[0]!r};"
                f" expected {', '.join(known)}"
            )
        return cls(**section)

    @property
    def backoff(self) -> Backoff:
        """The delay between retries: the supervisor's backoff (full jitter, doubling from
        ``backoff_initial`` up to ``backoff_max``)."""
        return Backoff(min(self.backoff_initial, self.backoff_max), self.backoff_max)


async def call_resiliently(
    function: Callable[[], Awaitable[T]],
    *,
    breaker: CircuitBreaker,
    policy: Resilience,
    rng: random.Random | None = None,
) -> T:
    """Run ``function`` under the breaker, retrying throttling and outages with
    full-jitter backoff, all within ``policy.deadline``."""
    rng = rng or random.Random()
    attempt = 0
    try:
        with trio.fail_after(policy.deadline):
            while True:
                breaker.before()
                try:
                    result = await function()
                except CircuitOpen:
                    raise
                except (ProviderThrottled, ProviderUnavailable):
                    breaker.failure()
                    if attempt >= policy.retries or breaker.state is BreakerState.OPEN:
                        raise
                    delay = policy.backoff.delay(attempt, rng)
                    attempt += 1
                    await trio.sleep(delay)
                    continue
                except ProviderError:
                    breaker.success()  # the cloud answered; the request was wrong
                    raise
                breaker.success()
                return result
    except trio.TooSlowError:
        breaker.failure()
        raise ProviderUnavailable(f"{breaker.name}: no answer within {policy.deadline}s") from None

"""The resilience of provider calls on Trio's mock clock: retries with full-jitter
backoff, deadlines, and the circuit breaker's closed, open and half-open states."""

from __future__ import annotations

import datetime
import random

import pytest
import trio
import trio.testing

from providers import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    InstanceInfo,
    InstanceNotFound,
    InstanceState,
    ProviderThrottled,
    ProviderUnavailable,
    Resilience,
    call_resiliently,
)


class Flaky:
    """Fails ``failures`` times with ``error``, then answers; records call times."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise self.error
        return "ok"


POLICY = Resilience(deadline=30, retries=3, backoff_initial=1.0, backoff_max=4.0,
                    failure_threshold=10, reset_timeout=5.0)  # fmt: skip


async def test_throttling_is_retried_with_full_jitter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(3, ProviderThrottled("slow down"))
    breaker = CircuitBreaker("test", failure_threshold=10)
    start = trio.current_time()
    assert await call_resiliently(flaky, breaker=breaker, policy=POLICY,
                                  rng=random.Random(7)) == "ok"  # fmt: skip
    expected = random.Random(7)
    delays = [expected.uniform(0, min(4.0, 1.0 * 2**n)) for n in range(3)]
    gaps = [b - a for a, b in zip([start, *flaky.calls], flaky.calls, strict=False)][1:]
    assert gaps == pytest.approx(delays)
    assert breaker.state is BreakerState.CLOSED


async def test_retries_run_out(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(100, ProviderUnavailable("503"))
    with pytest.raises(ProviderUnavailable, match="503"):
        await call_resiliently(flaky, breaker=CircuitBreaker("t", failure_threshold=10),
                               policy=POLICY)  # fmt: skip
    assert len(flaky.calls) == POLICY.retries + 1


async def test_a_missing_instance_is_not_retried_and_not_an_outage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(100, InstanceNotFound("i-1"))
    breaker = CircuitBreaker("t", failure_threshold=1)
    with pytest.raises(InstanceNotFound):
        await call_resiliently(flaky, breaker=breaker, policy=POLICY)
    assert (len(flaky.calls), breaker.state) == (1, BreakerState.CLOSED)


async def test_the_deadline_bounds_everything(autojump_clock: trio.testing.MockClock) -> None:
    async def hangs() -> str:
        await trio.sleep_forever()
        return "never"

    start = trio.current_time()
    with pytest.raises(ProviderUnavailable, match="no answer within 2"):
        await call_resiliently(hangs, breaker=CircuitBreaker("t"),
                               policy=Resilience(deadline=2))  # fmt: skip
    assert trio.current_time() - start == pytest.approx(2)


async def test_the_breaker_opens_half_opens_and_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("aws", failure_threshold=3, reset_timeout=5.0)
    down = Flaky(100, ProviderUnavailable("down"))
    policy = Resilience(retries=0, reset_timeout=5.0)
    for _ in range(3):
        with pytest.raises(ProviderUnavailable):
            await call_resiliently(down, breaker=breaker, policy=policy)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as caught:
        await call_resiliently(down, breaker=breaker, policy=policy)
    assert caught.value.retry_after == pytest.approx(5.0)
    assert len(down.calls) == 3  # an open breaker does not call the cloud
    await trio.sleep(5)
    with pytest.raises(ProviderUnavailable):  # the half-open trial fails: open again
        await call_resiliently(down, breaker=breaker, policy=policy)
    assert breaker.state is BreakerState.OPEN
    await trio.sleep(5)
    up = Flaky(0, ProviderUnavailable("unused"))
    assert await call_resiliently(up, breaker=breaker, policy=policy) == "ok"
    assert (breaker.state, breaker.failures) == (BreakerState.CLOSED, 0)


def test_instance_info_as_dict_is_json_ready() -> None:
    launched = datetime.datetime(2026, 12, 1, 9, 30, tzinfo=datetime.UTC)
    info = InstanceInfo(
        "i-1", "web", "t3.micro", "us-east-1", "us-east-1a",
        InstanceState.RUNNING, "running", launched, "aws", {"Name": "web"},
    )  # fmt: skip
    assert info.as_dict() == {
        "id": "i-1", "name": "web", "type": "t3.micro", "region": "us-east-1",
        "zone": "us-east-1a", "state": "running", "raw_state": "running",
        "launch_time": "2026-12-01T09:30:00+00:00", "provider": "aws", "tags": {"Name": "web"},
    }  # fmt: skip


def test_resilience_from_config_says_what_is_wrong() -> None:
    assert Resilience.from_config({"resilience": {"retries": 1}}).retries == 1
    with pytest.raises(ValueError, match="resilience"):
        Resilience.from_config({"resilience": {"retires": 1}})

"""Each change of a circuit breaker's state is one WARNING (logger ``providers``); calls
that leave the state as it was log nothing."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from providers import (
    CircuitBreaker,
    CircuitOpen,
    ProviderUnavailable,
    Resilience,
    call_resiliently,
)


async def test_each_breaker_change_is_one_warning(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="providers")
    breaker = CircuitBreaker("aws", failure_threshold=3, reset_timeout=5.0)
    policy = Resilience(retries=0, reset_timeout=5.0)

    async def down() -> str:
        raise ProviderUnavailable("aws: 503")

    async def up() -> str:
        return "ok"

    assert await call_resiliently(up, breaker=breaker, policy=policy) == "ok"
    for _ in range(3):
        with pytest.raises(ProviderUnavailable):
            await call_resiliently(down, breaker=breaker, policy=policy)
    with pytest.raises(CircuitOpen):
        await call_resiliently(down, breaker=breaker, policy=policy)  # stays open: no line
    await trio.sleep(5)
    with pytest.raises(ProviderUnavailable):  # the trial fails
        await call_resiliently(down, breaker=breaker, policy=policy)
    await trio.sleep(5)
    assert await call_resiliently(up, breaker=breaker, policy=policy) == "ok"
    assert await call_resiliently(up, breaker=breaker, policy=policy) == "ok"  # no line

    logged = [r for r in caplog.records if r.name == "providers"]
    assert {r.levelno for r in logged} == {logging.WARNING}
    assert [r.getMessage() for r in logged] == [
        "aws: circuit breaker open (was closed): 3 failures in a row; calls fail at once for 5 s",
        "aws: circuit breaker half-open (was open): letting one trial call through",
        "aws: circuit breaker open (was half-open): the trial call failed;"
        " calls fail at once for 5 s",
        "aws: circuit breaker half-open (was open): letting one trial call through",
        "aws: circuit breaker closed (was half-open): the cloud answered; calls go through again",
    ]
    assert [(r.provider, r.breaker, r.previous) for r in logged[:2]] == [  # type: ignore[attr-defined]
        ("aws", "open", "closed"),
        ("aws", "half_open", "open"),
    ]

"""Supervisors as children of supervisors."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import trio

from ._spec import ChildSpec, OnExhausted, Restart, Strategy
from ._supervisor import open_supervisor


def supervisor_spec(
    id: str,
    children: Sequence[ChildSpec],
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    max_restarts: int = 3,
    period: float = 5.0,
    restart: Restart = Restart.PERMANENT,
    shutdown: float = math.inf,
    on_exhausted: OnExhausted = OnExhausted.ESCALATE,
    rng: random.Random | None = None,
) -> ChildSpec:
    """A child spec whose child is a supervisor of ``children``.

    The nested supervisor starts its children in order, then passes itself to
    ``task_status.started()``. When it exceeds its restart intensity it fails with
    :class:`RestartIntensityExceeded`, which its parent records as ``escalated`` and
    treats like any other crash of a child. Its ``shutdown`` defaults to ``math.inf``,
    as in OTP: it gets the time its own children need to stop.
    """
    children = tuple(children)
    for spec in children:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"supervisor_spec children must be ChildSpec objects, got {spec!r}")

    async def run_supervisor(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_supervisor(
            strategy=strategy, max_restarts=max_restarts, period=period, name=id, rng=rng
        ) as supervisor:
            for spec in children:
                await supervisor.start_child(spec)
            task_status.started(supervisor)
            await trio.sleep_forever()

    return ChildSpec(
        id, run_supervisor, restart=restart, shutdown=shutdown, on_exhausted=on_exhausted
    )

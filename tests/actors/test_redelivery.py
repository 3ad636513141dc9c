"""Redelivery of durable events goes on as the mailbox drains: more unacknowledged
events than the mailbox holds are all delivered after one restart, while new events
flow in beside them (issue 14, item 8)."""

from __future__ import annotations

import collections
import contextlib
import sqlite3
from pathlib import Path

import pytest
import trio

from cws_actors import (
    Actor,
    Event,
    MailboxConfig,
    Overflow,
    RuntimeConfig,
    on_event,
    open_runtime,
)

BACKLOG = 2_500
CAPACITY = 1_000  # the default mailbox
NEW_PLAIN = 50
NEW_DURABLE = 600  # more than the room left: some are refused, then paged in too


def config(path: Path) -> RuntimeConfig:
    return RuntimeConfig(state_path=str(path), durable_topics=("orders.*",))


def unacked(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(
            connection.execute("SELECT count(*) FROM deliveries WHERE acked = 0").fetchone()[0]
        )


class Stuck(Actor):
    """Takes its first event and never finishes: everything else stays unacknowledged."""

    @on_event("orders.*")
    async def order(self, event: Event) -> None:
        await trio.sleep_forever()


class Ledger(Actor):
    """Records every delivery. Its first one waits on ``gate``: the test publishes new
    events while the redelivered backlog is queued behind it."""

    def __init__(self, seen: list[Event], want: int, gate: trio.Event) -> None:
        self.seen, self.want, self.gate = seen, want, gate
        self.started, self.done = trio.Event(), trio.Event()

    @on_event("orders.*", "news.*")
    async def record(self, event: Event) -> None:
        if not self.started.is_set():
            self.started.set()
            await self.gate.wait()
        self.seen.append(event)
        if len(self.seen) == self.want:
            self.done.set()


async def test_a_backlog_bigger_than_the_mailbox_is_delivered_after_one_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with trio.fail_after(120):
        async with open_runtime(config=config(path)) as runtime:
            await runtime.spawn(Stuck, name="ledger")
            backlog = [(await runtime.publish("orders.created", n)).id for n in range(BACKLOG)]
    assert unacked(path) == BACKLOG  # all acknowledged to their publisher, none handled

    seen: list[Event] = []
    gate = trio.Event()
    ledger = Ledger(seen, BACKLOG + NEW_PLAIN + NEW_DURABLE, gate)
    with trio.fail_after(120):
        async with open_runtime(config=config(path)) as runtime:
            ref = await runtime.spawn(
                lambda: ledger, name="ledger", mailbox=MailboxConfig(capacity=CAPACITY)
            )
            await ledger.started.wait()
            # The backlog fills half of the mailbox (one event is in the handler); the
            # other half is free for new events.
            assert len(runtime.router.cells[ref.path].mailbox) == CAPACITY // 2 - 1
            plain = [runtime.publish_nowait("news.posted", n).id for n in range(NEW_PLAIN)]
            new = [(await runtime.publish("orders.created", n)).id for n in range(NEW_DURABLE)]
            refused = [d for d in runtime.dead_letters() if d.reason == "mailbox_full"]
            assert len(refused) == NEW_DURABLE + NEW_PLAIN - (CAPACITY // 2 + 1)
            gate.set()
            await ledger.done.wait()
    assert unacked(path) == 0

    ids = [event.id for event in seen]
    counts = collections.Counter(ids)
    assert [i for i, c in counts.items() if c > 1] == []  # exactly once, here
    assert set(ids) == {*backlog, *plain, *new}
    position = {event_id: at for at, event_id in enumerate(ids)}
    # The backlog comes oldest first, and new events interleave with it: all of those
    # that found room come after the first half-mailbox of the backlog and long
    # before its end, and those refused by the full mailbox come after it, paged in.
    old = [event_id for event_id in ids if event_id in set(backlog)]
    assert old == backlog
    admitted = plain + new[: CAPACITY // 2 + 1 - NEW_PLAIN]
    assert max(position[i] for i in admitted) < position[backlog[-1]]
    assert min(position[i] for i in admitted) == CAPACITY // 2
    assert min(position[i] for i in new[len(admitted) - NEW_PLAIN :]) > position[backlog[-1]]


@pytest.mark.parametrize("overflow", [Overflow.REJECT, Overflow.DROP_NEWEST, Overflow.DROP_OLDEST])
async def test_durable_events_a_full_mailbox_refused_come_back_in_the_same_run(
    tmp_path: Path, overflow: Overflow
) -> None:
    """Refused, dropped or evicted by a full mailbox, a durable event is paged back in
    from the store once the mailbox has drained: no restart needed."""
    path = tmp_path / "state.db"
    seen: list[Event] = []
    gate = trio.Event()
    ledger = Ledger(seen, 8, gate)
    with trio.fail_after(20):
        async with open_runtime(config=config(path)) as runtime:
            ref = await runtime.spawn(
                lambda: ledger, name="ledger", mailbox=MailboxConfig(2, overflow)
            )
            published = [(await runtime.publish("orders.created", 0)).id]
            await ledger.started.wait()  # in the handler, on the gate
            published += [(await runtime.publish("orders.created", n)).id for n in range(1, 8)]
            lost = [d for d in runtime.dead_letters() if d.reason == "mailbox_full"]
            assert len(lost) == 5  # 2 fit in the mailbox; one event is in the handler
            gate.set()
            await ledger.done.wait()
            assert runtime.actors().find(ref.path).restarts == 0
    assert sorted(event.id for event in seen) == published  # each one exactly once
    assert unacked(path) == 0

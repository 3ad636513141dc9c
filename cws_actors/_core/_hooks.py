"""The hooks through which the core lets a listener in on its actors without knowing
who listens (as trio's core calls its instruments). Fault injection
(:mod:`cws_actors.faults`) is the one listener today.

- :class:`RuntimeHooks`: the runtime tells its listener of every actor spawned (``bind``
  the cells, ``attach`` before a start, ``settle`` after it) and of every run started.
- :class:`CellHooks`: set by that listener on a cell (``cell.hooks``), called before each
  start and each message. None when nobody listens to that actor: the one ``is not
  None`` check per message that the hooks cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._actor import Actor
    from ._cell import ActorCell
    from ._envelope import Envelope


class CellHooks(Protocol):
    """Called by an actor's cell around its runs and messages."""

    async def before_start(self, cell: ActorCell) -> None:
        """Before each run's ``on_start`` (it may delay it)."""
        ...

    async def before_message(self, cell: ActorCell, envelope: Envelope) -> bool:
        """Before the handler sees a (non-control) message; True when the hook consumed
        it (answered or dead-lettered it) and the actor must not see it. It may raise:
        the handler then fails with that exception, as if the actor had raised it."""
        ...


class RuntimeHooks(Protocol):
    """Told by the runtime of its actors, as they are spawned and started."""

    def bind(self, cells: Mapping[str, ActorCell]) -> None:
        """The runtime's running actors by path (a live view, never copied)."""
        ...

    def attach(self, cell: ActorCell) -> None:
        """An actor is being spawned, before its first start (set ``cell.hooks`` here)."""
        ...

    def started(self, cell: ActorCell, actor: Actor) -> None:
        """A run of the actor started (its ``on_start`` returned); it may start tasks in
        the run's nursery (``actor._nursery``), which end with the run."""
        ...

    def settle(self, cell: ActorCell) -> None:
        """The spawn of ``cell`` ended: it is among the bound cells now, or it failed."""
        ...

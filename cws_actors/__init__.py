"""cws_actors: supervised actors, mailboxes, the router, rate limits and the event bus.

Built on :mod:`supervision` (every actor is a supervised child; every subtree a
supervisor); nothing here imports ``api`` or ``providers``. Inside the package:
``_exceptions``, ``_envelope``, ``_mailbox``, ``_ratelimit`` and ``_deadletters`` at the
bottom; ``_actor`` and ``_bus`` above them; ``_cell`` runs an actor; ``_router`` admits
messages; ``_runtime`` composes it all.
"""

from supervision import Backoff as Backoff
from supervision import OnExhausted as OnExhausted
from supervision import ProbeKind as ProbeKind
from supervision import Restart as Restart
from supervision import Strategy as Strategy

from ._actor import Actor as Actor
from ._actor import ActorRef as ActorRef
from ._actor import on_event as on_event
from ._bus import BusBackend as BusBackend
from ._bus import Event as Event
from ._bus import EventBus as EventBus
from ._bus import InMemoryBackend as InMemoryBackend
from ._bus import Subscription as Subscription
from ._bus import topic_matches as topic_matches
from ._cell import HealthProbe as HealthProbe
from ._deadletters import DeadLetter as DeadLetter
from ._durable import EventStore as EventStore
from ._durable import SQLiteEventStore as SQLiteEventStore
from ._durable import StoredEvent as StoredEvent
from ._envelope import Envelope as Envelope
from ._envelope import Source as Source
from ._envelope import current_envelope as current_envelope
from ._exceptions import ActorError as ActorError
from ._exceptions import ActorNotFound as ActorNotFound
from ._exceptions import ActorRestarting as ActorRestarting
from ._exceptions import ActorStopped as ActorStopped
from ._exceptions import AskTimeout as AskTimeout
from ._exceptions import DeadlineExceeded as DeadlineExceeded
from ._exceptions import HandlerFailed as HandlerFailed
from ._exceptions import MailboxFull as MailboxFull
from ._exceptions import NotReady as NotReady
from ._exceptions import RateLimited as RateLimited
from ._mailbox import MailboxConfig as MailboxConfig
from ._mailbox import MailboxStatistics as MailboxStatistics
from ._mailbox import Overflow as Overflow
from ._ratelimit import RateLimit as RateLimit
from ._runtime import ActorSnapshot as ActorSnapshot
from ._runtime import Runtime as Runtime
from ._runtime import RuntimeConfig as RuntimeConfig
from ._runtime import open_runtime as open_runtime

__all__ = [
    "Actor",
    "ActorError",
    "ActorNotFound",
    "ActorRef",
    "ActorRestarting",
    "ActorSnapshot",
    "ActorStopped",
    "AskTimeout",
    "Backoff",
    "BusBackend",
    "DeadLetter",
    "DeadlineExceeded",
    "Envelope",
    "Event",
    "EventBus",
    "EventStore",
    "HandlerFailed",
    "HealthProbe",
    "InMemoryBackend",
    "MailboxConfig",
    "MailboxFull",
    "MailboxStatistics",
    "NotReady",
    "OnExhausted",
    "Overflow",
    "ProbeKind",
    "RateLimit",
    "RateLimited",
    "Restart",
    "Runtime",
    "RuntimeConfig",
    "SQLiteEventStore",
    "Source",
    "StoredEvent",
    "Strategy",
    "Subscription",
    "current_envelope",
    "on_event",
    "open_runtime",
    "topic_matches",
]

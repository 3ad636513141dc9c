"""cws_actors: supervised actors, mailboxes, the router, rate limits and the event bus.

Built on :mod:`supervision` (every actor is a supervised child; every subtree a
supervisor); nothing here imports ``api`` or ``providers``. Inside the package:
``_exceptions``, ``_envelope``, ``_mailbox``, ``_ratelimit`` and ``_deadletters`` at the
bottom; ``_actor`` and ``_bus`` above them; ``_cell`` runs an actor; ``_router`` admits
messages; ``_runtime`` composes it all. ``_faultspec`` and ``_faults`` inject faults on
purpose (``runtime.faults``), through hooks in ``_cell`` and the plugin actor.
"""

from supervision import Backoff as Backoff
from supervision import OnExhausted as OnExhausted
from supervision import ProbeKind as ProbeKind
from supervision import Restart as Restart
from supervision import Strategy as Strategy

from ._core._actor import Actor as Actor
from ._core._actor import ActorRef as ActorRef
from ._core._actor import on_event as on_event
from ._core._bus import BusBackend as BusBackend
from ._core._bus import Event as Event
from ._core._bus import EventBus as EventBus
from ._core._bus import InMemoryBackend as InMemoryBackend
from ._core._bus import Subscription as Subscription
from ._core._bus import topic_matches as topic_matches
from ._core._cell import HealthProbe as HealthProbe
from ._core._deadletters import DeadLetter as DeadLetter
from ._core._durable import EventStore as EventStore
from ._core._durable import SQLiteEventStore as SQLiteEventStore
from ._core._durable import StoredEvent as StoredEvent
from ._core._envelope import Envelope as Envelope
from ._core._envelope import Source as Source
from ._core._envelope import current_envelope as current_envelope
from ._core._exceptions import ActorError as ActorError
from ._core._exceptions import ActorNotFound as ActorNotFound
from ._core._exceptions import ActorQuarantined as ActorQuarantined
from ._core._exceptions import ActorRestarting as ActorRestarting
from ._core._exceptions import ActorStopped as ActorStopped
from ._core._exceptions import AskTimeout as AskTimeout
from ._core._exceptions import DeadlineExceeded as DeadlineExceeded
from ._core._exceptions import HandlerFailed as HandlerFailed
from ._core._exceptions import MailboxFull as MailboxFull
from ._core._exceptions import NotReady as NotReady
from ._core._exceptions import RateLimited as RateLimited
from ._core._mailbox import MailboxConfig as MailboxConfig
from ._core._mailbox import MailboxStatistics as MailboxStatistics
from ._core._mailbox import Overflow as Overflow
from ._core._ratelimit import RateLimit as RateLimit
from ._core._ratelimit import TokenBucket as TokenBucket
from ._core._runtime import ActorSnapshot as ActorSnapshot
from ._core._runtime import Runtime as Runtime
from ._core._runtime import RuntimeConfig as RuntimeConfig
from ._core._runtime import open_runtime as open_runtime
from ._host._facade import DiscoveredPlugin as DiscoveredPlugin
from ._host._facade import HostConfig as HostConfig
from ._host._facade import PluginError as PluginError
from ._host._facade import PluginHost as PluginHost
from ._host._facade import PluginNotFound as PluginNotFound
from ._host._facade import PluginRefused as PluginRefused
from ._host._facade import PluginStatus as PluginStatus
from ._host._facade import open_plugin_host as open_plugin_host
from ._host._state import HistoryEntry as HistoryEntry
from ._host._state import PluginRecord as PluginRecord
from ._host._state import StateStore as StateStore
from ._host._state import TokenRecord as TokenRecord
from ._isolation._plugin_actor import PluginCallFailed as PluginCallFailed
from ._isolation._plugin_actor import PluginCrashed as PluginCrashed
from ._plugins._manifest import Manifest as Manifest
from ._plugins._manifest import ManifestError as ManifestError
from ._plugins._model import PLUGIN_API_VERSION as PLUGIN_API_VERSION
from ._plugins._model import APIEndpointSpec as APIEndpointSpec
from ._plugins._model import APIRequest as APIRequest
from ._plugins._model import APIResult as APIResult
from ._plugins._model import Capabilities as Capabilities
from ._plugins._model import CLICommandSpec as CLICommandSpec
from ._plugins._model import CLIFlagSpec as CLIFlagSpec
from ._plugins._model import CommandResult as CommandResult
from ._plugins._model import EventHandlerSpec as EventHandlerSpec
from ._plugins._model import Health as Health
from ._plugins._model import HealthStatus as HealthStatus
from ._plugins._model import Isolation as Isolation
from ._plugins._model import Plugin as Plugin
from ._plugins._model import PluginContext as PluginContext
from ._plugins._model import PluginMetadata as PluginMetadata
from ._plugins._model import ResourceLimits as ResourceLimits

__all__ = [
    "APIEndpointSpec",
    "APIRequest",
    "APIResult",
    "Actor",
    "ActorError",
    "ActorNotFound",
    "ActorQuarantined",
    "ActorRef",
    "ActorRestarting",
    "ActorSnapshot",
    "ActorStopped",
    "AskTimeout",
    "Backoff",
    "BusBackend",
    "CLICommandSpec",
    "CLIFlagSpec",
    "Capabilities",
    "CommandResult",
    "DeadLetter",
    "DeadlineExceeded",
    "DiscoveredPlugin",
    "Envelope",
    "Event",
    "EventBus",
    "EventHandlerSpec",
    "EventStore",
    "HandlerFailed",
    "Health",
    "HealthProbe",
    "HealthStatus",
    "HistoryEntry",
    "HostConfig",
    "InMemoryBackend",
    "Isolation",
    "MailboxConfig",
    "MailboxFull",
    "MailboxStatistics",
    "Manifest",
    "ManifestError",
    "NotReady",
    "OnExhausted",
    "Overflow",
    "PLUGIN_API_VERSION",
    "Plugin",
    "PluginCallFailed",
    "PluginContext",
    "PluginCrashed",
    "PluginError",
    "PluginHost",
    "PluginMetadata",
    "PluginNotFound",
    "PluginRecord",
    "PluginRefused",
    "PluginStatus",
    "ProbeKind",
    "RateLimit",
    "RateLimited",
    "ResourceLimits",
    "Restart",
    "Runtime",
    "RuntimeConfig",
    "SQLiteEventStore",
    "Source",
    "StateStore",
    "StoredEvent",
    "Strategy",
    "Subscription",
    "TokenBucket",
    "TokenRecord",
    "current_envelope",
    "on_event",
    "open_plugin_host",
    "open_runtime",
    "topic_matches",
]

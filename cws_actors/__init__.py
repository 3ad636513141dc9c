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
from ._chaos import ChaosPlan as ChaosPlan
from ._chaos import ChaosPlanError as ChaosPlanError
from ._chaos import ChaosReport as ChaosReport
from ._chaos import ChaosRun as ChaosRun
from ._deadletters import DeadLetter as DeadLetter
from ._durable import EventStore as EventStore
from ._durable import SQLiteEventStore as SQLiteEventStore
from ._durable import StoredEvent as StoredEvent
from ._envelope import Envelope as Envelope
from ._envelope import Source as Source
from ._envelope import current_envelope as current_envelope
from ._exceptions import ActorError as ActorError
from ._exceptions import ActorNotFound as ActorNotFound
from ._exceptions import ActorQuarantined as ActorQuarantined
from ._exceptions import ActorRestarting as ActorRestarting
from ._exceptions import ActorStopped as ActorStopped
from ._exceptions import AskTimeout as AskTimeout
from ._exceptions import DeadlineExceeded as DeadlineExceeded
from ._exceptions import HandlerFailed as HandlerFailed
from ._exceptions import MailboxFull as MailboxFull
from ._exceptions import NotReady as NotReady
from ._exceptions import RateLimited as RateLimited
from ._faults import FaultFiring as FaultFiring
from ._faults import FaultInjector as FaultInjector
from ._faults import FaultNotFound as FaultNotFound
from ._faults import FaultRecord as FaultRecord
from ._faults import FaultState as FaultState
from ._faults import InjectedFault as InjectedFault
from ._faultspec import FaultKind as FaultKind
from ._faultspec import FaultSpec as FaultSpec
from ._faultspec import FaultSpecError as FaultSpecError
from ._faultspec import FaultTargetError as FaultTargetError
from ._faultspec import parse_fault_list as parse_fault_list
from ._host import DiscoveredPlugin as DiscoveredPlugin
from ._host import HostConfig as HostConfig
from ._host import PluginError as PluginError
from ._host import PluginHost as PluginHost
from ._host import PluginNotFound as PluginNotFound
from ._host import PluginRefused as PluginRefused
from ._host import PluginStatus as PluginStatus
from ._host import open_plugin_host as open_plugin_host
from ._mailbox import MailboxConfig as MailboxConfig
from ._mailbox import MailboxStatistics as MailboxStatistics
from ._mailbox import Overflow as Overflow
from ._manifest import Manifest as Manifest
from ._manifest import ManifestError as ManifestError
from ._plugin import PLUGIN_API_VERSION as PLUGIN_API_VERSION
from ._plugin import APIEndpointSpec as APIEndpointSpec
from ._plugin import APIRequest as APIRequest
from ._plugin import APIResult as APIResult
from ._plugin import Capabilities as Capabilities
from ._plugin import CLICommandSpec as CLICommandSpec
from ._plugin import CLIFlagSpec as CLIFlagSpec
from ._plugin import CommandResult as CommandResult
from ._plugin import EventHandlerSpec as EventHandlerSpec
from ._plugin import Health as Health
from ._plugin import HealthStatus as HealthStatus
from ._plugin import Isolation as Isolation
from ._plugin import Plugin as Plugin
from ._plugin import PluginContext as PluginContext
from ._plugin import PluginMetadata as PluginMetadata
from ._plugin import ResourceLimits as ResourceLimits
from ._plugin_actor import PluginCallFailed as PluginCallFailed
from ._plugin_actor import PluginCrashed as PluginCrashed
from ._ratelimit import RateLimit as RateLimit
from ._ratelimit import TokenBucket as TokenBucket
from ._runtime import ActorSnapshot as ActorSnapshot
from ._runtime import Runtime as Runtime
from ._runtime import RuntimeConfig as RuntimeConfig
from ._runtime import open_runtime as open_runtime
from ._state import HistoryEntry as HistoryEntry
from ._state import PluginRecord as PluginRecord
from ._state import StateStore as StateStore
from ._state import TokenRecord as TokenRecord

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
    "ChaosPlan",
    "ChaosPlanError",
    "ChaosReport",
    "ChaosRun",
    "CommandResult",
    "DeadLetter",
    "DeadlineExceeded",
    "DiscoveredPlugin",
    "Envelope",
    "Event",
    "EventBus",
    "EventHandlerSpec",
    "EventStore",
    "FaultFiring",
    "FaultInjector",
    "FaultKind",
    "FaultNotFound",
    "FaultRecord",
    "FaultSpec",
    "FaultSpecError",
    "FaultState",
    "FaultTargetError",
    "HandlerFailed",
    "Health",
    "HealthProbe",
    "HealthStatus",
    "HistoryEntry",
    "HostConfig",
    "InMemoryBackend",
    "InjectedFault",
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
    "parse_fault_list",
    "topic_matches",
]

"""cws_actors: supervised actors, mailboxes, the router, rate limits, the event bus and
the plugin host. This module is the package's only door; plugin authors import from it.

Built on :mod:`supervision` (every actor is a supervised child; every subtree a
supervisor); nothing here imports ``api`` or ``providers``. The rooms, arrows pointing
down:

- ``_core``: exceptions, envelopes, mailboxes, rate limits, dead letters, the bus and the
  durable event store at the bottom; actors, cells, the router and the runtime above
  them; ``_hooks``, through which a cell lets a listener in without knowing who it is.
- ``_plugins``: the plugin model, its manifest and its loader (on ``_core``).
- ``_packaging``: ``.cwsplugin`` archives, signatures and safe removal.
- ``_isolation``: the plugin actor and its drivers, the subprocess runner, the protocol,
  the fork server (on ``_plugins`` and ``_core``).
- ``_host``: the plugin host (on all of the above) and its state database.
- :mod:`cws_actors.faults` (public): fault injection and chaos runs, plugged into the
  core through ``_core._hooks``; ``runtime.faults`` is its injector.
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
from ._core._bus import EventHistory as EventHistory
from ._core._bus import InMemoryBackend as InMemoryBackend
from ._core._bus import Subscription as Subscription
from ._core._bus import check_topic as check_topic
from ._core._bus import topic_matches as topic_matches
from ._core._cell import HealthProbe as HealthProbe
from ._core._deadletters import DeadLetter as DeadLetter
from ._core._durable import EventStore as EventStore
from ._core._durable import SQLiteEventStore as SQLiteEventStore
from ._core._durable import StoredEvent as StoredEvent
from ._core._durations import parse_duration as parse_duration
from ._core._envelope import Envelope as Envelope
from ._core._envelope import Source as Source
from ._core._envelope import current_envelope as current_envelope
from ._core._exceptions import ActorError as ActorError
from ._core._exceptions import ActorNotFound as ActorNotFound
from ._core._exceptions import ActorQuarantined as ActorQuarantined
from ._core._exceptions import ActorRestarting as ActorRestarting
from ._core._exceptions import ActorStopped as ActorStopped
from ._core._exceptions import ArchiveError as ArchiveError
from ._core._exceptions import AskTimeout as AskTimeout
from ._core._exceptions import DeadlineExceeded as DeadlineExceeded
from ._core._exceptions import HandlerFailed as HandlerFailed
from ._core._exceptions import MailboxFull as MailboxFull
from ._core._exceptions import ManifestError as ManifestError
from ._core._exceptions import NotReady as NotReady
from ._core._exceptions import PluginCallFailed as PluginCallFailed
from ._core._exceptions import PluginCrashed as PluginCrashed
from ._core._exceptions import PluginError as PluginError
from ._core._exceptions import PluginNotFound as PluginNotFound
from ._core._exceptions import PluginRefused as PluginRefused
from ._core._exceptions import RateLimited as RateLimited
from ._core._exceptions import SandboxNotGranted as SandboxNotGranted
from ._core._mailbox import MailboxConfig as MailboxConfig
from ._core._mailbox import MailboxStatistics as MailboxStatistics
from ._core._mailbox import Overflow as Overflow
from ._core._ratelimit import RateLimit as RateLimit
from ._core._ratelimit import TokenBucket as TokenBucket
from ._core._ratelimit import TokenBuckets as TokenBuckets
from ._core._runtime import ActorSnapshot as ActorSnapshot
from ._core._runtime import RoutingStatistics as RoutingStatistics
from ._core._runtime import Runtime as Runtime
from ._core._runtime import RuntimeConfig as RuntimeConfig
from ._core._runtime import open_runtime as open_runtime
from ._core._sqlite import open_sqlite as open_sqlite
from ._host._base import DiscoveredPlugin as DiscoveredPlugin
from ._host._base import HostConfig as HostConfig
from ._host._base import PluginStatus as PluginStatus
from ._host._base import SandboxGrants as SandboxGrants
from ._host._base import TokenBroker as TokenBroker
from ._host._facade import PluginHost as PluginHost
from ._host._facade import open_plugin_host as open_plugin_host
from ._host._secrets import SecretNotSet as SecretNotSet
from ._host._secrets import SecretStore as SecretStore
from ._host._state import HistoryEntry as HistoryEntry
from ._host._state import PluginRecord as PluginRecord
from ._host._state import StateStore as StateStore
from ._isolation._kernel import not_dumpable as not_dumpable
from ._isolation._launch import PluginCall as PluginCall
from ._packaging._archive import ARCHIVE_SUFFIX as ARCHIVE_SUFFIX
from ._packaging._archive import ArchiveInfo as ArchiveInfo
from ._packaging._archive import check_archive as check_archive
from ._packaging._archive import make_archive as make_archive
from ._packaging._signing import SignatureError as SignatureError
from ._packaging._signing import SigningKey as SigningKey
from ._packaging._signing import generate_keypair as generate_keypair
from ._packaging._signing import secret_key_encrypted as secret_key_encrypted
from ._plugins._api import APIToken as APIToken
from ._plugins._api import PluginAPI as PluginAPI
from ._plugins._manifest import Manifest as Manifest
from ._plugins._model import PLUGIN_API_VERSION as PLUGIN_API_VERSION
from ._plugins._model import APIEndpointSpec as APIEndpointSpec
from ._plugins._model import APIRequest as APIRequest
from ._plugins._model import APIResult as APIResult
from ._plugins._model import Capabilities as Capabilities
from ._plugins._model import CLICommandSpec as CLICommandSpec
from ._plugins._model import CLIFlagSpec as CLIFlagSpec
from ._plugins._model import CommandResult as CommandResult
from ._plugins._model import Concurrency as Concurrency
from ._plugins._model import EventHandlerSpec as EventHandlerSpec
from ._plugins._model import Health as Health
from ._plugins._model import HealthStatus as HealthStatus
from ._plugins._model import Isolation as Isolation
from ._plugins._model import Plugin as Plugin
from ._plugins._model import PluginContext as PluginContext
from ._plugins._model import PluginMetadata as PluginMetadata
from ._plugins._model import ResourceLimits as ResourceLimits
from ._plugins._routes import routes_overlap as routes_overlap
from ._plugins._sandbox import Endpoint as Endpoint
from ._plugins._sandbox import NetworkMode as NetworkMode
from ._plugins._sandbox import PathAccess as PathAccess
from ._plugins._sandbox import PathRule as PathRule
from ._plugins._sandbox import Sandbox as Sandbox
from ._plugins._sandbox import parse_grants as parse_grants
from ._plugins._sandbox import parse_sandbox as parse_sandbox
from ._plugins._sandbox import ungranted as ungranted

__all__ = [
    "APIEndpointSpec",
    "APIRequest",
    "APIResult",
    "APIToken",
    "ARCHIVE_SUFFIX",
    "Actor",
    "ActorError",
    "ActorNotFound",
    "ActorQuarantined",
    "ActorRef",
    "ActorRestarting",
    "ActorSnapshot",
    "ActorStopped",
    "ArchiveError",
    "ArchiveInfo",
    "AskTimeout",
    "Backoff",
    "BusBackend",
    "CLICommandSpec",
    "CLIFlagSpec",
    "Capabilities",
    "CommandResult",
    "Concurrency",
    "DeadLetter",
    "DeadlineExceeded",
    "DiscoveredPlugin",
    "Endpoint",
    "Envelope",
    "Event",
    "EventBus",
    "EventHandlerSpec",
    "EventHistory",
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
    "NetworkMode",
    "NotReady",
    "OnExhausted",
    "Overflow",
    "PLUGIN_API_VERSION",
    "PathAccess",
    "PathRule",
    "Plugin",
    "PluginAPI",
    "PluginCall",
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
    "RoutingStatistics",
    "Runtime",
    "RuntimeConfig",
    "SQLiteEventStore",
    "Sandbox",
    "SandboxGrants",
    "SandboxNotGranted",
    "SecretNotSet",
    "SecretStore",
    "SignatureError",
    "SigningKey",
    "Source",
    "StateStore",
    "StoredEvent",
    "Strategy",
    "Subscription",
    "TokenBroker",
    "TokenBucket",
    "TokenBuckets",
    "check_archive",
    "check_topic",
    "current_envelope",
    "generate_keypair",
    "make_archive",
    "not_dumpable",
    "on_event",
    "open_plugin_host",
    "open_runtime",
    "open_sqlite",
    "parse_duration",
    "parse_grants",
    "parse_sandbox",
    "routes_overlap",
    "secret_key_encrypted",
    "topic_matches",
    "ungranted",
]

for _name in __all__:  # reprs and tracebacks say cws_actors.Actor (trio, httpx do this)
    _value = globals()[_name]
    if getattr(_value, "__module__", "").startswith(__name__ + "."):
        _value.__module__ = __name__
del _name, _value

"""The plugin host's settings, records and shared state: what its sections share."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from supervision import Backoff

from .._core._exceptions import (
    PluginNotFound,
    PluginRefused,
)
from .._core._runtime import Runtime
from .._isolation._cgroup import Cgroups
from .._isolation._forkserver import ForkServer
from .._isolation._kernel import KernelSupport, support
from .._isolation._launch import PluginCounters, PluginLaunch
from .._isolation._spare import WarmSpares
from .._packaging._archive import ArchiveLimits
from .._plugins._api import APIToken
from .._plugins._manifest import Manifest
from .._plugins._model import (
    APIEndpointSpec,
    Concurrency,
    Isolation,
    Plugin,
    PluginMetadata,
)
from .._plugins._sandbox import Sandbox, parse_grants, parse_sandbox
from ._install import (
    TrustPolicy,
)
from ._secrets import SECRETS_FILE, SecretStore
from ._state import StateStore

ENTRY_POINT_GROUP = "cws_actors.plugins"
_LIFECYCLE = frozenset({"initialize", "start", "stop", "health", "ready", "status"})
PLUGINS_PATH = "/plugins"

_log = logging.getLogger("cws.plugins")
"""Each install, load, unload, update, enable, disable and remove at INFO, with the
``plugin`` (and ``version``...) in the record's ``extra``; a plugin that cannot load at
ERROR. Its crashes and restarts are its supervisor's to log (logger ``supervision``)."""


class TokenBroker(Protocol):
    """The daemon's side of ``ctx.api``: tokens for its API, minted for one plugin with
    exactly the scopes it was granted, short-lived, kept in memory only."""

    def mint(self, plugin: str, scopes: tuple[str, ...]) -> APIToken | None:
        """A new token (None while the daemon does not serve yet)."""

    def revoke(self, plugin: str, token: str | None = None) -> None:
        """Revoke ``token`` of ``plugin``, or every token of it (None)."""


@attrs.frozen
class DiscoveredPlugin:
    """A plugin found by discovery, loadable or not (``problem`` says why not)."""

    name: str
    version: str
    source: str
    """``entry_point``, ``user`` or ``system``."""
    location: str
    isolation: Isolation
    manifest: Manifest | None = None
    plugin_class: type[Plugin] | None = None
    problem: str | None = None


@attrs.frozen
class PluginStatus:
    name: str
    version: str
    source: str
    isolation: str
    enabled: bool
    loaded: bool
    state: str
    """``not_loaded``, ``refused`` or the actor's state (``running``, ``restarting``...)."""
    ready: bool
    restarts: int
    last_exit: str | None
    calls: int
    errors: int
    events: int
    published: int
    last_error: str | None
    problem: str | None
    path: str | None
    pid: int | None = None
    """The plugin's process (subprocess isolation), while it runs."""
    last_restart_at: float | None = None
    """``trio.current_time()`` of its actor's latest restart by its supervisor, or None."""
    spare_pid: int | None = None
    """The process of its warm spare (its next run, waiting to be adopted), if one waits."""
    sandbox: SandboxGrants = attrs.field(factory=lambda: SandboxGrants())
    """What its sandbox asks for and what of it is granted."""


@attrs.frozen
class SandboxGrants:
    """A plugin's sandbox requests (``network:*:443``, ``secrets:aws_key``...) and the
    operator's answer: ``granted`` and ``ungranted`` split ``requests``; ``stored`` is
    what the operator granted it (``cws plugin install --grant``, ``cws plugin grant``),
    ``defaults`` what ``[plugins] default_grants`` grants it, and ``entry_point`` says
    it is granted what it asks for because pip installed it."""

    requests: tuple[str, ...] = ()
    granted: tuple[str, ...] = ()
    ungranted: tuple[str, ...] = ()
    stored: tuple[str, ...] = ()
    defaults: tuple[str, ...] = ()
    entry_point: bool = False
    controls: Mapping[str, str] | None = None
    """Subprocess plugins: per control of its sandbox, ``enforced``, ``partially
    enforced (why)`` or ``not available (why)`` on this machine; None in the daemon."""


def _sandbox_override(sandbox: Sandbox, table: Mapping[str, Any]) -> Sandbox:
    """The operator's ``[plugins.overrides.NAME.sandbox]``: ``network`` and ``exec``
    replace the plugin's, ``filesystem`` adds to it (a test pointing a cloud plugin at
    a local fake says ``network = "loopback"``)."""
    given = parse_sandbox(table)
    changes: dict[str, Any] = {}
    if "network" in table:
        changes.update(network=given.network, endpoints=given.endpoints)
    if "filesystem" in table:
        changes["filesystem"] = (*sandbox.filesystem, *given.filesystem)
    if "exec" in table:
        changes["exec"] = given.exec
    return attrs.evolve(sandbox, **changes)


def _names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names)


def _default_grants(
    value: Mapping[str, Iterable[str]] | Iterable[str],
) -> Mapping[str, tuple[str, ...]]:
    """A list grants every plugin (``"*"``); a table grants by plugin name."""
    if isinstance(value, Mapping):
        table = {str(name): tuple(grants) for name, grants in value.items()}
    else:
        table = {"*": tuple(value)}
    for grants in table.values():
        parse_grants(",".join(grants))  # raises ValueError naming a bad one
    return table


SPARE_MODES = ("after-restart", "always", "never")
"""The values of ``warm_spares``."""


@attrs.frozen
class HostConfig:
    """Where plugins live and how the operator overrides them.

    ``overrides`` maps a plugin name to what the operator sets over its manifest:
    ``{"config": {...}, "isolation": "subprocess", "limits": {"memory_mb": 256},
    "concurrency": {"max": 4, "groups": {"slow": 1}}}``.
    ``require_signed`` (off by default, so that people can install the plugins they
    write) refuses every install that is not an archive signed by a trusted key; an
    archive that comes with a signature is verified whatever the policy.
    """

    home: Path
    system_dir: Path = Path("/usr/lib/cws/plugins")
    entry_points: bool = True
    overrides: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    probe_period: float | None = None
    ready_timeout: float = 30.0
    start_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    """How long a plugin's start (its handshake, ``initialize`` and ``start``) may take
    before it fails as a crash."""
    describe_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    """How long reading a folder plugin's capabilities (importing it in a process of its
    own, at load, install and update) may take before it is refused."""
    fork_server: bool = True
    """Fork subprocess plugins from a process that has Python and Trio imported already
    (a restart in milliseconds); False starts a fresh interpreter for each run."""
    require_signed: bool = False
    """Also: a folder plugin loads only if its install record holds its files' digests
    and the key that signed it, and its files are still those (entry points excepted:
    pip installed them)."""
    in_process_allowed: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    """The folder plugins (user or system) that may run in the daemon's process when
    their manifest asks for it; any other runs as a subprocess. Entry-point plugins
    are code the operator installed with pip, and run as they ask."""
    archive_limits: ArchiveLimits = attrs.field(factory=ArchiveLimits)
    max_restarts: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    restart_period: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    """A plugin restarted more than ``max_restarts`` times within ``restart_period``
    seconds is quarantined (visible in the API, cleared by hand); the others go on."""
    default_grants: Mapping[str, tuple[str, ...]] = attrs.field(
        factory=dict, converter=_default_grants
    )
    """What the operator grants without asking, by plugin name (``"*"``: every plugin):
    grants as ``--grant`` takes them (``all``, a kind, or a request)."""
    allow_weaker_sandbox: bool = False
    """Run a plugin whose sandbox asks for a control this machine cannot enforce
    (``[plugins] allow_weaker_sandbox``); by default such a plugin is refused."""
    sandbox: bool = True
    """Confine subprocess plugins (:mod:`cws_actors._isolation._kernel`); off only to
    measure what the sandbox costs."""
    cgroups: bool = True
    """Put each sandboxed run in a cgroup of its own where the machine allows it
    (:mod:`cws_actors._isolation._cgroup`); off only to measure what it costs or to see
    the report without it."""
    warm_spares: str = attrs.field(
        default="after-restart", validator=attrs.validators.in_(SPARE_MODES)
    )
    """Keep the next run's process of each forked subprocess plugin ready
    (:mod:`cws_actors._isolation._spare`), forked ``spare_delay`` seconds after a run is
    up: a restart adopts it instead of going through the sandbox's start chain and the
    plugin's imports. ``after-restart`` (the default): once the plugin has restarted
    (or been updated), so that a stable plugin costs no second process; ``always``: from
    its first run; ``never``."""
    spare_delay: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    backoff: Backoff = attrs.field(factory=lambda: Backoff(0.1, 5.0))
    """The delay between a plugin's restarts when its manifest sets none: exponential
    from 100 ms, capped at 5 s, with full jitter, reset after a minute of running."""

    @property
    def trust(self) -> TrustPolicy:
        return TrustPolicy(
            trusted_keys_dir=self.home / "trusted_keys",
            revoked_keys=self.home / "revoked_keys",
            require_signed=self.require_signed,
            archive_limits=self.archive_limits,
        )


_DISABLED = "it is disabled; enable it first"

_SWAP_MARGIN = 10.0
"""Seconds the host's ask waits for a swap beyond the longest the swap can take."""


@attrs.define(eq=False)
class _Switch:
    unsettled: bool = False
    """The swap was asked for and not answered: the actor may run either version."""


@attrs.define(eq=False)
class _Loaded:
    discovered: DiscoveredPlugin
    launch: PluginLaunch
    counters: PluginCounters
    path: str
    spares: WarmSpares | None = None
    """Its warm spare (forked subprocess plugins, unless ``warm_spares`` is off)."""


@attrs.frozen
class _Prepared:
    """A plugin described before the host lock was taken (or refused then)."""

    discovered: DiscoveredPlugin
    launch: PluginLaunch | None = None
    manifest: Manifest | None = None
    refused: PluginRefused | None = None


@attrs.define(eq=False)
class _HostBase:
    """The host's state, and the helpers that every section of it uses. The sections
    (discovery, loading, management, status) are mixins over it, put together by
    :class:`~cws_actors.PluginHost` in ``_facade``."""

    runtime: Runtime
    config: HostConfig
    state: StateStore
    _discovered: dict[str, DiscoveredPlugin] = attrs.field(factory=dict)
    _loaded: dict[str, _Loaded] = attrs.field(factory=dict)
    _lock: trio.Lock = attrs.field(factory=trio.Lock)
    _nursery: trio.Nursery | None = None
    _fork_server: ForkServer | None = None
    _fork_server_starting: trio.Event | None = None
    _loading: set[str] = attrs.field(factory=set)
    _starting: dict[str, trio.Event] = attrs.field(factory=dict)
    """Plugins whose actor is starting (outside the host lock), set when settled."""
    _starting_launches: dict[str, PluginLaunch] = attrs.field(factory=dict)
    token_broker: TokenBroker | None = None
    """Set by the daemon: mints plugins' tokens for its API (``ctx.api``)."""
    protected_ports: tuple[int, ...] = ()
    """Set by the daemon: its own ports, which no plugin may reach unless its sandbox
    grants ``apis`` (then only the daemon's port, for ``ctx.api``)."""
    _secret_store: SecretStore | None = None
    cgroups: Cgroups | None = None
    """This daemon's cgroups for plugin runs (set when the host opens), or None."""
    cgroup_problem: str = "the host has not opened yet"
    """Why ``cgroups`` is None."""
    route_guard: Callable[[str, APIEndpointSpec], str | None] | None = None
    """Set by the daemon: why a plugin's endpoint may not be mounted (it would shadow a
    core route or another plugin's), or None. A plugin with such an endpoint is refused
    at load."""

    @property
    def kernel(self) -> KernelSupport:
        """What this machine enforces, with this host's cgroups as they were set up."""
        found = support()
        if self.cgroups is not None:
            return attrs.evolve(
                found, cgroup=self.cgroups.description,
                cgroup_controllers=frozenset(self.cgroups.parents), cgroup_problem="",
            )  # fmt: skip
        return attrs.evolve(found, cgroup=None, cgroup_problem=self.cgroup_problem)

    @property
    def user_dir(self) -> Path:
        return self.config.home / "plugins"

    @property
    def secrets(self) -> SecretStore:
        """The operator's secrets (``$CWS_HOME/secrets.json``, 0600)."""
        if self._secret_store is None:
            self._secret_store = SecretStore(self.config.home / SECRETS_FILE)
        return self._secret_store

    async def _settle(self, name: str) -> None:
        """Wait until a start of ``name`` under way has succeeded or failed."""
        starting = self._starting.get(name)
        if starting is not None:
            await starting.wait()

    def _effective(self, metadata: PluginMetadata, source: str = "user") -> PluginMetadata:
        """The manifest's metadata with the operator's overrides (isolation, limits).

        In the daemon's process runs only what the operator lets run there: an
        entry-point plugin, a plugin named in ``in_process_allowed``, or one whose
        override says ``isolation = "in_process"``. Any other runs as a subprocess."""
        override = self.config.overrides.get(metadata.name, {})
        if "isolation" in override:
            metadata = attrs.evolve(metadata, isolation=Isolation(override["isolation"]))
        elif not self._may_run_in_process(metadata, source):
            metadata = attrs.evolve(metadata, isolation=Isolation.SUBPROCESS)
        if "limits" in override:
            limits = attrs.evolve(metadata.limits, **override["limits"])
            metadata = attrs.evolve(metadata, limits=limits)
        if "sandbox" in override:
            metadata = attrs.evolve(
                metadata, sandbox=_sandbox_override(metadata.sandbox, override["sandbox"])
            )
        if "concurrency" in override:
            wanted = override["concurrency"]
            concurrency = Concurrency(
                max=wanted.get("max", metadata.concurrency.max),
                groups={**metadata.concurrency.groups, **wanted.get("groups", {})},
            )
            metadata = attrs.evolve(metadata, concurrency=concurrency)
        return metadata

    def _may_run_in_process(self, metadata: PluginMetadata, source: str) -> bool:
        """A plugin that asks for a sandbox cannot have one in the daemon's process: it
        runs in process only if the operator names it in ``in_process_allowed``."""
        if metadata.name in self.config.in_process_allowed:
            return True
        return source == "entry_point" and not metadata.sandbox.declared

    def _require_loaded(self, name: str) -> _Loaded:
        loaded = self._loaded.get(name)
        if loaded is None:
            raise PluginNotFound(f"plugin {name!r} is not loaded")
        return loaded

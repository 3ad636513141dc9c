"""The plugin model: what a plugin declares and the one class its author writes.

A plugin extends three faces at once, as in the CloudWorkstation design: CLI commands,
daemon API endpoints and event handlers (plus template, service, auth and storage
types it provides). Handlers are named in the specs, as in the design: the name of a
method of the plugin class.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from .._core._bus import compile_pattern
from .._core._ratelimit import RateLimit
from ._api import PluginAPI
from ._sandbox import Sandbox

PLUGIN_API_VERSION = "1.0"
"""The plugin API this host speaks: a plugin needing ``M.m`` loads when ``M`` equals our
major and ``m`` is at most our minor."""


def _tuple(items: Iterable[Any]) -> tuple[Any, ...]:
    """A ``tuple`` converter that mypy's attrs plugin can type (``tuple`` itself it
    cannot): specs take lists or tuples."""
    return tuple(items)


_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]{0,62}")
_v = attrs.validators


def check_plugin_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            "a plugin name must be 1-63 lowercase letters, digits, '-' or '_',"
            f" starting with a letter or digit, got {name!r}"
        )
    return name


def api_version_problem(required: str, host: str = PLUGIN_API_VERSION) -> str | None:
    """Why a plugin needing API ``required`` cannot load on ``host``; None if it can."""
    match = re.fullmatch(r"(\d+)\.(\d+)", required)
    if match is None:
        return f"api_version must look like '1.0', got {required!r}"
    major, minor = int(match[1]), int(match[2])
    host_major, host_minor = (int(part) for part in host.split("."))
    if major != host_major:
        return f"needs plugin API {required}, this host speaks {host} (major versions differ)"
    if minor > host_minor:
        return f"needs plugin API {required}, newer than this host's {host}"
    return None


class Isolation(enum.Enum):
    """Where a plugin runs."""

    IN_PROCESS = "in_process"
    """A Trio task in the daemon: fastest."""
    SUBPROCESS = "subprocess"
    """Its own Python process, speaking framed JSON over pipes."""


class HealthStatus(enum.Enum):
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"


@attrs.frozen
class Health:
    """What ``Plugin.health()`` returns. WARNING keeps a plugin in routing; CRITICAL takes
    it out (readiness) and, repeated, restarts it (liveness)."""

    status: HealthStatus = HealthStatus.PASSING
    message: str = ""


@attrs.frozen
class ResourceLimits:
    """Limits applied to a subprocess plugin (``None``: no limit)."""

    memory_mb: int | None = attrs.field(default=None, validator=_v.optional(_v.ge(16)))
    cpu_seconds: int | None = attrs.field(default=None, validator=_v.optional(_v.ge(1)))
    open_files: int | None = attrs.field(default=None, validator=_v.optional(_v.ge(16)))
    cpu_percent: int | None = attrs.field(default=None, validator=_v.optional(_v.ge(1)))
    """Share of one CPU over time (100: a whole CPU), enforced through a cgroup."""
    disk_mb: int | None = attrs.field(default=None, validator=_v.optional(_v.ge(1)))
    """Size of its data folder."""
    processes: int | None = attrs.field(default=None, validator=_v.optional(_v.ge(1)))
    """Processes (and threads) of the plugin together, its runner included."""


@attrs.frozen
class CLIFlagSpec:
    name: str
    type: str = attrs.field(default="string", validator=_v.in_(("string", "int", "float", "bool")))
    default: Any = None
    help: str = ""
    required: bool = False


def _group_limits(value: Mapping[str, int]) -> Mapping[str, int]:
    groups = dict(value)
    for name, limit in groups.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a concurrency group is named like an identifier, got {name!r}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(
                f"concurrency group {name!r} needs a whole-number limit of at least 1,"
                f" got {limit!r}"
            )
    return groups


@attrs.frozen
class Concurrency:
    """How many calls a plugin handles at once: ``max`` in its default group, and each
    named group's own limit (a handler names its group in its spec). Bus events reach
    a plugin one at a time, in order, whatever these say."""

    max: int = attrs.field(default=1, validator=[_v.instance_of(int), _v.ge(1)])
    groups: Mapping[str, int] = attrs.field(factory=dict, converter=_group_limits)


@attrs.frozen
class CLICommandSpec:
    """A CLI command; ``handler`` names a method ``async (self, args: dict) ->
    CommandResult``. ``parent`` nests it under another command (``cws analytics report``).

    ``protected`` and ``permissions`` are as on :class:`APIEndpointSpec`: the daemon runs
    the command only for a token holding every one of ``permissions``. Running any plugin
    command needs a valid token whatever ``protected`` says (commands can change things).
    """

    name: str
    handler: str
    usage: str = ""
    short: str = ""
    long: str = ""
    aliases: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    parent: str | None = None
    flags: tuple[CLIFlagSpec, ...] = attrs.field(default=(), converter=_tuple)
    protected: bool = True
    permissions: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    group: str | None = None
    """The concurrency group that runs it (None: the default group)."""

    @property
    def full_name(self) -> str:
        return f"{self.parent} {self.name}" if self.parent else self.name


def _upper(value: str) -> str:
    return str(value).upper()


@attrs.frozen
class APIEndpointSpec:
    """An HTTP endpoint; ``handler`` names a method ``async (self, request: APIRequest)
    -> APIResult``. ``protected`` needs a token, ``permissions`` need its scopes."""

    path: str = attrs.field()
    handler: str
    method: str = attrs.field(default="GET", converter=_upper)
    protected: bool = True
    rate_limit: RateLimit | None = None
    permissions: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    group: str | None = None
    """The concurrency group that runs it (None: the default group)."""

    @path.validator
    def _check_path(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not value.startswith("/"):
            raise ValueError(f"APIEndpointSpec.path must start with '/', got {value!r}")


@attrs.frozen
class EventHandlerSpec:
    """Events on topics matching ``event_type`` (wildcards allowed) go to the method
    named ``handler``: ``async (self, event: Event) -> None``."""

    event_type: str = attrs.field()
    handler: str
    ordered: bool = True
    """False: with ``[concurrency] max`` above 1, these events are handled side by side
    (in the default group) instead of one at a time in publish order."""

    @event_type.validator
    def _check_pattern(self, attribute: attrs.Attribute[str], value: str) -> None:
        compile_pattern(value)


@attrs.frozen
class Capabilities:
    """Everything a plugin adds to the daemon."""

    cli_commands: tuple[CLICommandSpec, ...] = attrs.field(default=(), converter=_tuple)
    api_endpoints: tuple[APIEndpointSpec, ...] = attrs.field(default=(), converter=_tuple)
    event_handlers: tuple[EventHandlerSpec, ...] = attrs.field(default=(), converter=_tuple)
    template_types: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    service_types: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    auth_providers: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    storage_providers: tuple[str, ...] = attrs.field(default=(), converter=_tuple)

    def group_problem(self, concurrency: Concurrency) -> str | None:
        """What is wrong with the groups the handlers name (None: nothing)."""
        specs: list[CLICommandSpec | APIEndpointSpec] = [*self.cli_commands, *self.api_endpoints]
        for spec in specs:
            if spec.group is not None and spec.group not in concurrency.groups:
                known = ", ".join(sorted(concurrency.groups)) or "none declared"
                return (
                    f"handler {spec.handler!r} names concurrency group {spec.group!r}, which"
                    f" the plugin does not declare ([concurrency.groups]: {known})"
                )
        return None

    def handler_names(self) -> set[str]:
        specs: list[Any] = [*self.cli_commands, *self.api_endpoints, *self.event_handlers]
        return {spec.handler for spec in specs}


@attrs.frozen
class PluginMetadata:
    name: str = attrs.field(converter=check_plugin_name)
    version: str
    description: str = ""
    author: str = ""
    api_version: str = PLUGIN_API_VERSION
    isolation: Isolation = Isolation.IN_PROCESS
    permissions: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    limits: ResourceLimits = attrs.field(factory=ResourceLimits)
    concurrency: Concurrency = attrs.field(factory=Concurrency)
    sandbox: Sandbox = attrs.field(factory=Sandbox)


@attrs.frozen
class CommandResult:
    output: str = ""
    exit_code: int = 0


@attrs.frozen
class APIResult:
    status: int = 200
    data: Any = None
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class APIRequest:
    """An HTTP request routed to a plugin endpoint."""

    method: str
    path: str
    query: Mapping[str, str] = attrs.field(factory=dict)
    body: Any = None
    principal: str | None = None
    scopes: tuple[str, ...] = ()
    path_params: Mapping[str, str] = attrs.field(factory=dict)
    """Values of the ``{name}`` segments of the endpoint's path."""


async def _no_secrets(name: str) -> str:
    raise PermissionError(f"no secret can be read here (asked for {name!r})")


@attrs.frozen
class PluginContext:
    """What the host gives a plugin: its name, a private data folder and its config.

    ``publish`` puts an event on the daemon's bus (``await ctx.publish(topic, data)``);
    ``await ctx.secret(name)`` reads a secret the operator stored (``cws secret set``)
    and granted it; ``ctx.api`` calls the daemon's HTTP API with a token scoped to the
    ``apis`` it was granted."""

    name: str
    data_dir: Path
    config: Mapping[str, Any]
    publish: Any = None
    read_secret: Callable[[str], Awaitable[str]] = _no_secrets
    """How :meth:`secret` asks the host (over the pipe, for a subprocess plugin)."""
    api: PluginAPI = attrs.field(
        default=attrs.Factory(lambda self: PluginAPI(self.name), takes_self=True)
    )

    async def secret(self, name: str) -> str:
        """The secret ``name``'s value.

        Raises:
            PermissionError: the plugin's ``[sandbox] secrets`` does not name it, or the
                operator has not granted it (the message says which, and the command).
            LookupError: it is granted but not set (``cws secret set NAME``).
        """
        return await self.read_secret(name)


class Plugin:
    """The one class a plugin author writes.

    Set ``metadata`` (for an entry-point plugin; a folder plugin's ``plugin.toml`` says
    it instead) and ``capabilities``, and write the handler methods the specs name.
    """

    metadata: ClassVar[PluginMetadata | None] = None
    capabilities: ClassVar[Capabilities] = Capabilities()
    preload: ClassVar[tuple[str, ...]] = ()
    """Modules a subprocess plugin's runs import before ``initialize`` (its heavy
    dependencies, such as a cloud SDK). A run's warm spare imports them ahead of time,
    so a restart does not wait for them; and an entry-point plugin, whose class the
    daemon imports to read its capabilities, keeps them out of the daemon."""

    async def initialize(self, ctx: PluginContext, config: Mapping[str, Any]) -> None:
        """Called once per run, before ``start``."""

    async def start(self, ctx: PluginContext) -> None:
        """Called after ``initialize``; the plugin serves once it returns."""

    async def stop(self, ctx: PluginContext) -> None:
        """Called when the plugin stops (unload, restart, shutdown)."""

    async def health(self) -> Health:
        """Drives the plugin's liveness probe (CRITICAL, repeated, restarts it) and, by
        default, its readiness."""
        return Health()

    async def ready(self) -> bool:
        """Whether to route requests to it now (its readiness probe). By default: its
        health is not CRITICAL. Override it to go out of routing without a restart, as
        a cloud provider does while its cloud is down."""
        return (await self.health()).status is not HealthStatus.CRITICAL

    async def status(self) -> dict[str, Any]:
        """Anything the plugin wants to show in ``cws plugins status``."""
        return {}


def check_handlers(plugin_class: type[Plugin]) -> None:
    """Every handler a spec names must be an async method of the class.

    Raises:
        TypeError: naming the missing or non-async handler.
    """
    import inspect

    for name in sorted(plugin_class.capabilities.handler_names()):
        method = getattr(plugin_class, name, None)
        if not inspect.iscoroutinefunction(method):
            raise TypeError(
                f"{plugin_class.__name__} names handler {name!r} in its capabilities"
                " but has no async method of that name"
            )

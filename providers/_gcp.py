"""GCP Compute Engine behind the ``CloudProvider`` protocol, with google-cloud-compute
over its REST transport.

Every request runs in a worker thread (``trio.to_thread.run_sync(...,
abandon_on_cancel=True)``) under ``call_resiliently`` with one circuit breaker named
``gcp``; google's own retries are turned off so that only our policy retries. Errors from
google.api_core, google.auth and requests are translated here and never leak.

Instance ids are ``"zone/name"`` (``"us-central1-a/web-1"``), which is what
``InstanceInfo.id`` holds. A bare ``"name"`` is also accepted: it is looked up in each
configured zone in order (the first zone that has it wins), or, with no zones
configured, in the aggregated list across all zones (several matches are ambiguous and
refused).

GCP's ``TERMINATED`` is a *stopped* VM (its disks are kept and it can be started again),
so it maps to ``InstanceState.STOPPED``; ``raw_state`` keeps the word. A deleted VM is
simply gone (``InstanceNotFound``).
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import random
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import google.auth.exceptions
import requests
import trio
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import compute_v1
from google.oauth2 import service_account

from ._base import (
    CircuitBreaker,
    InstanceInfo,
    InstanceNotFound,
    InstanceState,
    ProviderAuthError,
    ProviderError,
    ProviderRequestError,
    ProviderThrottled,
    ProviderUnavailable,
    Resilience,
    call_resiliently,
)

T = TypeVar("T")

_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

_STATES = {
    "PROVISIONING": InstanceState.PENDING,
    "STAGING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "STOPPING": InstanceState.STOPPING,
    "SUSPENDING": InstanceState.STOPPING,
    "STOPPED": InstanceState.STOPPED,
    "SUSPENDED": InstanceState.STOPPED,
    "TERMINATED": InstanceState.STOPPED,  # GCP's TERMINATED is a stopped VM, not a deleted one
    "REPAIRING": InstanceState.UNKNOWN,
}


def instance_info(instance: compute_v1.Instance) -> InstanceInfo:
    """Normalize one Compute Engine instance. ``launch_time`` is the last start if GCP
    reports one, else the creation time."""
    zone = instance.zone.rsplit("/", 1)[-1]
    stamp = instance.last_start_timestamp or instance.creation_timestamp
    return InstanceInfo(
        id=f"{zone}/{instance.name}",
        name=instance.name,
        type=instance.machine_type.rsplit("/", 1)[-1],
        region=zone.rsplit("-", 1)[0],
        zone=zone,
        state=_STATES.get(instance.status, InstanceState.UNKNOWN),
        raw_state=instance.status,
        launch_time=_parse_timestamp(stamp) if stamp else None,
        provider="gcp",
        tags=dict(instance.labels),
    )


def _parse_timestamp(stamp: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(stamp)
    except ValueError:
        raise ProviderError(f"gcp: unreadable timestamp {stamp!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def translate_error(
    exc: BaseException, what: str, not_found: type[ProviderError] = InstanceNotFound
) -> ProviderError:
    """The provider error for a google.api_core, google.auth or requests error.
    ``not_found`` is what a 404 means: a missing instance for a get or an action, a
    missing project for a list (ProviderRequestError), a vanished operation."""
    message = f"gcp: {what}: {getattr(exc, 'message', None) or exc}"
    error: type[ProviderError]
    if isinstance(exc, gexc.NotFound):
        error = not_found
    elif isinstance(
        exc,
        gexc.Unauthorized
        | gexc.Forbidden
        | google.auth.exceptions.RefreshError
        | google.auth.exceptions.DefaultCredentialsError,
    ):
        error = ProviderAuthError
    elif isinstance(exc, gexc.TooManyRequests):
        error = ProviderThrottled
    elif isinstance(
        exc,
        gexc.ServerError
        | gexc.RetryError
        | requests.ConnectionError
        | requests.Timeout
        | google.auth.exceptions.TransportError,
    ):
        error = ProviderUnavailable
    elif isinstance(exc, gexc.BadRequest):
        error = ProviderRequestError
    else:
        error = ProviderError
    return error(message)


_FOREIGN = (gexc.GoogleAPIError, google.auth.exceptions.GoogleAuthError, requests.RequestException)


def _split_id(instance_id: str) -> tuple[str | None, str]:
    zone, slash, name = instance_id.rpartition("/")
    if slash and not _NAME.match(zone):
        raise ProviderRequestError(f"gcp: expected 'zone/name' or 'name', got {instance_id!r}")
    if not _NAME.match(name):
        raise ProviderRequestError(f"gcp: expected 'zone/name' or 'name', got {instance_id!r}")
    return (zone or None), name


@attrs.frozen
class _Filters:
    """``{"state": "running"}`` and ``{"label.KEY": "VALUE"}``; a list means any of."""

    states: frozenset[InstanceState] | None
    labels: Mapping[str, frozenset[str]]

    @classmethod
    def parse(cls, filters: Mapping[str, str | list[str]] | None) -> _Filters:
        states: frozenset[InstanceState] | None = None
        labels: dict[str, frozenset[str]] = {}
        for key, value in (filters or {}).items():
            values = [value] if isinstance(value, str) else list(value)
            if key == "state":
                try:
                    states = frozenset(InstanceState(v) for v in values)
                except ValueError:
                    known = ", ".join(s.value for s in InstanceState)
                    raise ProviderRequestError(
                        f"gcp: state filter must be one of {known}, got {values!r}"
                    ) from None
            elif key.startswith("label.") and len(key) > len("label."):
                labels[key.removeprefix("label.")] = frozenset(values)
            else:
                raise ProviderRequestError(f"gcp: filters are 'state' and 'label.KEY', got {key!r}")
        return cls(states, labels)

    def __call__(self, info: InstanceInfo) -> bool:
        if self.states is not None and info.state not in self.states:
            return False
        return all(info.tags.get(key) in values for key, values in self.labels.items())


def _config_str(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is not None and not (isinstance(value, str) and value):
        raise ProviderRequestError(f"gcp: config {key!r} must be a non-empty string")
    return value


def _is_number(value: object, kind: type | tuple[type, ...] = (int, float)) -> bool:
    """Whether ``value`` is of ``kind`` and not a bool (TOML's ``true`` is no number)."""
    return isinstance(value, kind) and not isinstance(value, bool)


def _credentials(config: Mapping[str, Any], endpoint: str | None) -> Credentials | None:
    """Service-account credentials from ``credentials_file``, anonymous ones for a
    local endpoint or ``anonymous = true``, else None (google.auth's default lookup)."""
    path = _config_str(config, "credentials_file")
    if path is not None:
        read = service_account.Credentials.from_service_account_file
        try:
            credentials: Credentials = read(path, scopes=_SCOPES)  # type: ignore[no-untyped-call]
        except (OSError, ValueError, google.auth.exceptions.GoogleAuthError) as exc:
            raise ProviderAuthError(f"gcp: cannot read credentials_file {path!r}: {exc}") from None
        return credentials
    if config.get("anonymous", False) or endpoint is not None:
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    return None


@attrs.define(eq=False)
class GCPProvider:
    """Compute Engine instances of one project, in ``zones`` (or all zones when empty).

    Build it with ``GCPProvider.from_config(config)`` or ``open_gcp_provider(config)``.
    """

    project: str
    zones: tuple[str, ...]
    policy: Resilience
    _instances: compute_v1.InstancesClient = attrs.field(alias="instances")
    _operations: compute_v1.ZoneOperationsClient = attrs.field(alias="operations")
    page_size: int = 500
    poll_interval: float = 1.0
    operation_timeout: float | None = None
    """Seconds ``wait=True`` waits for an operation to be DONE (default: the deadline)."""
    provider_name = "gcp"  # class attributes, as in AWSProvider (not attrs fields)
    provider_version = importlib.metadata.version("google-cloud-compute")
    api_version = "1.0"

    _breaker: CircuitBreaker = attrs.field(init=False)
    _rng: random.Random = attrs.field(factory=random.Random, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @_breaker.default
    def _make_breaker(self) -> CircuitBreaker:
        return CircuitBreaker(
            "gcp",
            failure_threshold=self.policy.failure_threshold,
            reset_timeout=self.policy.reset_timeout,
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GCPProvider:
        """Build from the plugin's config.

        Keys: ``project`` (required); ``zones`` (list of zones; empty means all zones);
        ``api_endpoint`` (``"http://127.0.0.1:8080"`` for a local fake: the scheme is
        kept by the REST transport, and anonymous credentials are used);
        ``credentials_file`` (service-account JSON); ``anonymous`` (bool);
        ``page_size`` (default 500); ``poll_interval`` (seconds between operation
        polls, default 1); ``operation_timeout``; ``[resilience]``. Without
        credentials_file or anonymous, google.auth's default lookup runs, which may
        block (it can probe the metadata server): ``open_gcp_provider`` runs it in a
        thread.

        Raises:
            ProviderRequestError: a config value is missing or wrong.
            ProviderAuthError: no usable credentials.
        """
        project = _config_str(config, "project")
        if project is None:
            raise ProviderRequestError("gcp: config 'project' is required")
        zones = config.get("zones") or []
        if not (
            isinstance(zones, list | tuple)
            and all(isinstance(z, str) and _NAME.match(z) for z in zones)
        ):
            raise ProviderRequestError(
                f"gcp: config 'zones' must be a list of zone names like 'us-central1-a',"
                f" got {zones!r}"
            )
        endpoint = _config_str(config, "api_endpoint")
        page_size = config.get("page_size", 500)
        if not (_is_number(page_size, int) and 0 < page_size <= 500):
            raise ProviderRequestError(f"gcp: config 'page_size' must be 1..500, got {page_size!r}")
        poll_interval = config.get("poll_interval", 1.0)
        if not (_is_number(poll_interval) and poll_interval > 0):
            raise ProviderRequestError(
                f"gcp: config 'poll_interval' must be a positive number, got {poll_interval!r}"
            )
        operation_timeout = config.get("operation_timeout")
        if operation_timeout is not None and not (
            _is_number(operation_timeout) and operation_timeout > 0
        ):
            raise ProviderRequestError(
                "gcp: config 'operation_timeout' must be a positive number,"
                f" got {operation_timeout!r}"
            )
        policy = Resilience.from_config(config)  # before any client exists to be leaked
        credentials = _credentials(config, endpoint)
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        try:
            instances = compute_v1.InstancesClient(
                credentials=credentials, transport="rest", client_options=options
            )
            operations = compute_v1.ZoneOperationsClient(
                credentials=credentials, transport="rest", client_options=options
            )
        except _FOREIGN as exc:
            raise translate_error(exc, "building clients") from exc
        return cls(
            project=project,
            zones=tuple(zones),
            policy=policy,
            instances=instances,
            operations=operations,
            page_size=page_size,
            poll_interval=float(poll_interval),
            operation_timeout=None if operation_timeout is None else float(operation_timeout),
        )

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker every call goes through (what readiness reports)."""
        return self._breaker

    async def _call(
        self,
        what: str,
        function: Callable[[], T],
        *,
        not_found: type[ProviderError] = InstanceNotFound,
    ) -> T:
        """Run blocking ``function`` in a worker thread, resiliently, translating errors."""
        if self._closed:
            raise RuntimeError("this GCPProvider is closed; build a new one with from_config()")

        async def attempt() -> T:
            try:
                return await trio.to_thread.run_sync(function, abandon_on_cancel=True)
            except _FOREIGN as exc:
                raise translate_error(exc, what, not_found) from exc

        return await call_resiliently(
            attempt, breaker=self._breaker, policy=self.policy, rng=self._rng
        )

    @property
    def _options(self) -> dict[str, Any]:
        # retry=None: our policy retries, google's default retry would hide outages
        return {"retry": None, "timeout": self.policy.deadline}

    async def get_instance_info(self, instance_id: str) -> InstanceInfo:
        """One instance by ``"zone/name"`` or a bare name (see the module docstring).

        Raises:
            InstanceNotFound: no such instance.
            ProviderRequestError: a malformed id, or a bare name in several zones.
        """
        zone, name = _split_id(instance_id)
        if zone is not None:
            return instance_info(await self._get(zone, name))
        for zone in self.zones:
            try:
                return instance_info(await self._get(zone, name))
            except InstanceNotFound:
                continue
        if self.zones:
            raise InstanceNotFound(f"gcp: no instance {name!r} in zones {list(self.zones)}")
        found = [info for info in await self._aggregated(f'name = "{name}"') if info.name == name]
        if not found:
            raise InstanceNotFound(f"gcp: no instance {name!r} in project {self.project!r}")
        if len(found) > 1:
            ids = sorted(info.id for info in found)
            raise ProviderRequestError(f"gcp: {name!r} is in several zones, use one of {ids}")
        return found[0]

    async def _get(self, zone: str, name: str) -> compute_v1.Instance:
        return await self._call(
            f"get {zone}/{name}",
            lambda: self._instances.get(
                project=self.project, zone=zone, instance=name, **self._options
            ),
        )

    async def list_instances(
        self, *, filters: Mapping[str, str | list[str]] | None = None
    ) -> list[InstanceInfo]:
        """Every instance in the configured zones (all pages of each zone), or in all
        zones by the aggregated list when none are configured.

        ``filters``: ``{"state": "running"}`` (an ``InstanceState`` value) and
        ``{"label.KEY": "VALUE"}``; a list value means any of them. They are applied
        here, after listing, because one normalized state covers several GCP statuses.

        Raises:
            ProviderRequestError: an unknown filter or state.
        """
        keep = _Filters.parse(filters)
        if not self.zones:
            return [info for info in await self._aggregated(None) if keep(info)]
        found: list[InstanceInfo] = []
        for zone in self.zones:
            found.extend(info for info in await self._list_zone(zone) if keep(info))
        return found

    async def _list_zone(self, zone: str) -> list[InstanceInfo]:
        def every_page() -> list[InstanceInfo]:
            request = compute_v1.ListInstancesRequest(
                project=self.project, zone=zone, max_results=self.page_size
            )
            return _infos(self._instances.list(request=request, **self._options))

        # a 404 on a list is a wrong project or zone, not a missing instance
        return await self._call(f"list {zone}", every_page, not_found=ProviderRequestError)

    async def _aggregated(self, gcp_filter: str | None) -> list[InstanceInfo]:
        def every_page() -> list[InstanceInfo]:
            request = compute_v1.AggregatedListInstancesRequest(
                project=self.project, max_results=self.page_size
            )
            if gcp_filter is not None:
                request.filter = gcp_filter
            pager = self._instances.aggregated_list(request=request, **self._options)
            return _infos(i for _, scoped in pager for i in scoped.instances)

        return await self._call("aggregated list", every_page, not_found=ProviderRequestError)

    async def start_instance(self, instance_id: str, *, wait: bool = False) -> InstanceInfo:
        """Start a stopped (TERMINATED) instance; with ``wait``, until the operation is
        DONE. A SUSPENDED instance needs GCP's resume, which this does not call.

        Raises:
            InstanceNotFound, ProviderError: the operation failed.
        """
        return await self._act(instance_id, "start", wait=wait)

    async def stop_instance(
        self, instance_id: str, *, wait: bool = False, hibernate: bool = False
    ) -> InstanceInfo:
        """Stop an instance (it becomes TERMINATED); ``hibernate`` suspends it instead
        (SUSPENDED, memory kept). With ``wait``, until the operation is DONE.

        Raises:
            InstanceNotFound, ProviderError: the operation failed.
        """
        return await self._act(instance_id, "suspend" if hibernate else "stop", wait=wait)

    async def _act(self, instance_id: str, action: str, *, wait: bool) -> InstanceInfo:
        zone, name = _split_id(instance_id)
        if zone is None:
            zone = (await self.get_instance_info(name)).zone
        method = {
            "start": self._instances.start_unary,
            "stop": self._instances.stop_unary,
            "suspend": self._instances.suspend_unary,
        }[action]
        # *_unary: start()/stop() would poll through a client that ignores api_endpoint
        operation = await self._call(
            f"{action} {zone}/{name}",
            lambda: method(project=self.project, zone=zone, instance=name, **self._options),
        )
        _raise_for_operation(operation)
        if wait:
            await self._wait_until_done(zone, operation)
        return instance_info(await self._get(zone, name))

    async def _wait_until_done(self, zone: str, operation: compute_v1.Operation) -> None:
        """Poll the operation with ``get`` every ``poll_interval`` until it is DONE.

        Not ``wait``: GCP holds a ``wait`` request open for up to two minutes, longer
        than a call's deadline, so a slow operation would look like an outage."""
        timeout = self.operation_timeout or self.policy.deadline
        name = operation.name
        poll = functools.partial(
            self._operations.get, project=self.project, zone=zone, operation=name, **self._options
        )
        with trio.move_on_after(timeout):
            # Operation.status is an enum (Instance.status is a plain string)
            while operation.status != compute_v1.Operation.Status.DONE:
                await trio.sleep(self.poll_interval)
                operation = await self._call(f"poll {name}", poll, not_found=ProviderError)
            _raise_for_operation(operation)
            return
        raise ProviderUnavailable(f"gcp: operation {name} not DONE within {timeout}s")

    async def close(self) -> None:
        """Close both clients' HTTP sessions. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            # the transports' close() is untyped: it closes their requests sessions
            self._instances.transport.close()  # type: ignore[no-untyped-call]
            self._operations.transport.close()  # type: ignore[no-untyped-call]


def _infos(instances: Iterable[compute_v1.Instance]) -> list[InstanceInfo]:
    return [instance_info(instance) for instance in instances]


def _raise_for_operation(operation: compute_v1.Operation) -> None:
    errors = list(operation.error.errors) if "error" in operation else []
    if errors:
        detail = "; ".join(f"{e.code}: {e.message}" for e in errors)
        raise ProviderError(f"gcp: operation {operation.name} failed: {detail}")


@asynccontextmanager
async def open_gcp_provider(config: Mapping[str, Any]) -> AsyncIterator[GCPProvider]:
    """A ``GCPProvider`` built in a worker thread (credential lookup may block) and
    closed on exit."""
    provider = await trio.to_thread.run_sync(GCPProvider.from_config, config)
    try:
        yield provider
    finally:
        with trio.CancelScope(shield=True):
            await provider.close()

"""The AWS provider: EC2 through boto3, each blocking call in a Trio worker thread.

Every call goes through ``call_resiliently`` under one ``CircuitBreaker`` named ``"aws"``;
botocore's own retries are off (one attempt) so retries and backoff happen in one place.
botocore errors are translated into the ``providers`` error tree at the boundary
(``_translate``): nothing from botocore leaks.

States are normalized as::

    pending -> PENDING        running -> RUNNING      stopping -> STOPPING
    stopped -> STOPPED        shutting-down -> STOPPING (the instance is going away but
    terminated -> TERMINATED  is not gone yet; ``raw_state`` keeps "shutting-down")
    anything else -> UNKNOWN
"""

from __future__ import annotations

import datetime
import logging
import math
import random
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import boto3
import botocore.config
import botocore.exceptions
import trio

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

logger = logging.getLogger(__name__)

_STATES = {
    "pending": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "stopping": InstanceState.STOPPING,
    "stopped": InstanceState.STOPPED,
    "shutting-down": InstanceState.STOPPING,
    "terminated": InstanceState.TERMINATED,
}

_NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound"})
_AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "RequestExpired",
        "AccessDenied",
        "AccessDeniedException",
        "OptInRequired",
    }
)
_THROTTLE_CODES = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled"}
)
_UNAVAILABLE_CODES = frozenset(
    {"ServiceUnavailable", "Unavailable", "InternalError", "InternalFailure"}
)
_HIBERNATION_REFUSED_CODES = frozenset(
    {"UnsupportedHibernationConfiguration", "UnsupportedOperation", "InvalidParameter"}
)

_PAGE_SIZE_RANGE = (5, 1000)  # what EC2 accepts as DescribeInstances MaxResults


def _client_error_code(exc: botocore.exceptions.ClientError) -> tuple[str, str, int]:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(error.get("Code", "")), str(error.get("Message", "")), int(status or 0)


def _translate(exc: Exception) -> ProviderError:
    """The ``providers`` error for a botocore error (the caller raises it ``from exc``)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code, message, status = _client_error_code(exc)
        text = f"aws: {code}: {message}" if message else f"aws: {code}"
        if code in _NOT_FOUND_CODES:
            return InstanceNotFound(text)
        if code in _AUTH_CODES or status in (401, 403):
            return ProviderAuthError(text)
        if code in _THROTTLE_CODES or code.startswith("Throttl"):
            return ProviderThrottled(text)
        if code in _UNAVAILABLE_CODES or status >= 500:
            return ProviderUnavailable(text)
        if 400 <= status < 500:
            return ProviderRequestError(text)
        return ProviderError(text)
    text = f"aws: {exc}"
    if isinstance(
        exc,
        botocore.exceptions.NoCredentialsError
        | botocore.exceptions.PartialCredentialsError
        | botocore.exceptions.ProfileNotFound,
    ):
        return ProviderAuthError(text)
    if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
        # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError
        return ProviderUnavailable(text)
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return ProviderRequestError(text)
    return ProviderError(text)


def _refuses_hibernation(exc: botocore.exceptions.ClientError) -> bool:
    code, message, _ = _client_error_code(exc)
    if code == "UnsupportedHibernationConfiguration":
        return True
    return code in _HIBERNATION_REFUSED_CODES and "hibernat" in message.lower()


def _ec2_filters(filters: Mapping[str, str | list[str]]) -> list[dict[str, Any]]:
    ec2_filters = []
    for name, values in filters.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise TypeError(f"filter {name!r} must be a str or a list of str, got {values!r}")
        if name == "state":
            # The normalized filter every provider understands: map the
            # InstanceState values back to EC2's raw state names.
            known = {state.value for state in _STATES.values()}
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ProviderRequestError(
                    f"aws: state filter values are {sorted(known)}, got {unknown}"
                )
            name = "instance-state-name"
            values = [raw for raw, state in _STATES.items() if state.value in values]
        ec2_filters.append({"Name": name, "Values": list(values)})
    return ec2_filters


def _page_size(config: Mapping[str, Any]) -> int | None:
    size = config.get("page_size")
    if size is None:
        return None
    low, high = _PAGE_SIZE_RANGE
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"page_size must be an int, got {size!r}")
    if not low <= size <= high:
        raise ValueError(f"page_size must be in {low}..{high}, got {size}")
    return size


def _build_client(config: Mapping[str, Any], threads: int) -> Any:
    """A boto3 EC2 client for ``config`` (blocking: loads botocore's service model).

    ``threads`` is how many worker threads Trio may run at once: one pooled connection
    each, so no call waits on urllib3's pool while holding a thread.
    """
    client_config = botocore.config.Config(
        max_pool_connections=max(10, threads),
        connect_timeout=float(config.get("connect_timeout", 5.0)),
        read_timeout=float(config.get("read_timeout", 20.0)),
        retries={"mode": "standard", "total_max_attempts": 1},  # call_resiliently retries
    )
    session = boto3.session.Session(
        profile_name=config.get("profile"), region_name=config.get("region", "us-east-1")
    )
    return session.client("ec2", endpoint_url=config.get("endpoint_url"), config=client_config)


@attrs.define(eq=False)
class AWSProvider:
    """EC2 instances as a ``CloudProvider``. Make one with ``await AWSProvider.create(config)``
    and ``await provider.close()`` when done."""

    provider_name = "aws"
    provider_version = boto3.__version__
    api_version = "1.0"

    _client: Any
    _policy: Resilience
    _page_size: int | None = None
    _wait_delay: float = 1.0
    _breaker: CircuitBreaker = attrs.field(init=False)
    _rng: random.Random = attrs.field(factory=random.Random, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self._breaker = CircuitBreaker(
            "aws",
            failure_threshold=self._policy.failure_threshold,
            reset_timeout=self._policy.reset_timeout,
        )

    @classmethod
    async def create(cls, config: Mapping[str, Any]) -> AWSProvider:
        """Build the provider and its one EC2 client.

        Args:
            config: ``region`` (default ``us-east-1``), ``profile``, ``endpoint_url`` (moto,
                a VPC endpoint), ``page_size`` (DescribeInstances MaxResults, 5..1000),
                ``connect_timeout`` / ``read_timeout`` (seconds, default 5 / 20),
                ``wait_delay`` (seconds between waiter polls, default 1) and a
                ``resilience`` table (see ``Resilience``).

        Raises:
            ProviderAuthError: the profile does not exist.
            TypeError, ValueError: a config value has the wrong type or range.
        """
        policy = Resilience.from_config(config)
        page_size = _page_size(config)
        wait_delay = float(config.get("wait_delay", 1.0))
        if wait_delay <= 0:
            raise ValueError(f"wait_delay must be > 0, got {wait_delay}")
        threads = int(trio.to_thread.current_default_thread_limiter().total_tokens)
        try:
            client = await trio.to_thread.run_sync(_build_client, config, threads)
        except botocore.exceptions.BotoCoreError as exc:
            raise _translate(exc) from exc
        return cls(client, policy, page_size, wait_delay)

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker every call goes through (what readiness reports)."""
        return self._breaker

    @property
    def region(self) -> str:
        return str(self._client.meta.region_name)

    async def _call(self, function: Callable[[], T]) -> T:
        """Run blocking ``function`` in a worker thread, resiliently, translating errors."""
        if self._closed:
            raise RuntimeError("this AWSProvider is closed; make a new one with create()")

        async def attempt() -> T:
            try:
                return await trio.to_thread.run_sync(function, abandon_on_cancel=True)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise _translate(exc) from exc

        return await call_resiliently(
            attempt, breaker=self._breaker, policy=self._policy, rng=self._rng
        )

    def _info(self, raw: Mapping[str, Any]) -> InstanceInfo:
        tags = {tag["Key"]: tag["Value"] for tag in raw.get("Tags", [])}
        raw_state = str(raw.get("State", {}).get("Name", ""))
        launch_time = raw.get("LaunchTime")
        if isinstance(launch_time, datetime.datetime):
            if launch_time.tzinfo is None:  # EC2 times are UTC
                launch_time = launch_time.replace(tzinfo=datetime.UTC)
            launch_time = launch_time.astimezone(datetime.UTC)
        else:
            launch_time = None
        return InstanceInfo(
            id=raw["InstanceId"],
            name=tags.get("Name", ""),
            type=raw.get("InstanceType", ""),
            region=self.region,
            zone=raw.get("Placement", {}).get("AvailabilityZone", ""),
            state=_STATES.get(raw_state, InstanceState.UNKNOWN),
            raw_state=raw_state,
            launch_time=launch_time,
            provider=self.provider_name,
            tags=tags,
        )

    async def list_instances(
        self, *, filters: Mapping[str, str | list[str]] | None = None
    ) -> list[InstanceInfo]:
        """Every instance matching ``filters`` (EC2 filter names, e.g.
        ``{"instance-state-name": ["running"], "tag:Name": "web"}``), across all pages.
        The normalized ``{"state": "stopping"}`` (InstanceState values, as every
        provider takes) matches the EC2 states that normalize to it.

        Raises:
            ProviderRequestError: EC2 rejected a filter.
            TypeError: a filter value is not a str or a list of str.
        """
        kwargs: dict[str, Any] = {"Filters": _ec2_filters(filters or {})}
        if self._page_size is not None:
            kwargs["PaginationConfig"] = {"PageSize": self._page_size}

        def describe_all() -> list[dict[str, Any]]:
            paginator = self._client.get_paginator("describe_instances")
            return [
                instance
                for page in paginator.paginate(**kwargs)
                for reservation in page.get("Reservations", [])
                for instance in reservation.get("Instances", [])
            ]

        return [self._info(raw) for raw in await self._call(describe_all)]

    async def get_instance_info(self, instance_id: str) -> InstanceInfo:
        """The instance ``instance_id``.

        Raises:
            InstanceNotFound: no such instance.
            ProviderRequestError: the id is malformed.
        """
        if not isinstance(instance_id, str):
            raise TypeError(f"instance_id must be a str, got {instance_id!r}")

        def describe() -> list[dict[str, Any]]:
            response = self._client.describe_instances(InstanceIds=[instance_id])
            return [
                instance
                for reservation in response.get("Reservations", [])
                for instance in reservation.get("Instances", [])
            ]

        instances = await self._call(describe)
        if not instances:
            raise InstanceNotFound(f"aws: no instance {instance_id!r}")
        return self._info(instances[0])

    async def _wait_until(self, waiter_name: str, instance_id: str) -> None:
        # The waiter polls every wait_delay seconds and gives up just inside the call's
        # deadline, so the worker thread is not left polling after call_resiliently
        # abandons it.
        attempts = max(1, math.floor(self._policy.deadline / self._wait_delay) - 1)

        def wait() -> None:
            waiter = self._client.get_waiter(waiter_name)
            try:
                waiter.wait(
                    InstanceIds=[instance_id],
                    WaiterConfig={"Delay": self._wait_delay, "MaxAttempts": attempts},
                )
            except botocore.exceptions.WaiterError as exc:
                last = exc.last_response or {}
                if "Error" in last:  # the poll itself failed: translate EC2's error
                    raise botocore.exceptions.ClientError(last, "DescribeInstances") from exc
                # The instance went to a state it will not come back from, or took too long:
                # the cloud answered, so this is not an outage to retry.
                raise ProviderError(f"aws: {instance_id}: {exc}") from exc

        await self._call(wait)

    async def start_instance(self, instance_id: str, *, wait: bool = False) -> InstanceInfo:
        """Start ``instance_id``; with ``wait``, until EC2 reports it running (bounded by
        the resilience deadline). Returns the instance as it is afterwards."""
        await self._call(lambda: self._client.start_instances(InstanceIds=[instance_id]))
        if wait:
            await self._wait_until("instance_running", instance_id)
        return await self.get_instance_info(instance_id)

    async def stop_instance(
        self, instance_id: str, *, wait: bool = False, hibernate: bool = False
    ) -> InstanceInfo:
        """Stop ``instance_id``; with ``wait``, until EC2 reports it stopped (bounded by
        the resilience deadline). Returns the instance as it is afterwards.

        With ``hibernate``, ask EC2 to hibernate; if EC2 refuses (the instance was not
        launched with hibernation enabled, or its type cannot hibernate), log a warning
        and stop it plainly instead: the caller asked for the instance to stop, and
        hibernation only makes the next start faster.
        """

        def stop() -> None:
            if hibernate:
                try:
                    self._client.stop_instances(InstanceIds=[instance_id], Hibernate=True)
                    return
                except botocore.exceptions.ClientError as exc:
                    if not _refuses_hibernation(exc):
                        raise
                    logger.warning(
                        "aws: %s cannot hibernate (%s); stopping it instead",
                        instance_id,
                        _client_error_code(exc)[0],
                    )
            self._client.stop_instances(InstanceIds=[instance_id])

        await self._call(stop)
        if wait:
            await self._wait_until("instance_stopped", instance_id)
        return await self.get_instance_info(instance_id)

    async def close(self) -> None:
        """Close the client's connections. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._client.close()

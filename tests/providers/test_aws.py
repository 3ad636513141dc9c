"""AWSProvider against a real moto server on 127.0.0.1, and against a wire-level front
(tests/providers/_ec2_wire.py) where moto cannot fail the way EC2 does."""

from __future__ import annotations

import datetime
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import pytest
import trio
import trio.testing
from moto.server import ThreadedMotoServer

from providers import (
    BreakerState,
    CircuitOpen,
    InstanceNotFound,
    InstanceState,
    ProviderAuthError,
    ProviderError,
    ProviderRequestError,
    ProviderThrottled,
    ProviderUnavailable,
)
from providers._aws import AWSProvider

from ._ec2_wire import Fault, Reply, serve_ec2_front, serve_silence

AMI = "ami-03cf127a"  # in moto's default image list
STOP_ACCEPTED = (
    '<StopInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
    "<requestId>00000000-0000-0000-0000-000000000000</requestId><instancesSet/>"
    "</StopInstancesResponse>"
)
FAST = {"deadline": 10.0, "retries": 3, "backoff_initial": 0.01, "backoff_max": 0.05}


@pytest.fixture(autouse=True)
def _dummy_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    # Never real AWS: dummy keys, and no shared config or credentials file to pick up.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def start_moto(port: int = 0) -> ThreadedMotoServer:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


def moto_url(server: ThreadedMotoServer) -> str:
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


@pytest.fixture
def moto() -> Iterator[ThreadedMotoServer]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = start_moto()
    # moto's backends are process-wide: start every test from an empty account.
    request = urllib.request.Request(f"{moto_url(server)}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    yield server
    server.stop()


@pytest.fixture
def ec2(moto: ThreadedMotoServer) -> Any:
    """A plain boto3 client for setting the scene."""
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_url(moto))


def launch(ec2: Any, *, name: str | None = None, tags: dict[str, str] | None = None) -> str:
    tags = {**(tags or {}), **({"Name": name} if name else {})}
    kwargs: dict[str, Any] = {}
    if tags:
        pairs = [{"Key": k, "Value": v} for k, v in tags.items()]
        kwargs["TagSpecifications"] = [{"ResourceType": "instance", "Tags": pairs}]
    response = ec2.run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro", **kwargs
    )
    return str(response["Instances"][0]["InstanceId"])


def config(url: str, **extra: Any) -> dict[str, Any]:
    resilience = {**FAST, **extra.pop("resilience", {})}
    return {"region": "us-east-1", "endpoint_url": url, "resilience": resilience, **extra}


@pytest.fixture
async def aws(moto: ThreadedMotoServer) -> AsyncIterator[AWSProvider]:
    provider = await AWSProvider.create(config(moto_url(moto), wait_delay=0.05))
    yield provider
    await provider.close()


async def test_list_instances_reads_every_page(moto: ThreadedMotoServer, ec2: Any) -> None:
    ids = {launch(ec2) for _ in range(12)}  # one reservation each: moto pages reservations
    # The premise: at page size 5 the server really answers in several pages.
    assert "NextToken" in ec2.describe_instances(MaxResults=5)
    provider = await AWSProvider.create(config(moto_url(moto), page_size=5))
    try:
        with trio.fail_after(20):
            listed = await provider.list_instances()
    finally:
        await provider.close()
    assert sorted(info.id for info in listed) == sorted(ids)


async def test_list_instances_filters_by_state_and_tag(aws: AWSProvider, ec2: Any) -> None:
    web, db, stopped = launch(ec2, name="web"), launch(ec2, name="db"), launch(ec2, name="web")
    ec2.stop_instances(InstanceIds=[stopped])
    with trio.fail_after(20):
        running = await aws.list_instances(filters={"instance-state-name": ["running"]})
        named_web = await aws.list_instances(filters={"tag:Name": "web"})
        both = await aws.list_instances(
            filters={"tag:Name": "web", "instance-state-name": ["running"]}
        )
    assert {i.id for i in running} == {web, db}
    assert {i.id for i in named_web} == {web, stopped}
    assert [i.id for i in both] == [web]


async def test_the_normalized_state_filter_matches_ec2_states(aws: AWSProvider, ec2: Any) -> None:
    running, stopped = launch(ec2), launch(ec2)
    ec2.stop_instances(InstanceIds=[stopped])
    with trio.fail_after(20):
        only_stopped = await aws.list_instances(filters={"state": "stopped"})
        only_running = await aws.list_instances(filters={"state": ["running"]})
        with pytest.raises(ProviderRequestError, match="state filter values are"):
            await aws.list_instances(filters={"state": "asleep"})
    assert [i.id for i in only_stopped] == [stopped]
    assert [i.id for i in only_running] == [running]


async def test_list_instances_rejects_a_filter_value_of_the_wrong_type(aws: AWSProvider) -> None:
    with pytest.raises(TypeError, match="must be a str or a list of str"):
        await aws.list_instances(filters={"tag:Name": 3})  # type: ignore[dict-item]


async def test_get_instance_info_fills_every_field(aws: AWSProvider, ec2: Any) -> None:
    instance_id = launch(ec2, name="web-1", tags={"team": "research"})
    with trio.fail_after(20):
        info = await aws.get_instance_info(instance_id)
    assert info.id == instance_id
    assert info.name == "web-1"
    assert info.type == "t3.micro"
    assert info.region == "us-east-1"
    assert info.zone.startswith("us-east-1")
    assert (info.state, info.raw_state) == (InstanceState.RUNNING, "running")
    assert info.provider == "aws"
    assert info.tags == {"Name": "web-1", "team": "research"}
    assert info.launch_time is not None
    assert info.launch_time.utcoffset() == datetime.timedelta(0)
    age = datetime.datetime.now(datetime.UTC) - info.launch_time
    assert datetime.timedelta(minutes=-5) < age < datetime.timedelta(minutes=5)
    assert json.loads(json.dumps(info.as_dict()))["state"] == "running"


async def test_missing_instance_raises_instance_not_found(aws: AWSProvider) -> None:
    with trio.fail_after(20), pytest.raises(InstanceNotFound, match=r"InvalidInstanceID\.NotFound"):
        await aws.get_instance_info("i-0123456789abcdef0")
    # A missing instance is an answer, not an outage.
    assert aws._breaker.state is BreakerState.CLOSED


async def test_stop_then_start_waits_for_each_state(aws: AWSProvider, ec2: Any) -> None:
    instance_id = launch(ec2, name="worker")
    with trio.fail_after(20):
        stopped = await aws.stop_instance(instance_id, wait=True)
        assert (stopped.state, stopped.raw_state) == (InstanceState.STOPPED, "stopped")
        started = await aws.start_instance(instance_id, wait=True)
        assert (started.state, started.raw_state) == (InstanceState.RUNNING, "running")


async def test_terminated_instance_reports_terminated(aws: AWSProvider, ec2: Any) -> None:
    instance_id = launch(ec2)
    ec2.terminate_instances(InstanceIds=[instance_id])
    with trio.fail_after(20):
        info = await aws.get_instance_info(instance_id)
    assert (info.state, info.raw_state) == (InstanceState.TERMINATED, "terminated")


async def test_starting_a_terminated_instance_is_a_request_error(moto: ThreadedMotoServer) -> None:
    # What EC2 answers (moto would start it anyway).
    refusal = Fault(400, "IncorrectInstanceState", "The instance is not in a valid state")
    with serve_ec2_front(moto_url(moto), lambda params: refusal) as front:
        provider = await AWSProvider.create(config(front.url))
        try:
            with trio.fail_after(20), pytest.raises(ProviderRequestError, match="Incorrect"):
                await provider.start_instance("i-0123456789abcdef0", wait=True)
        finally:
            await provider.close()
    assert front.actions == ["StartInstances"]  # an answer, not retried


async def test_wait_ends_at_once_when_the_instance_cannot_get_there(
    moto: ThreadedMotoServer, ec2: Any
) -> None:
    # EC2 accepted the stop, then the instance was terminated under us: the waiter sees a
    # terminal state and gives up at once rather than polling until the deadline.
    instance_id = launch(ec2)
    ec2.terminate_instances(InstanceIds=[instance_id])
    accepted = Reply(STOP_ACCEPTED)

    def accept_stop(params: dict[str, str]) -> Reply | None:
        return accepted if params.get("Action") == "StopInstances" else None

    with serve_ec2_front(moto_url(moto), accept_stop) as front:
        provider = await AWSProvider.create(config(front.url, wait_delay=0.05))
        try:
            with trio.fail_after(5), pytest.raises(ProviderError, match="terminal") as caught:
                await provider.stop_instance(instance_id, wait=True)
        finally:
            await provider.close()
    assert not isinstance(caught.value, ProviderUnavailable)
    assert front.actions == ["StopInstances", "DescribeInstances"]


async def test_hibernate_when_ec2_accepts_it_stops(aws: AWSProvider, ec2: Any) -> None:
    # moto accepts Hibernate=True and stops the instance.
    instance_id = launch(ec2)
    with trio.fail_after(20):
        info = await aws.stop_instance(instance_id, hibernate=True, wait=True)
    assert info.state is InstanceState.STOPPED


async def test_hibernate_refused_falls_back_to_plain_stop(
    moto: ThreadedMotoServer, ec2: Any, caplog: pytest.LogCaptureFixture
) -> None:
    instance_id = launch(ec2)
    refusal = Fault(400, "UnsupportedHibernationConfiguration", "not configured to hibernate")

    def refuse_hibernation(params: dict[str, str]) -> Fault | None:
        wants_hibernation = params.get("Hibernate") == "true"
        return refusal if params.get("Action") == "StopInstances" and wants_hibernation else None

    with serve_ec2_front(moto_url(moto), refuse_hibernation) as front:
        provider = await AWSProvider.create(config(front.url))
        try:
            with trio.fail_after(20), caplog.at_level(logging.WARNING, "providers._aws"):
                info = await provider.stop_instance(instance_id, hibernate=True)
        finally:
            await provider.close()
    assert info.state is InstanceState.STOPPED
    stops = [r for r in front.requests if r.get("Action") == "StopInstances"]
    assert [r.get("Hibernate") for r in stops] == ["true", None]
    assert "cannot hibernate" in caplog.text


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault(400, "InvalidInstanceID.Malformed"), ProviderRequestError),
        (Fault(401, "AuthFailure"), ProviderAuthError),
        (Fault(403, "UnauthorizedOperation"), ProviderAuthError),
        (Fault(503, "RequestLimitExceeded"), ProviderThrottled),
        (Fault(500, "InternalError"), ProviderUnavailable),
        (Fault(503, "Unavailable"), ProviderUnavailable),
    ],
)
async def test_ec2_errors_are_translated(fault: Fault, expected: type[ProviderError]) -> None:
    with serve_ec2_front(None, lambda params: fault) as front:
        provider = await AWSProvider.create(config(front.url, resilience={"retries": 0}))
        try:
            with trio.fail_after(20), pytest.raises(expected, match=fault.code) as caught:
                await provider.get_instance_info("i-0123456789abcdef0")
        finally:
            await provider.close()
    assert type(caught.value).__module__.startswith("providers.")


async def test_missing_credentials_raise_provider_auth_error(
    moto: ThreadedMotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    provider = await AWSProvider.create(config(moto_url(moto)))
    try:
        with trio.fail_after(20), pytest.raises(ProviderAuthError, match="credentials"):
            await provider.list_instances()
    finally:
        await provider.close()


async def test_throttling_is_retried_until_it_succeeds(moto: ThreadedMotoServer, ec2: Any) -> None:
    instance_id = launch(ec2)
    throttle = Fault(503, "RequestLimitExceeded", "Request limit exceeded.")
    with serve_ec2_front(
        moto_url(moto), lambda params: throttle if len(front.requests) <= 2 else None
    ) as front:
        provider = await AWSProvider.create(config(front.url))
        try:
            with trio.fail_after(20):
                listed = await provider.list_instances()
        finally:
            await provider.close()
    assert [info.id for info in listed] == [instance_id]
    assert front.actions == ["DescribeInstances"] * 3  # two throttled, then moto answered


async def test_throttling_without_end_raises_provider_throttled() -> None:
    throttle = Fault(503, "RequestLimitExceeded", "Request limit exceeded.")
    with serve_ec2_front(None, lambda params: throttle) as front:
        provider = await AWSProvider.create(config(front.url, resilience={"retries": 2}))
        try:
            with trio.fail_after(20), pytest.raises(ProviderThrottled):
                await provider.list_instances()
        finally:
            await provider.close()
    assert len(front.requests) == 3  # botocore retried nothing itself: 1 + 2 retries


async def test_silent_endpoint_is_unavailable_after_the_read_timeout() -> None:
    with serve_silence() as url:
        provider = await AWSProvider.create(
            config(url, read_timeout=0.3, resilience={"retries": 0})
        )
        try:
            with trio.fail_after(10), pytest.raises(ProviderUnavailable, match="timeout"):
                await provider.list_instances()
        finally:
            await provider.close()


async def test_outage_opens_the_breaker_and_recovery_closes_it(
    ec2: Any, moto: ThreadedMotoServer, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.rate = 1.0  # real time for real I/O; jump() skips the breaker's wait
    instance_id = launch(ec2)
    port = moto.get_host_and_port()[1]
    resilience = {"retries": 1, "failure_threshold": 2, "reset_timeout": 60.0}
    provider = await AWSProvider.create(config(moto_url(moto), resilience=resilience))
    revived = None
    try:
        with trio.fail_after(20):
            assert [i.id for i in await provider.list_instances()] == [instance_id]
            moto.stop()
            with trio.fail_after(5), pytest.raises(ProviderUnavailable) as outage:
                await provider.list_instances()
            assert not isinstance(outage.value, CircuitOpen)
            assert provider._breaker.state is BreakerState.OPEN
            with pytest.raises(CircuitOpen):
                await provider.list_instances()
            revived = start_moto(port)  # the same port: the provider's endpoint is fixed
            with pytest.raises(CircuitOpen):  # still open until reset_timeout passes
                await provider.list_instances()
        # Outside any fail_after: jumping moves their deadlines too.
        mock_clock.jump(60.0)
        with trio.fail_after(20):
            assert [i.id for i in await provider.list_instances()] == [instance_id]
        assert provider._breaker.state is BreakerState.CLOSED
    finally:
        await provider.close()
        if revived is not None:
            revived.stop()
        moto.start()  # the fixture stops what it started


async def test_closed_provider_refuses_calls(aws: AWSProvider) -> None:
    await aws.close()
    await aws.close()
    with pytest.raises(RuntimeError, match="closed; make a new one"):
        await aws.list_instances()


def test_provider_identity() -> None:
    assert (AWSProvider.provider_name, AWSProvider.api_version) == ("aws", "1.0")
    assert AWSProvider.provider_version == boto3.__version__

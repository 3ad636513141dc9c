"""GCPProvider (google-cloud-compute over REST) against a real HTTP fake of the Compute
Engine API on 127.0.0.1 (tests/providers/fake_compute.py): only the wire is faked."""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from providers import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    InstanceNotFound,
    InstanceState,
    ProviderAuthError,
    ProviderError,
    ProviderRequestError,
    ProviderThrottled,
    ProviderUnavailable,
)
from providers._gcp import GCPProvider, open_gcp_provider

from .fake_compute import FakeCompute, make_instance

FAST = {"deadline": 10.0, "retries": 3, "backoff_initial": 0.01, "backoff_max": 0.05}
PROJECT = "proj"
ZONE = "us-central1-a"
OTHER_ZONE = "europe-west1-b"
INSTANCES = f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances"
OPERATIONS = f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/operations"
AGGREGATED = f"/compute/v1/projects/{PROJECT}/aggregated/instances"


def config(fake: FakeCompute, **extra: Any) -> dict[str, Any]:
    resilience = {**FAST, **extra.pop("resilience", {})}
    return {
        "project": PROJECT,
        "api_endpoint": fake.endpoint,
        "poll_interval": 0.01,
        "resilience": resilience,
        **extra,
    }


@pytest.fixture
def fake() -> Iterator[FakeCompute]:
    compute = FakeCompute(project=PROJECT)
    compute.start()
    yield compute
    compute.go_down()


@pytest.fixture
async def gcp(fake: FakeCompute) -> AsyncIterator[GCPProvider]:
    """Configured with one zone, built the way the plugin builds it."""
    async with open_gcp_provider(config(fake, zones=[ZONE])) as provider:
        yield provider


@pytest.fixture
async def all_zones(fake: FakeCompute) -> AsyncIterator[GCPProvider]:
    """No zones configured: lists go through the aggregated list."""
    async with open_gcp_provider(config(fake)) as provider:
        yield provider


def list_pages(fake: FakeCompute, path: str) -> list[str | None]:
    """The pageToken of every list request the fake saw at ``path`` (None: the first)."""
    return [
        query.get("pageToken")
        for (method, seen), query in zip(fake.requests, fake.queries, strict=True)
        if (method, seen) == ("GET", path)
    ]


def polls(fake: FakeCompute) -> list[tuple[str, str]]:
    return [(m, p) for m, p in fake.requests if p.startswith(OPERATIONS)]


# -- get --


async def test_get_instance_info_fills_every_field(gcp: GCPProvider, fake: FakeCompute) -> None:
    fake.add(
        make_instance(
            "web-1",
            machine_type="n2-standard-4",
            labels={"team": "research", "env": "prod"},
            created="2024-05-01T10:00:00.000-07:00",
        )
    )
    with trio.fail_after(20):
        info = await gcp.get_instance_info(f"{ZONE}/web-1")
    assert info.id == f"{ZONE}/web-1"
    assert info.name == "web-1"
    assert info.type == "n2-standard-4"
    assert (info.region, info.zone) == ("us-central1", ZONE)
    assert (info.state, info.raw_state) == (InstanceState.RUNNING, "RUNNING")
    assert info.provider == "gcp"
    assert info.tags == {"team": "research", "env": "prod"}
    assert info.launch_time == datetime.datetime(2024, 5, 1, 17, 0, tzinfo=datetime.UTC)
    assert info.launch_time.utcoffset() is not None
    assert json.loads(json.dumps(info.as_dict()))["state"] == "running"
    assert fake.requests == [("GET", f"{INSTANCES}/web-1")]


async def test_launch_time_is_the_last_start_when_there_is_one(
    gcp: GCPProvider, fake: FakeCompute
) -> None:
    fake.add(make_instance("web-1", last_start="2024-06-02T08:30:00Z"))
    with trio.fail_after(20):
        info = await gcp.get_instance_info(f"{ZONE}/web-1")
    assert info.launch_time == datetime.datetime(2024, 6, 2, 8, 30, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("PROVISIONING", InstanceState.PENDING),
        ("STAGING", InstanceState.PENDING),
        ("STOPPING", InstanceState.STOPPING),
        ("SUSPENDING", InstanceState.STOPPING),
        ("TERMINATED", InstanceState.STOPPED),
        ("SUSPENDED", InstanceState.STOPPED),
        ("REPAIRING", InstanceState.UNKNOWN),
    ],
)
async def test_states_are_normalized_and_the_raw_word_kept(
    gcp: GCPProvider, fake: FakeCompute, status: str, state: InstanceState
) -> None:
    fake.add(make_instance("vm", status=status))
    with trio.fail_after(20):
        info = await gcp.get_instance_info(f"{ZONE}/vm")
    assert (info.state, info.raw_state) == (state, status)


async def test_bare_name_is_looked_up_in_each_configured_zone(fake: FakeCompute) -> None:
    fake.add(make_instance("db-1", zone=OTHER_ZONE))
    async with open_gcp_provider(config(fake, zones=[ZONE, OTHER_ZONE])) as provider:
        with trio.fail_after(20):
            info = await provider.get_instance_info("db-1")
        assert info.id == f"{OTHER_ZONE}/db-1"
        assert fake.requests == [
            ("GET", f"{INSTANCES}/db-1"),  # 404 in the first zone: on to the next
            ("GET", f"/compute/v1/projects/{PROJECT}/zones/{OTHER_ZONE}/instances/db-1"),
        ]
        assert provider.breaker.state is BreakerState.CLOSED
        with trio.fail_after(20), pytest.raises(InstanceNotFound, match="in zones"):
            await provider.get_instance_info("nowhere")


async def test_bare_name_without_zones_uses_the_aggregated_list(
    all_zones: GCPProvider, fake: FakeCompute
) -> None:
    fake.add(make_instance("web-1"))
    fake.add(make_instance("db-1", zone=OTHER_ZONE))
    with trio.fail_after(20):
        info = await all_zones.get_instance_info("db-1")
    assert info.id == f"{OTHER_ZONE}/db-1"
    assert fake.requests == [("GET", AGGREGATED)]
    assert fake.queries[0]["filter"] == 'name = "db-1"'


async def test_bare_name_in_several_zones_is_ambiguous(
    all_zones: GCPProvider, fake: FakeCompute
) -> None:
    fake.add(make_instance("web-1"))
    fake.add(make_instance("web-1", zone=OTHER_ZONE))
    with trio.fail_after(20), pytest.raises(ProviderRequestError, match="several zones"):
        await all_zones.get_instance_info("web-1")


async def test_missing_instance_raises_instance_not_found(gcp: GCPProvider) -> None:
    with trio.fail_after(20), pytest.raises(InstanceNotFound, match="was not found") as caught:
        await gcp.get_instance_info(f"{ZONE}/ghost")
    assert type(caught.value).__module__.startswith("providers.")
    # A missing instance is an answer, not an outage.
    assert gcp.breaker.state is BreakerState.CLOSED
    assert gcp.breaker.failures == 0


@pytest.mark.parametrize("instance_id", ["", "Web_1", "us-central1-a/", "a/b/c", "zone/UPPER"])
async def test_malformed_id_is_a_request_error(
    gcp: GCPProvider, fake: FakeCompute, instance_id: str
) -> None:
    with pytest.raises(ProviderRequestError, match="expected 'zone/name'"):
        await gcp.get_instance_info(instance_id)
    assert fake.requests == []


# -- list --


async def test_list_in_configured_zones_reads_every_page(fake: FakeCompute) -> None:
    names = [f"web-{i}" for i in range(7)]
    for name in names:
        fake.add(make_instance(name))
    fake.add(make_instance("db-1", zone=OTHER_ZONE))
    zones = [ZONE, OTHER_ZONE]
    async with open_gcp_provider(config(fake, zones=zones, page_size=3)) as provider:
        with trio.fail_after(20):
            listed = await provider.list_instances()
    assert [info.id for info in listed] == [f"{ZONE}/{n}" for n in names] + [f"{OTHER_ZONE}/db-1"]
    # 7 instances at 3 a page: three pages, each asked for with the previous page's token.
    assert list_pages(fake, INSTANCES) == [None, "3", "6"]
    assert {q.get("maxResults") for q in fake.queries} == {"3"}
    other = f"/compute/v1/projects/{PROJECT}/zones/{OTHER_ZONE}/instances"
    assert list_pages(fake, other) == [None]


async def test_aggregated_list_across_all_zones_reads_every_page(fake: FakeCompute) -> None:
    expected = set()
    for zone in (ZONE, OTHER_ZONE, "asia-east1-c"):
        for i in range(3):
            fake.add(make_instance(f"vm-{i}", zone=zone))
            expected.add(f"{zone}/vm-{i}")
    async with open_gcp_provider(config(fake, page_size=4)) as provider:
        with trio.fail_after(20):
            listed = await provider.list_instances()
    assert sorted(info.id for info in listed) == sorted(expected)
    assert len(listed) == 9  # zones whose page had none (a warning) add nothing
    assert list_pages(fake, AGGREGATED) == [None, "4", "8"]
    assert all(path == AGGREGATED for _, path in fake.requests)


async def test_list_filters_by_state_and_label(all_zones: GCPProvider, fake: FakeCompute) -> None:
    fake.add(make_instance("web-1", labels={"team": "a"}))
    fake.add(make_instance("web-2", labels={"team": "b"}, status="TERMINATED"))
    fake.add(make_instance("db-1", zone=OTHER_ZONE, labels={"team": "a"}, status="SUSPENDED"))
    fake.add(make_instance("cache-1", status="STAGING"))

    async def ids(filters: dict[str, str | list[str]]) -> set[str]:
        return {info.name for info in await all_zones.list_instances(filters=filters)}

    with trio.fail_after(20):
        assert await ids({"state": "running"}) == {"web-1"}
        assert await ids({"state": "stopped"}) == {"web-2", "db-1"}  # TERMINATED, SUSPENDED
        assert await ids({"state": ["pending", "running"]}) == {"web-1", "cache-1"}
        assert await ids({"label.team": "a"}) == {"web-1", "db-1"}
        assert await ids({"label.team": ["a", "b"]}) == {"web-1", "web-2", "db-1"}
        assert await ids({"label.team": "a", "state": "stopped"}) == {"db-1"}
        assert await ids({"label.missing": "x"}) == set()


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"status": "RUNNING"}, "filters are 'state' and 'label.KEY'"),
        ({"label.": "x"}, "filters are 'state' and 'label.KEY'"),
        ({"state": "asleep"}, "state filter must be one of"),
        ({"state": ["running", "RUNNING"]}, "state filter must be one of"),
    ],
)
async def test_bad_filter_is_a_request_error(
    gcp: GCPProvider, fake: FakeCompute, filters: dict[str, str | list[str]], message: str
) -> None:
    with pytest.raises(ProviderRequestError, match=message):
        await gcp.list_instances(filters=filters)
    assert fake.requests == []  # refused before asking the cloud


async def test_listing_a_project_that_does_not_exist_is_a_request_error(
    fake: FakeCompute,
) -> None:
    async with open_gcp_provider(config(fake, project="elsewhere", zones=[ZONE])) as provider:
        with trio.fail_after(20), pytest.raises(ProviderRequestError, match="elsewhere"):
            await provider.list_instances()
    async with open_gcp_provider(config(fake, project="elsewhere")) as provider:
        with trio.fail_after(20), pytest.raises(ProviderRequestError, match="elsewhere"):
            await provider.list_instances()


# -- start, stop, suspend --


async def test_stop_then_start_wait_for_each_operation(gcp: GCPProvider, fake: FakeCompute) -> None:
    fake.add(make_instance("worker"))
    with trio.fail_after(20):
        stopped = await gcp.stop_instance(f"{ZONE}/worker", wait=True)
    assert (stopped.state, stopped.raw_state) == (InstanceState.STOPPED, "TERMINATED")
    assert fake.status(ZONE, "worker") == "TERMINATED"
    stop = "operation-1-stop"
    assert [t for t in fake.transitions if t[0] == stop] == [
        (stop, "PENDING", "RUNNING"),
        (stop, "RUNNING", "STOPPING"),
        (stop, "DONE", "TERMINATED"),
    ]
    # stop_unary, then every poll through our ZoneOperationsClient on the same endpoint
    assert fake.requests == [
        ("POST", f"{INSTANCES}/worker/stop"),
        ("GET", f"{OPERATIONS}/{stop}"),
        ("GET", f"{OPERATIONS}/{stop}"),
        ("GET", f"{INSTANCES}/worker"),
    ]

    fake.requests.clear()
    with trio.fail_after(20):
        started = await gcp.start_instance(f"{ZONE}/worker", wait=True)
    assert (started.state, started.raw_state) == (InstanceState.RUNNING, "RUNNING")
    assert started.launch_time == datetime.datetime(2024, 6, 1, 12, 0, tzinfo=datetime.UTC)
    start = "operation-3-start"
    assert fake.operations[ZONE, start]["status"] == "DONE"
    assert [t[1:] for t in fake.transitions if t[0] == start] == [
        ("PENDING", "TERMINATED"),
        ("RUNNING", "STAGING"),
        ("DONE", "RUNNING"),
    ]
    assert fake.requests[0] == ("POST", f"{INSTANCES}/worker/start")
    assert polls(fake) == [("GET", f"{OPERATIONS}/{start}")] * 2


async def test_stop_without_wait_does_not_poll(gcp: GCPProvider, fake: FakeCompute) -> None:
    fake.add(make_instance("worker"))
    with trio.fail_after(20):
        info = await gcp.stop_instance(f"{ZONE}/worker")
    assert info.id == f"{ZONE}/worker"
    assert polls(fake) == []
    assert fake.operations[ZONE, "operation-1-stop"]["status"] == "PENDING"


async def test_stop_by_bare_name_finds_the_zone_first(fake: FakeCompute) -> None:
    fake.add(make_instance("db-1", zone=OTHER_ZONE))
    async with open_gcp_provider(config(fake, zones=[ZONE, OTHER_ZONE])) as provider:
        with trio.fail_after(20):
            info = await provider.stop_instance("db-1", wait=True)
    assert (info.id, info.state) == (f"{OTHER_ZONE}/db-1", InstanceState.STOPPED)
    assert ("POST", f"/compute/v1/projects/{PROJECT}/zones/{OTHER_ZONE}/instances/db-1/stop") in (
        fake.requests
    )


async def test_hibernate_suspends(gcp: GCPProvider, fake: FakeCompute) -> None:
    fake.add(make_instance("worker"))
    with trio.fail_after(20):
        info = await gcp.stop_instance(f"{ZONE}/worker", hibernate=True, wait=True)
    assert (info.state, info.raw_state) == (InstanceState.STOPPED, "SUSPENDED")
    assert fake.requests[0] == ("POST", f"{INSTANCES}/worker/suspend")
    assert [t[1:] for t in fake.transitions] == [
        ("PENDING", "RUNNING"),
        ("RUNNING", "SUSPENDING"),
        ("DONE", "SUSPENDED"),
    ]


async def test_acting_on_a_missing_instance_raises_instance_not_found(gcp: GCPProvider) -> None:
    with trio.fail_after(20), pytest.raises(InstanceNotFound):
        await gcp.start_instance(f"{ZONE}/ghost", wait=True)


async def test_operation_not_done_in_time_is_unavailable(fake: FakeCompute) -> None:
    fake.add(make_instance("worker"))
    # Polls every 0.2s, gives up after 0.1s: the first poll never comes.
    slow = config(fake, zones=[ZONE], poll_interval=0.2, operation_timeout=0.1)
    async with open_gcp_provider(slow) as provider:
        with trio.fail_after(20), pytest.raises(ProviderUnavailable, match="not DONE within"):
            await provider.stop_instance(f"{ZONE}/worker", wait=True)
    assert polls(fake) == []


# -- errors, retries, the breaker --


async def test_unavailable_is_retried_until_it_succeeds(
    gcp: GCPProvider, fake: FakeCompute
) -> None:
    fake.add(make_instance("web-1"))
    fake.fail_next(2, status=503)
    with trio.fail_after(20):
        info = await gcp.get_instance_info(f"{ZONE}/web-1")
    assert info.name == "web-1"
    assert fake.requests == [("GET", f"{INSTANCES}/web-1")] * 3  # google retried nothing itself
    assert gcp.breaker.state is BreakerState.CLOSED


async def test_unavailable_in_the_middle_of_pages_is_retried(fake: FakeCompute) -> None:
    for i in range(5):
        fake.add(make_instance(f"web-{i}"))
    async with open_gcp_provider(config(fake, zones=[ZONE], page_size=2)) as provider:
        fake.fail_next(1, status=503, after=1)  # the first page answers, the second fails
        with trio.fail_after(20):
            listed = await provider.list_instances()
    assert [i.name for i in listed] == [f"web-{i}" for i in range(5)]
    # google's pager did not retry the page itself: our retry starts the listing over
    assert list_pages(fake, INSTANCES) == [None, "2", None, "2", "4"]


async def test_throttling_without_end_raises_provider_throttled(
    fake: FakeCompute,
) -> None:
    fake.fail_next(100, status=429)
    async with open_gcp_provider(config(fake, zones=[ZONE], resilience={"retries": 2})) as provider:
        with trio.fail_after(20), pytest.raises(ProviderThrottled) as caught:
            await provider.get_instance_info(f"{ZONE}/web-1")
    assert type(caught.value).__module__.startswith("providers.")
    assert len(fake.requests) == 3  # 1 + 2 retries


INJECTED = "injected failure"


@pytest.mark.parametrize(
    ("status", "expected", "message"),
    [
        (400, ProviderRequestError, INJECTED),
        # google.auth answers a 401 by refreshing the credentials, which anonymous ones
        # cannot do: that google.auth error is what is translated.
        (401, ProviderAuthError, "Anonymous credentials cannot be refreshed"),
        (403, ProviderAuthError, INJECTED),
        (404, InstanceNotFound, INJECTED),
        (429, ProviderThrottled, INJECTED),
        (500, ProviderUnavailable, INJECTED),
        (503, ProviderUnavailable, INJECTED),
    ],
)
async def test_compute_errors_are_translated(
    fake: FakeCompute, status: int, expected: type[ProviderError], message: str
) -> None:
    fake.fail_next(1, status=status)
    async with open_gcp_provider(config(fake, zones=[ZONE], resilience={"retries": 0})) as provider:
        with trio.fail_after(20), pytest.raises(expected, match=message) as caught:
            await provider.get_instance_info(f"{ZONE}/web-1")
    assert type(caught.value) is expected
    assert len(fake.requests) == 1
    assert type(caught.value).__module__.startswith("providers.")


async def test_refused_connection_is_unavailable(fake: FakeCompute) -> None:
    fake.go_down()
    async with open_gcp_provider(config(fake, zones=[ZONE], resilience={"retries": 1})) as provider:
        with trio.fail_after(20), pytest.raises(ProviderUnavailable) as caught:
            await provider.list_instances()
    assert type(caught.value).__module__.startswith("providers.")
    assert not isinstance(caught.value, CircuitOpen)


async def test_outage_opens_the_breaker_and_recovery_closes_it(
    fake: FakeCompute, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.rate = 1.0  # real time for real I/O; jump() skips the breaker's wait
    fake.add(make_instance("web-1"))
    resilience = {"retries": 1, "failure_threshold": 2, "reset_timeout": 60.0}
    async with open_gcp_provider(config(fake, zones=[ZONE], resilience=resilience)) as provider:
        assert isinstance(provider.breaker, CircuitBreaker)
        with trio.fail_after(20):
            assert [i.id for i in await provider.list_instances()] == [f"{ZONE}/web-1"]
            fake.go_down()
            with trio.fail_after(5), pytest.raises(ProviderUnavailable) as outage:
                await provider.list_instances()
            assert not isinstance(outage.value, CircuitOpen)
            assert type(outage.value).__module__.startswith("providers.")
            assert provider.breaker.state is BreakerState.OPEN
            with pytest.raises(CircuitOpen):
                await provider.get_instance_info(f"{ZONE}/web-1")
            fake.start()  # the same port: the provider's endpoint is fixed
            seen = len(fake.requests)
            with pytest.raises(CircuitOpen):  # still open until reset_timeout passes
                await provider.list_instances()
            assert len(fake.requests) == seen  # open: not even tried
        # Outside any fail_after: jumping moves their deadlines too.
        mock_clock.jump(60.0)
        with trio.fail_after(20):
            assert [i.id for i in await provider.list_instances()] == [f"{ZONE}/web-1"]
        assert provider.breaker.state is BreakerState.CLOSED


async def test_breaker_is_a_read_only_property(fake: FakeCompute) -> None:
    resilience = {"failure_threshold": 7, "reset_timeout": 12.0}
    async with open_gcp_provider(config(fake, resilience=resilience)) as provider:
        breaker = provider.breaker
        assert isinstance(breaker, CircuitBreaker)
        assert breaker is provider.breaker
        assert (breaker.name, breaker.failure_threshold, breaker.reset_timeout) == ("gcp", 7, 12.0)
        with pytest.raises(AttributeError):
            provider.breaker = CircuitBreaker("other")  # type: ignore[misc]


# -- configuration --


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"project": None}, "'project' is required"),
        ({"project": ""}, "'project' must be a non-empty string"),
        ({"project": 42}, "'project' must be a non-empty string"),
        ({"zones": "us-central1-a"}, "'zones' must be a list of zone names"),
        ({"zones": ["us-central1-a", 3]}, "'zones' must be a list of zone names"),
        ({"zones": ["US_Central1"]}, "'zones' must be a list of zone names"),
        ({"zones": [""]}, "'zones' must be a list of zone names"),
        ({"page_size": 0}, "'page_size' must be 1..500"),
        ({"page_size": 501}, "'page_size' must be 1..500"),
        ({"page_size": "10"}, "'page_size' must be 1..500"),
        ({"page_size": True}, "'page_size' must be 1..500"),
        ({"poll_interval": 0}, "'poll_interval' must be a positive number"),
        ({"poll_interval": "1"}, "'poll_interval' must be a positive number"),
        ({"operation_timeout": -1}, "'operation_timeout' must be a positive number"),
        ({"api_endpoint": ""}, "'api_endpoint' must be a non-empty string"),
        ({"resilience": {"retry": 3}}, "config 'resilience' has an unknown setting 'retry'"),
    ],
)
def test_config_errors_are_request_errors(
    fake: FakeCompute, changes: dict[str, Any], message: str
) -> None:
    settings = {**config(fake), **changes}
    settings = {key: value for key, value in settings.items() if value is not None}
    with pytest.raises(ProviderRequestError, match=message):
        GCPProvider.from_config(settings)


def test_missing_credentials_file_is_an_auth_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-key.json"
    with pytest.raises(ProviderAuthError, match="cannot read credentials_file") as caught:
        GCPProvider.from_config({"project": PROJECT, "credentials_file": str(missing)})
    assert type(caught.value).__module__.startswith("providers.")


def test_malformed_credentials_file_is_an_auth_error(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text('{"type": "service_account"}')
    with pytest.raises(ProviderAuthError, match="cannot read credentials_file"):
        GCPProvider.from_config({"project": PROJECT, "credentials_file": str(key)})


async def test_closed_provider_refuses_calls(gcp: GCPProvider, fake: FakeCompute) -> None:
    await gcp.close()
    await gcp.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        await gcp.list_instances()
    with pytest.raises(RuntimeError, match="closed"):
        await gcp.start_instance(f"{ZONE}/web-1")
    assert fake.requests == []


def test_provider_identity() -> None:
    assert (GCPProvider.provider_name, GCPProvider.api_version) == ("gcp", "1.0")

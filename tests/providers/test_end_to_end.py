"""End to end: the real ``cws daemon`` with its built-in ``aws`` and ``gcp`` plugins in
processes of their own (entry points, the fork server), pointed at moto's EC2 server and
at the Compute fake on 127.0.0.1, with the research-analytics plugin recording their
events. Everything is driven through the real ``cws`` CLI, as a user does."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import trio
from moto.server import ThreadedMotoServer

from tests.cli._cws import Daemon, Result, create_token, cws, cws_daemon

from .fake_compute import FakeCompute, make_instance

AMI = "ami-03cf127a"  # in moto's default image list
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}
FAST = "{ deadline = 20.0, retries = 2, backoff_initial = 0.05, backoff_max = 0.2 }"


@pytest.fixture
def moto() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
    yield url
    server.stop()


@pytest.fixture
def compute() -> Iterator[FakeCompute]:
    fake = FakeCompute(project="research")
    fake.add(make_instance("gpu-1", project="research", zone="us-central1-a",
                           machine_type="a2-highgpu-1g"))  # fmt: skip
    fake.add(make_instance("cpu-1", project="research", zone="europe-west4-b",
                           status="TERMINATED"))  # fmt: skip
    fake.start()
    yield fake
    fake.go_down()


def launch(moto: str, name: str) -> str:
    ec2 = boto3.client(
        "ec2", region_name="eu-west-1", endpoint_url=moto,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    response = ec2.run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}],
    )  # fmt: skip
    return str(response["Instances"][0]["InstanceId"])


def write_config(path: Path, moto: str, compute: FakeCompute) -> Path:
    env_names = ", ".join(f'"{name}"' for name in AWS_ENV)
    path.write_text(
        f"""
[daemon]
instance_poll_interval = 0

[plugins]
entry_points = true

[plugins.overrides.aws]
config = {{ region = "eu-west-1", endpoint_url = "{moto}", wait_delay = 0.1, resilience = {FAST} }}
env = [{env_names}]
sandbox = {{ network = "loopback" }}

[plugins.overrides.gcp]
config = {{ project = "research", api_endpoint = "{compute.endpoint}", \
poll_interval = 0.05, resilience = {FAST} }}
sandbox = {{ network = "loopback" }}

[plugins.overrides.research-analytics]
config = {{ prices = {{ "t3.micro" = 0.0104, "a2-highgpu-1g" = 3.67 }} }}
"""
    )
    return path


async def cli(daemon: Daemon, token: str, *args: str) -> Any:
    result: Result = await cws(*args, env=daemon.env | {"CWS_TOKEN": token})
    assert result.code == 0, (args, result, daemon.log.read_text()[-3000:])
    return json.loads(result.out) if "--json" in args or "json" in args else result.out


async def test_stop_and_start_through_the_cli_are_billed_by_analytics(
    tmp_path: Path, moto: str, compute: FakeCompute
) -> None:
    worker, idle = launch(moto, "worker"), launch(moto, "idle")
    config = write_config(tmp_path / "cws.toml", moto, compute)
    async with cws_daemon(
        tmp_path / "home", config=config, CWS_FORK_SERVER="true", CWS_ENTRY_POINTS="true", **AWS_ENV
    ) as daemon:
        token = await create_token(daemon)
        with trio.fail_after(120):
            plugins = await cli(daemon, token, "plugin", "list", "--json")
            by_name = {p["name"]: p for p in plugins["plugins"]}
            assert {"aws", "gcp", "research-analytics"} <= by_name.keys()
            for name in ("aws", "gcp"):
                assert (by_name[name]["isolation"], by_name[name]["state"]) == (
                    "subprocess", "running"
                ), by_name[name]  # fmt: skip
                assert by_name[name]["source"] == "entry_point"

            listing = await cli(daemon, token, "instances", "list", "--json")
            assert listing["errors"] == {}
            seen = {(i["provider"], i["id"]): i["state"] for i in listing["instances"]}
            assert seen == {
                ("aws", worker): "running",
                ("aws", idle): "running",
                ("gcp", "europe-west4-b/cpu-1"): "stopped",
                ("gcp", "us-central1-a/gpu-1"): "running",
            }
            running = await cli(daemon, token, "instances", "list", "--state", "running",
                                "--provider", "aws", "--json")  # fmt: skip
            assert sorted(i["id"] for i in running["instances"]) == sorted([worker, idle])

            # AWS: stop then start the worker, through the daemon and moto.
            stopped = await cli(daemon, token, "instances", "stop", "aws", worker,
                                "--wait", "--json")  # fmt: skip
            assert stopped["state"] == "stopped"
            started = await cli(daemon, token, "instances", "start", "aws", worker,
                                "--wait", "--json")  # fmt: skip
            assert (started["state"], started["name"], started["region"]) == (
                "running", "worker", "eu-west-1"
            )  # fmt: skip
            # GCP: start the stopped VM (its operation polled to DONE on the fake), stop the other.
            gcp_started = await cli(daemon, token, "instances", "start", "gcp",
                                    "europe-west4-b/cpu-1", "--wait", "--json")  # fmt: skip
            assert gcp_started["state"] == "running"
            assert compute.status("europe-west4-b", "cpu-1") == "RUNNING"
            gcp_stopped = await cli(daemon, token, "instances", "stop", "gcp",
                                    "us-central1-a/gpu-1", "--wait", "--json")  # fmt: skip
            assert (gcp_stopped["state"], gcp_stopped["raw_state"]) == ("stopped", "TERMINATED")

            shown = await cli(daemon, token, "instances", "show", "aws", worker, "--json")
            assert shown["state"] == "running"
            missing = await cws("instances", "show", "aws", "i-0123456789abcdef0",
                                env=daemon.env | {"CWS_TOKEN": token})  # fmt: skip
            assert missing.code != 0
            assert "InvalidInstanceID.NotFound" in missing.err

            report = await cli(daemon, token, "analytics", "report", "--format", "json")
        hours = {row["id"]: row for row in report["instances"]}
        # Billed from the events: the worker and cpu-1 have run since their start (the
        # report counts a running instance up to now); no event ever said gpu-1 or idle
        # started (gpu-1 was only seen stopping), so no running interval of theirs is known.
        assert hours.keys() == {worker, "europe-west4-b/cpu-1"}
        assert hours[worker]["provider"] == "aws"
        assert hours[worker]["type"] == "t3.micro"
        assert hours["europe-west4-b/cpu-1"]["provider"] == "gcp"
        assert all(row["hours"] > 0 for row in report["instances"])
        assert report["total_hours"] > 0


async def test_a_start_that_waits_on_its_operation_never_delays_a_list(
    tmp_path: Path, moto: str, compute: FakeCompute
) -> None:
    """The cloud providers handle calls side by side ([concurrency] max = 16, issue 17):
    a `start --wait` polling a long operation holds one call, not the plugin."""
    config = write_config(tmp_path / "cws.toml", moto, compute)
    async with cws_daemon(
        tmp_path / "home", config=config, CWS_FORK_SERVER="true", CWS_ENTRY_POINTS="true", **AWS_ENV
    ) as daemon:
        token = await create_token(daemon)
        with trio.fail_after(120):
            await cli(daemon, token, "instances", "list", "--provider", "gcp", "--json")
            compute.hold_operations()
            started: list[Any] = []

            async def start() -> None:
                started.append(await cli(daemon, token, "instances", "start", "gcp",
                                         "europe-west4-b/cpu-1", "--wait", "--json"))  # fmt: skip

            async with trio.open_nursery() as nursery:
                nursery.start_soon(start)

                async def polling() -> bool:
                    return any(path.endswith("/cpu-1/start") for _, path in compute.requests)

                while not await polling():  # noqa: ASYNC110 - the fake runs in threads
                    await trio.sleep(0.05)
                # The start is waiting on its operation; a list of the same provider answers.
                listing = await cli(daemon, token, "instances", "list", "--provider", "gcp",
                                    "--json")  # fmt: skip
                assert started == []
                names = {item["name"] for item in listing["instances"]}
                assert {"gpu-1", "cpu-1"} <= names, listing
                compute.release_operations()
            assert started[0]["state"] == "running", started

"""``cws instances``: the cloud providers' instances, through the daemon."""

from __future__ import annotations

from typing import Any

import asyncclick as click

from ._client import SLOW_TIMEOUT
from ._common import connect, echo_json, json_option, remote_options, state_colour, table
from ._errors import CLIError


@click.group()
async def instances() -> None:
    """List, show, start and stop the cloud providers' instances."""


def _rows(items: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [i["provider"], i["id"], i.get("name") or "", i["type"], i["zone"], i["state"]]
        for i in items
    ]


@instances.command("list")
@click.option("--provider", help="Only this provider (aws, gcp).")
@click.option("--state", help="Only instances in this state (running, stopped...).")
@remote_options
@json_option
async def instances_list(provider: str | None, state: str | None, as_json: bool) -> None:
    """List the instances of every loaded cloud provider."""
    params = {key: value for key, value in (("provider", provider), ("state", state)) if value}
    async with connect() as client:
        body = await client.get("/api/v1/instances", **params)
    errors = body.get("errors", {})
    failures = [_failure(name, error["detail"]) for name, error in sorted(errors.items())]
    asked = body.get("providers", list(errors))
    if failures and set(errors) >= set(asked):  # not one provider answered
        if as_json:
            echo_json(body)
        raise CLIError("every cloud provider failed:\n  " + "\n  ".join(failures))
    if as_json:
        echo_json(body)
        return
    headers = ["PROVIDER", "ID", "NAME", "TYPE", "ZONE", "STATE"]
    click.echo(table(headers, _rows(body["instances"]), colours={5: state_colour}))
    for failure in failures:
        click.echo(f"warning: {failure}", err=True)


def _failure(provider: str, detail: str) -> str:
    """The daemon's detail already starts with the provider's name: say it once."""
    return detail if detail.startswith(f"{provider}: ") else f"{provider}: {detail}"


@instances.command("show")
@click.argument("provider")
@click.argument("instance_id")
@remote_options
@json_option
async def instances_show(provider: str, instance_id: str, as_json: bool) -> None:
    """Show one instance."""
    async with connect() as client:
        body = await client.get(f"/api/v1/instances/{provider}/{instance_id}")
    if as_json:
        echo_json(body)
        return
    for key in ("provider", "id", "name", "type", "region", "zone", "state", "raw_state",
                "launch_time"):  # fmt: skip
        click.echo(f"{key:12} {body.get(key)}")
    for key, value in sorted(body.get("tags", {}).items()):
        click.echo(f"{'tag':12} {key}={value}")


def _action(action: str) -> Any:
    @click.argument("provider")
    @click.argument("instance_id")
    @click.option("--wait", is_flag=True, help="Wait until the operation is done.")
    @remote_options
    @json_option
    async def run(provider: str, instance_id: str, wait: bool, as_json: bool, **extra: Any) -> None:
        body_in = {"wait": wait, **extra}
        async with connect() as client:
            body = await client.post(
                f"/api/v1/instances/{provider}/{instance_id}/{action}", body_in,
                timeout=SLOW_TIMEOUT,
            )  # fmt: skip
        if as_json:
            echo_json(body)
            return
        click.echo(f"{provider} {body['id']}: {body['state']}")

    run.__doc__ = f"{action.capitalize()} an instance."
    return run


instances.command("start")(_action("start"))
instances.command("stop")(
    click.option("--hibernate", is_flag=True, help="Hibernate (AWS) or suspend (GCP).")(
        _action("stop")
    )
)

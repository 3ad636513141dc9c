"""``cws secret``: the secrets the daemon gives the plugins granted them (through the
daemon's API, with an ``admin`` token). A value never goes on the command line, where
other users see it in the process list: it is read from stdin, or asked for without
echo on a terminal."""

from __future__ import annotations

import sys

import asyncclick as click
import trio

from ._common import connect, echo_json, json_option, on_terminal, remote_options, table
from ._errors import UsageProblem


@click.group("secret")
async def secret_group() -> None:
    """Set, list and remove the secrets plugins read with ctx.secret(NAME) (admin)."""


async def _read_value(name: str) -> str:
    if on_terminal(sys.stdin):
        value: str = await click.prompt(
            f"value of {name}", hide_input=True, confirmation_prompt=True, err=True
        )
        return value
    data = await trio.to_thread.run_sync(sys.stdin.read)
    value = data[:-1] if data.endswith("\n") else data  # `echo x | cws secret set` adds one
    if not value:
        raise UsageProblem(f"no value for {name}: pipe it on stdin (printf %s VALUE | ...)")
    return value


@secret_group.command("set")
@click.argument("name")
@remote_options
async def secret_set(name: str) -> None:
    """Store the secret NAME; its value comes from stdin, or a hidden prompt on a
    terminal (never from the command line)."""
    value = await _read_value(name)
    async with connect() as client:
        answer = await client.request("PUT", f"/api/v1/secrets/{name}", json_body={"value": value})
    click.echo(f"{'replaced' if answer.get('replaced') else 'set'} the secret {name}")


@secret_group.command("list")
@remote_options
@json_option
async def secret_list(as_json: bool) -> None:
    """List the secrets' names (never their values) and which plugins ask for each."""
    async with connect() as client:
        body = await client.get("/api/v1/secrets")
    if as_json:
        echo_json(body)
        return
    rows = [[s["name"], ", ".join(s["asked_for_by"]) or "-"] for s in body["secrets"]]
    click.echo(table(["SECRET", "ASKED FOR BY"], rows))
    if body.get("asked_for_but_not_set"):
        missing = ", ".join(body["asked_for_but_not_set"])
        click.echo(f"asked for by plugins but not set: {missing}", err=True)


@secret_group.command("rm")
@click.argument("name")
@remote_options
async def secret_rm(name: str) -> None:
    """Forget the secret NAME."""
    async with connect() as client:
        await client.request("DELETE", f"/api/v1/secrets/{name}")
    click.echo(f"removed the secret {name}")

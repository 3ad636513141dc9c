"""``cws token``: API tokens, kept in the home folder's state database (no daemon
needed; a running daemon sees the changes at once)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncclick as click

from cws_actors import StateStore, parse_duration

from .._auth import SCOPES, TokenRecord, TokenStore, issue_token
from ._client import TOKEN_FILE
from ._common import echo_json, home_option, json_option, options, table, when
from ._errors import CLIError, UsageProblem

STATE_DB = "state.db"


@click.group("token")
async def token_group() -> None:
    """Create, list and revoke API tokens (in $CWS_HOME/state.db; no daemon needed)."""


@contextlib.asynccontextmanager
async def open_store() -> AsyncIterator[StateStore]:
    """The state database in the home folder (created, private, if missing)."""
    home = options().home_folder()
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        store = await StateStore.open(home / STATE_DB)
    except (OSError, sqlite3.Error, RuntimeError) as exc:  # RuntimeError: a newer schema
        raise CLIError(f"cannot open {home / STATE_DB}: {exc}") from None
    try:
        yield store
    except sqlite3.Error as exc:
        raise CLIError(f"{home / STATE_DB}: {exc}") from None
    finally:
        await store.aclose()


def _lifetime(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None or value == "never":
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}, or never") from None


@token_group.command("create")
@click.option("--scope", "scopes", multiple=True, required=True, metavar="SCOPE",
              help=f"A scope ({', '.join(SCOPES)}, or a plugin's); repeat for more.")  # fmt: skip
@click.option("--expires", "ttl", metavar="DURATION", callback=_lifetime, default=None,
              help="Lifetime such as 30d, 12h, 15m or 90s [default: never].")  # fmt: skip
@click.option("--name", default="cli", show_default=True, help="A label to tell tokens apart.")
@home_option
async def token_create(scopes: tuple[str, ...], ttl: float | None, name: str) -> None:
    """Create a token and print it. Only its hash is stored: it is shown this once."""
    async with open_store() as store:
        try:
            issued = await issue_token(store, name=name, scopes=list(scopes), ttl=ttl)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
    click.echo(issued.token)
    record = issued.record
    click.echo(
        f"token {record.id} ({', '.join(record.scopes)}; expires"
        f" {when(record.expires_at, never='never')}) is shown only once: keep it in"
        f" CWS_TOKEN or the file $CWS_HOME/{TOKEN_FILE}",
        err=True,
    )


def token_view(record: TokenRecord) -> dict[str, Any]:
    """A token's record without its hash."""
    return {
        "id": record.id,
        "name": record.name,
        "scopes": list(record.scopes),
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
    }


def _expiry(record: TokenRecord) -> str:
    text = when(record.expires_at, never="never")
    expired = record.expires_at is not None and record.expires_at <= time.time()
    return f"{text} (expired)" if expired else text


@token_group.command("list")
@home_option
@json_option
async def token_list(as_json: bool) -> None:
    """List tokens (never their secrets)."""
    async with open_store() as store:
        records = await TokenStore(store).list()
    if as_json:
        echo_json({"tokens": [token_view(r) for r in records], "count": len(records)})
        return
    rows = [
        [r.id, r.name, " ".join(r.scopes), when(r.created_at), _expiry(r), when(r.revoked_at)]
        for r in records
    ]
    click.echo(table(["ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "REVOKED"], rows))


@token_group.command("revoke")
@click.argument("token_id", metavar="ID")
@home_option
async def token_revoke(token_id: str) -> None:
    """Revoke the token ID (from `cws token list`, or the token itself)."""
    if token_id.startswith("cws_"):
        token_id = token_id.split("_")[1]
    async with open_store() as store:
        tokens = TokenStore(store)
        if not await tokens.revoke(token_id):
            record = await tokens.get(token_id)
            if record is None:
                raise CLIError(f"no token has the id {token_id!r}; see `cws token list`")
            raise CLIError(f"the token {token_id} was already revoked at {when(record.revoked_at)}")
    click.echo(f"revoked {token_id}")

"""A real daemon for tests: hypercorn on 127.0.0.1 port 0, in this Trio run."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from api import load_config, serve_daemon
from api._auth import issue_token
from api._daemon import Daemon

from ..plugins._fixtures import IN_PROCESS_ALLOWED

TIMEOUT = 30


@contextlib.asynccontextmanager
async def running_daemon(
    home: Path, *, wait_for_plugins: bool = True, **settings: Any
) -> AsyncIterator[Daemon]:
    """Serve a daemon whose home is ``home`` (no entry points, no system plugins, reads
    open without a token: ``open_reads``, unless ``settings`` say otherwise) until the
    block ends; its plugins have loaded when the block starts, unless
    ``wait_for_plugins`` is false. Tests of the token needed to read pass
    ``open_reads=False``, the daemon's default."""
    allowed = settings.pop("in_process_allowed", IN_PROCESS_ALLOWED)
    default_grants = settings.pop("default_grants", {})
    settings = {
        "entry_points": False,
        "system_dir": home / "system",
        "open_reads": True,
        **settings,
    }
    config = load_config(None, env={}, home=home, port=0, **settings)
    # The operator's [plugins] in_process_allowed, set in the file only: the test plugins.
    config = attrs.evolve(
        config, in_process_allowed=tuple(sorted(allowed)), default_grants=default_grants
    )
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(
            functools.partial(serve_daemon, config, on_url=lambda url: None)
        )
        try:
            if wait_for_plugins:
                await daemon.plugins_loaded.wait()
            yield daemon
        finally:
            nursery.cancel_scope.cancel()


async def token(daemon: Daemon, *scopes: str, ttl: float | None = None) -> str:
    issued = await issue_token(daemon.host.state, name="test", scopes=list(scopes), ttl=ttl)
    return issued.token


def client(daemon: Daemon, bearer: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    assert daemon.url is not None
    return httpx.AsyncClient(base_url=daemon.url, headers=headers, timeout=TIMEOUT)

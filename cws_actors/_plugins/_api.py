"""``ctx.api``: a plugin's client of the daemon's HTTP API, and ``ctx.secret``'s errors.

The daemon mints the plugin a token of its own at each start, scoped to exactly the
``apis`` its sandbox asks for and the operator granted, short-lived (an hour) and never
written anywhere; the client renews it before it expires (or once, when the daemon
answers 401: the operator revoked a grant, or the daemon restarted). Its scopes are
the daemon's scopes (``events:publish``, ``instances:manage``...); a route that needs
another answers 403, and a plugin's token reads (GET) the daemon's own routes only with
the scope ``api:read``. A plugin without ``apis`` gets a client that refuses every
request with :class:`PermissionError`.

httpx is imported on the first request, so that a plugin that never calls the API does
not pay for it at start.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    import httpx

RENEW_BEFORE = 300.0
"""Seconds before its token expires that the client fetches a new one."""


@attrs.frozen
class APIToken:
    """A token the daemon minted for a plugin (its value is shown to that plugin only)."""

    token: str
    expires_at: float
    url: str
    """The daemon's base URL (``http://127.0.0.1:PORT``)."""
    scopes: tuple[str, ...] = ()


TokenSource = Callable[[], Awaitable["APIToken | None"]]


@attrs.define(eq=False)
class PluginAPI:
    """``await ctx.api.get("/api/v1/plugins")``, ``await ctx.api.post("/api/v1/events",
    json={...})``: :class:`httpx.Response` objects, errors included (a 403 is a response,
    not an exception). Closed by the host when the plugin stops."""

    plugin: str
    fetch: TokenSource | None = None
    """Where tokens come from (the daemon); None: this plugin has no API access."""
    _token: APIToken | None = None
    _client: httpx.AsyncClient | None = None
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    @property
    def scopes(self) -> tuple[str, ...]:
        """The scopes of the current token (empty before the first request)."""
        return self._token.scopes if self._token is not None else ()

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kwargs)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """``method path`` on the daemon with this plugin's token.

        Raises:
            PermissionError: the plugin's sandbox asks for no daemon API, or none of what
                it asks for is granted.
            httpx.HTTPError: the daemon did not answer.
        """
        if not path.startswith("/"):
            raise ValueError(
                f"ctx.api takes a path on the daemon (like /api/v1/events), got {path!r}"
            )
        token = await self._current(renew=False)
        response = await self._send(token, method, path, kwargs)
        if response.status_code == 401:  # revoked (a grant taken back) or a restart
            token = await self._current(renew=True, stale=token)
            response = await self._send(token, method, path, kwargs)
        return response

    async def _send(
        self, token: APIToken, method: str, path: str, kwargs: dict[str, Any]
    ) -> httpx.Response:
        if self._client is None:
            import httpx  # on first use: a plugin that never calls pays nothing

            self._client = httpx.AsyncClient(timeout=30.0, trust_env=False)
        headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {token.token}"}
        return await self._client.request(
            method, token.url.rstrip("/") + path, headers=headers, **kwargs
        )

    async def _current(self, *, renew: bool, stale: APIToken | None = None) -> APIToken:
        async with self._lock:
            token = self._token
            due = token is None or token.expires_at - time.time() < RENEW_BEFORE
            if due or (renew and token is stale):
                if self.fetch is None:
                    token = None
                else:
                    token = await self.fetch()
                self._token = token
            if token is None:
                raise PermissionError(
                    f"plugin {self.plugin!r} may not call the daemon's API: its sandbox asks"
                    " for no apis scope, or none is granted (ask for them in [sandbox] apis;"
                    f" the operator grants them with `cws plugin grant {self.plugin} apis`)"
                )
            return token

    def prime(self, token: APIToken | None) -> None:
        """Start with ``token`` (minted at the plugin's start)."""
        self._token = token

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

"""Bearer tokens with scopes, and their store.

A token reads ``cws_<id>_<secret>``: the id finds its record, and only a SHA-256 hash
of the 256-bit secret is stored (a slow hash adds nothing to a secret that long); the
hash is compared in constant time. ``admin`` holds every scope. The records are kept in
the ``tokens`` table of the daemon's state database (0600), through
:meth:`cws_actors.StateStore.run`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import attrs

from cws_actors import APIToken, StateStore

SCOPES = (
    "admin", "plugins:manage", "events:publish", "events:read", "faults:inject",
    "instances:manage", "api:read",
)  # fmt: skip
"""The daemon's own scopes; plugins add theirs (``analytics.read``) in their specs.
``api:read`` matters to plugins' tokens only: any other valid token reads (GET) the
daemon's routes without it, a plugin's token only with it."""

PLUGIN_TOKEN_TTL = 3600.0
"""How long a token minted for a plugin (``ctx.api``) lives; the plugin renews it."""

_SCOPE = re.compile(r"[a-z][a-z0-9_.:\-]{0,63}")
_TOKEN = re.compile(r"cws_([0-9a-f]{16})_([A-Za-z0-9_\-]{43})")


@attrs.frozen
class TokenRecord:
    id: str
    name: str
    secret_hash: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None


_COLUMNS = "id, name, secret_hash, scopes, created_at, expires_at, revoked_at"


@attrs.frozen
class TokenStore:
    """The API's tokens in the state database ``state``."""

    state: StateStore

    async def add(self, record: TokenRecord) -> None:
        def write(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute(
                    "INSERT INTO tokens (id, name, secret_hash, scopes, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (record.id, record.name, record.secret_hash, " ".join(record.scopes),
                     record.created_at, record.expires_at),
                )  # fmt: skip

        await self.state.run(write)

    async def list(self) -> list[TokenRecord]:
        rows = await self.state.run(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY created_at").fetchall()
        )
        return [_record(row) for row in rows]

    async def get(self, token_id: str) -> TokenRecord | None:
        row = await self.state.run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM tokens WHERE id = ?", (token_id,)
            ).fetchone()
        )
        return _record(row) if row else None

    async def revoke(self, token_id: str) -> bool:
        """Mark the token revoked; False if there is no such (unrevoked) token."""

        def write(connection: sqlite3.Connection) -> bool:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                cursor = connection.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    (time.time(), token_id),
                )
                return cursor.rowcount == 1

        return bool(await self.state.run(write))


def _record(row: tuple[Any, ...]) -> TokenRecord:
    return TokenRecord(row[0], row[1], row[2], tuple(row[3].split()), row[4], row[5], row[6])


class AuthError(Exception):
    """A request's credentials are missing or wrong (401) or too weak (403)."""

    status = 401


class Forbidden(AuthError):
    status = 403


@attrs.frozen
class Principal:
    """Who is calling: the token's id and name, and its scopes."""

    token_id: str
    name: str
    scopes: frozenset[str]
    plugin: str | None = None
    """The plugin a minted token belongs to (``ctx.api``); None for an operator's."""

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


@attrs.frozen
class IssuedToken:
    token: str
    """Shown once; only its hash is kept."""
    record: TokenRecord


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    for scope in scopes:
        if not _SCOPE.fullmatch(scope):
            raise ValueError(
                f"a scope is lowercase letters, digits and '.:_-' (like 'plugins:manage'),"
                f" got {scope!r}"
            )
    if not scopes:
        raise ValueError(f"a token needs at least one scope, such as {', '.join(SCOPES)}")
    return tuple(dict.fromkeys(scopes))


async def issue_token(
    store: StateStore, *, name: str, scopes: list[str] | tuple[str, ...], ttl: float | None
) -> IssuedToken:
    """Create a token; ``ttl`` seconds until it expires (None: never)."""
    if ttl is not None and ttl <= 0:
        raise ValueError(f"a token's lifetime must be > 0 seconds, got {ttl}")
    token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    now = time.time()
    record = TokenRecord(
        id=token_id,
        name=name,
        secret_hash=_hash(secret),
        scopes=check_scopes(scopes),
        created_at=now,
        expires_at=now + ttl if ttl is not None else None,
        revoked_at=None,
    )
    await TokenStore(store).add(record)
    return IssuedToken(f"cws_{token_id}_{secret}", record)


@attrs.frozen
class _Minted:
    plugin: str
    secret_hash: str
    scopes: tuple[str, ...]
    expires_at: float


@attrs.define(eq=False)
class PluginTokens:
    """The tokens the daemon mints for its plugins (``ctx.api``): the daemon's
    :class:`cws_actors.TokenBroker`. Kept in memory only, never in the state database
    or the token file, so that a daemon restart voids them all; each lives
    :data:`PLUGIN_TOKEN_TTL` and holds exactly the scopes it was minted with. They look
    like any token (``cws_<id>_<secret>``) and :func:`authenticate` takes them."""

    url: str | None = None
    """The daemon's URL, once it serves: what the plugins' clients call."""
    ttl: float = PLUGIN_TOKEN_TTL
    clock: Callable[[], float] = time.time
    _tokens: dict[str, _Minted] = attrs.field(factory=dict)

    def mint(self, plugin: str, scopes: tuple[str, ...]) -> APIToken | None:
        if self.url is None:
            return None
        self._expire()
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        expires_at = self.clock() + self.ttl
        self._tokens[token_id] = _Minted(plugin, _hash(secret), check_scopes(scopes), expires_at)
        return APIToken(f"cws_{token_id}_{secret}", expires_at, self.url, tuple(scopes))

    def revoke(self, plugin: str, token: str | None = None) -> None:
        if token is None:
            for token_id in [i for i, m in self._tokens.items() if m.plugin == plugin]:
                del self._tokens[token_id]
            return
        match = _TOKEN.fullmatch(token)
        if match is not None:
            minted = self._tokens.get(match[1])
            if minted is not None and minted.plugin == plugin:
                del self._tokens[match[1]]

    def active(self, plugin: str) -> int:
        """How many unexpired tokens ``plugin`` holds (for status and tests)."""
        self._expire()
        return sum(1 for minted in self._tokens.values() if minted.plugin == plugin)

    def _expire(self) -> None:
        now = self.clock()
        for token_id in [i for i, m in self._tokens.items() if m.expires_at <= now]:
            del self._tokens[token_id]

    def principal(self, token_id: str, secret: str) -> Principal | None:
        """The principal of a minted token; None if ``token_id`` is not one of them.

        Raises:
            AuthError: it is one, but the secret is wrong or it expired."""
        minted = self._tokens.get(token_id)
        if minted is None:
            return None
        if not hmac.compare_digest(_hash(secret), minted.secret_hash):
            raise AuthError("the token is not valid")
        if minted.expires_at <= self.clock():
            raise AuthError(
                f"the token of plugin {minted.plugin!r} has expired (its ctx.api renews it)"
            )
        return Principal(token_id, f"plugin:{minted.plugin}", frozenset(minted.scopes),
                         plugin=minted.plugin)  # fmt: skip


async def authenticate(
    store: StateStore, authorization: str | None, minted: PluginTokens | None = None
) -> Principal:
    """The principal of an ``Authorization: Bearer ...`` header (an operator's token
    in ``store``, or one of the ``minted`` tokens of the plugins).

    Raises:
        AuthError: missing, malformed, unknown, revoked or expired (all look alike to
            the caller, except for the message).
    """
    if not authorization:
        raise AuthError("this endpoint needs a token: send 'Authorization: Bearer <token>'")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError("the Authorization header must be 'Bearer <token>'")
    match = _TOKEN.fullmatch(value.strip())
    if match is None:
        raise AuthError("that is not a cws token (they look like cws_<16 hex>_<43 chars>)")
    if minted is not None:
        plugin = minted.principal(match[1], match[2])
        if plugin is not None:
            return plugin
    record = await TokenStore(store).get(match[1])
    presented = _hash(match[2])
    # Compare even when there is no record, so that timing tells nothing.
    expected = record.secret_hash if record is not None else "0" * 64
    if not hmac.compare_digest(presented, expected) or record is None:
        raise AuthError("the token is not valid")
    if record.revoked_at is not None:
        raise AuthError("the token was revoked")
    if record.expires_at is not None and record.expires_at <= time.time():
        raise AuthError("the token has expired; create a new one with `cws token create`")
    return Principal(record.id, record.name, frozenset(record.scopes))


def require(principal: Principal, *scopes: str) -> None:
    """Raises Forbidden unless the principal holds every one of ``scopes``."""
    missing = [scope for scope in scopes if not principal.allows(scope)]
    if missing:
        raise Forbidden(f"this needs the scope {', '.join(missing)}; the token has"
                        f" {', '.join(sorted(principal.scopes))}")  # fmt: skip

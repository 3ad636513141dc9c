"""Grants: what the operator lets each plugin's sandbox have, and the services that
follow from them (``ctx.secret`` and the tokens of ``ctx.api``).

A plugin's sandbox asks for requests (``network:*:443``, ``secrets:aws_key``,
``apis:events:publish``...; :mod:`cws_actors._plugins._sandbox`). A request is granted
when one of these covers it: what the operator granted that plugin (stored in the state
database as the requests themselves, so that a later version asking for more is not
covered by a grant given for less), ``[plugins] default_grants`` (for that plugin or
``"*"``), or, for an entry-point plugin, the plugin itself (pip installed it: it is
granted what it declares). A plugin with an ungranted request is refused at install,
update and load, naming what is missing and the command that grants it.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from .._core._exceptions import PluginNotFound, SandboxNotGranted
from .._isolation._launch import PluginLaunch, PluginServices
from .._plugins._api import APIToken
from .._plugins._model import PluginMetadata
from .._plugins._sandbox import KINDS, parse_grants, ungranted
from ._base import DiscoveredPlugin, SandboxGrants, _log
from ._discovery import _Discovery


def resolve(grants: Iterable[str], requests: Iterable[str]) -> list[str]:
    """The ``requests`` that ``grants`` cover (``all``, a kind, or a request itself)."""
    requests = list(requests)
    missing = set(ungranted(requests, grants))
    return [request for request in requests if request not in missing]


def grant_command(name: str, missing: Iterable[str]) -> str:
    return f"cws plugin grant {name} {','.join(missing)}"


class _Grants(_Discovery):
    __slots__ = ()

    def default_grants(self, name: str) -> tuple[str, ...]:
        """What ``[plugins] default_grants`` grants ``name`` (its own and ``"*"``'s)."""
        table = self.config.default_grants
        return (*table.get("*", ()), *table.get(name, ()))

    async def sandbox_grants(self, discovered: DiscoveredPlugin) -> SandboxGrants:
        manifest = discovered.manifest
        requests = manifest.metadata.sandbox.requests() if manifest is not None else ()
        stored = await self.state.grants(discovered.name)
        defaults = self.default_grants(discovered.name)
        entry_point = discovered.source == "entry_point"
        covering = ("all",) if entry_point else (*stored, *defaults)
        granted = resolve(covering, requests)
        return SandboxGrants(
            requests=requests,
            granted=tuple(granted),
            ungranted=tuple(r for r in requests if r not in granted),
            stored=stored,
            defaults=defaults,
            entry_point=entry_point,
        )

    async def _require_granted(self, discovered: DiscoveredPlugin) -> None:
        """Raises PluginRefused naming the ungranted requests and the command."""
        grants = await self.sandbox_grants(discovered)
        missing = grants.ungranted
        if missing:
            raise SandboxNotGranted(
                discovered.name,
                f"its sandbox asks for {', '.join(missing)}, which the operator has not"
                f" granted; grant it with `{grant_command(discovered.name, missing)}`",
                missing,
                grants.requests,
            )

    def _install_refusal(self, metadata: PluginMetadata, grants: Iterable[str]) -> None:
        """At install: refused (naming them) unless ``grants`` and the defaults cover
        every request."""
        requests = metadata.sandbox.requests()
        missing = ungranted(requests, (*grants, *self.default_grants(metadata.name)))
        if missing:
            raise SandboxNotGranted(
                metadata.name,
                f"its sandbox asks for {', '.join(missing)}, which is not granted; install"
                f" it with --grant {','.join(missing)} (or --grant all) once you accept that",
                tuple(missing),
                requests,
            )

    def _update_refusal(
        self, metadata: PluginMetadata, stored: Iterable[str], grants: Iterable[str]
    ) -> None:
        """At update: refused while the new version asks for more than was granted."""
        requests = metadata.sandbox.requests()
        covering = (*stored, *grants, *self.default_grants(metadata.name))
        missing = ungranted(requests, covering)
        if missing:
            raise SandboxNotGranted(
                metadata.name,
                f"version {metadata.version} asks for more than was granted:"
                f" {', '.join(missing)} (new); update it with --grant {','.join(missing)}"
                " once you accept that",
                tuple(missing),
                requests,
            )

    async def grant(self, name: str, grants: Iterable[str] | str) -> SandboxGrants:
        """Grant ``name`` what ``grants`` cover of what its sandbox asks for (stored as
        those requests). A running plugin's secrets and API token follow at once; the
        kernel's controls at its next start.

        Raises:
            PluginNotFound: not discovered.
            ValueError: a grant that is not one, or that covers nothing it asks for.
        """
        discovered = await self._discovered_plugin(name)
        grants = _parsed(grants)
        current = await self.sandbox_grants(discovered)
        given: list[str] = []
        for grant in grants:
            covered = resolve([grant], current.requests)
            if not covered:
                asks = ", ".join(current.requests) or "nothing"
                raise ValueError(
                    f"plugin {name!r} does not ask for {grant!r}; its sandbox asks for {asks}"
                )
            given += covered
        stored = tuple(dict.fromkeys([*current.stored, *given]))
        await self.state.set_grants(name, stored, "granted by the operator")
        _log.info(
            "granted plugin %s: %s", name, ", ".join(dict.fromkeys(given)),
            extra={"plugin": name, "granted": list(dict.fromkeys(given))},
        )  # fmt: skip
        return await self.sandbox_grants(discovered)

    async def revoke(self, name: str, grants: Iterable[str] | str) -> SandboxGrants:
        """Take back what ``grants`` cover of what ``name`` was granted (a grant from
        ``default_grants`` stays: that is the configuration's). Its API tokens are
        revoked at once (a new one has only what is still granted); a later load of it
        is refused while it still asks for what was taken back.

        Raises:
            PluginNotFound: not discovered.
            ValueError: a grant that is not one, or that covers nothing it was granted.
        """
        discovered = await self._discovered_plugin(name)
        grants = _parsed(grants)
        stored = await self.state.grants(name)
        taken: list[str] = []
        for grant in grants:
            covered = resolve([grant], stored)
            if not covered:
                held = ", ".join(stored) or "nothing"
                raise ValueError(f"plugin {name!r} was not granted {grant!r}; it holds {held}")
            taken += covered
        kept = tuple(g for g in stored if g not in taken)
        await self.state.set_grants(name, kept, "revoked by the operator")
        if self.token_broker is not None:
            self.token_broker.revoke(name)
        _log.info(
            "revoked from plugin %s: %s", name, ", ".join(dict.fromkeys(taken)),
            extra={"plugin": name, "revoked": list(dict.fromkeys(taken))},
        )  # fmt: skip
        return await self.sandbox_grants(discovered)

    async def _discovered_plugin(self, name: str) -> DiscoveredPlugin:
        discovered = self._discovered.get(name)
        if discovered is None:
            await self.discover()
            discovered = self._discovered.get(name)
        if discovered is None:
            raise PluginNotFound(f"no plugin named {name!r} was discovered")
        return discovered

    # ------------------------------------------------------------------ services

    def _services(self, launch: PluginLaunch, source: str) -> PluginServices:
        """The secrets and API tokens of one run of a plugin, each checked against the
        grants of the moment (a revoke applies to the next read and the next token)."""
        metadata = launch.metadata
        name = metadata.name
        minted: list[str] = []
        broker = self.token_broker
        apis = metadata.sandbox.apis
        url = getattr(broker, "url", None) if apis else None

        async def read_secret(secret: str) -> str:
            return await self.read_secret(metadata, source, secret)

        async def mint_token() -> APIToken | None:
            if broker is None or not apis:
                return None
            scopes = await self._granted_scopes(metadata, source)
            if not scopes:
                return None
            token = broker.mint(name, scopes)
            if token is not None:
                minted.append(token.token)
            return token

        def release() -> None:
            if broker is not None:
                for token in minted:
                    broker.revoke(name, token)
            minted.clear()

        port = urlsplit(url).port if isinstance(url, str) else None
        return PluginServices(read_secret, mint_token, release, daemon_port=port)

    async def _granted(self, metadata: PluginMetadata, source: str) -> tuple[str, ...]:
        requests = metadata.sandbox.requests()
        if source == "entry_point":
            return requests
        covering = (*await self.state.grants(metadata.name), *self.default_grants(metadata.name))
        return tuple(resolve(covering, requests))

    async def _granted_scopes(self, metadata: PluginMetadata, source: str) -> tuple[str, ...]:
        granted = await self._granted(metadata, source)
        return tuple(r.split(":", 1)[1] for r in granted if r.startswith("apis:"))

    async def read_secret(self, metadata: PluginMetadata, source: str, secret: str) -> str:
        """The value of ``secret`` for the plugin ``metadata`` describes.

        Raises:
            PermissionError: its sandbox does not ask for it, or it is not granted.
            LookupError: granted, but not set.
        """
        name = metadata.name
        if secret not in metadata.sandbox.secrets:
            raise PermissionError(
                f"plugin {name!r} may not read the secret {secret!r}: its [sandbox] secrets"
                f" does not name it (add it there, and the operator grants it with"
                f" `cws plugin grant {name} secrets:{secret}`)"
            )
        if f"secrets:{secret}" not in await self._granted(metadata, source):
            raise PermissionError(
                f"plugin {name!r} may not read the secret {secret!r}: it is not granted;"
                f" the operator grants it with `cws plugin grant {name} secrets:{secret}`"
            )
        return await self.secrets.get(secret)


def _parsed(grants: Iterable[str] | str) -> tuple[str, ...]:
    text = grants if isinstance(grants, str) else ",".join(grants)
    parsed = parse_grants(text)
    if not parsed:
        raise ValueError(f"name what to grant: all, a kind ({', '.join(KINDS)}) or a request")
    return parsed

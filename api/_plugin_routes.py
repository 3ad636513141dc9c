"""Plugin endpoints, mounted at the paths their specs declare, and plugin CLI commands:
each request becomes an envelope routed to the plugin's actor."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, MapAdapter, RequestRedirect, Rule

from cws_actors import (
    ActorError,
    APIEndpointSpec,
    APIRequest,
    APIResult,
    ArchiveError,
    PluginError,
    PluginStatus,
    RateLimit,
    Source,
    TokenBucket,
    check_archive,
)

from ._auth import AuthError, authenticate
from ._daemon import Daemon
from ._problems import HTTPProblem, from_error, rate_limit_headers

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_PLUGIN_ENDPOINT = "plugin_endpoint"


@attrs.frozen
class _Route:
    plugin: str
    spec: APIEndpointSpec
    pattern: re.Pattern[str]


def _compile(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-zA-Z_][a-zA-Z0-9_]*\})", path)
    regex = "".join(
        f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part) for part in parts
    )
    return re.compile(regex)


@attrs.define(eq=False)
class PluginRoutes:
    daemon: Daemon
    app: QuartTrio
    _buckets: dict[tuple[str, str, str, str], TokenBucket] = attrs.field(factory=dict)
    _core_map: Map | None = None

    def endpoints(self) -> list[tuple[str, APIEndpointSpec]]:
        return self.daemon.host.api_endpoints()

    def _core(self) -> MapAdapter:
        """The daemon's own routes, without the catch-all that serves plugins."""
        if self._core_map is None:
            rules = [
                Rule(rule.rule, methods=rule.methods, endpoint=rule.endpoint)
                for rule in self.app.url_map.iter_rules()
                if rule.endpoint not in (_PLUGIN_ENDPOINT, "static")
            ]
            self._core_map = Map(rules)
        return self._core_map.bind("localhost")

    def guard(self, plugin: str, spec: APIEndpointSpec) -> str | None:
        """Why ``spec`` may not be mounted (it would shadow a core route), or None."""
        sample = re.sub(r"\{[^}]+\}", "x", spec.path)
        try:
            self._core().match(sample, method=spec.method)
        except NotFound:
            return None
        except (MethodNotAllowed, RequestRedirect):
            return f"{spec.path} is a core route of the daemon; a plugin may not shadow it"
        return f"{spec.method} {spec.path} would shadow the daemon's own route"

    def _match(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        allowed = []
        for plugin, spec in self.endpoints():
            found = _compile(spec.path).fullmatch(path)
            if found is None:
                continue
            if spec.method == method:
                return _Route(plugin, spec, found.re), found.groupdict()
            allowed.append(spec.method)
        if not allowed:
            try:
                self._core().match(path, method=method)
            except MethodNotAllowed as exc:
                allowed = sorted(exc.valid_methods or ())
            except (NotFound, RequestRedirect):
                pass
        if allowed:
            raise HTTPProblem(
                405,
                "Method not allowed",
                f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        raise HTTPProblem(404, "Not found", f"no route {path}; see /openapi.json")

    def _take(self, route: _Route, limit: RateLimit, who: str) -> tuple[float, int]:
        key = (route.plugin, route.spec.method, route.spec.path, who if limit.per_source else "")
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 50_000:
                self._buckets.clear()  # a bound on memory; buckets refill anyway
            bucket = self._buckets[key] = TokenBucket(limit.rate, limit.burst)
        return bucket.take(), bucket.remaining()

    def mount(
        self,
        principal: Callable[..., Awaitable[Any]],
        json_body: Callable[..., Awaitable[Any]],
    ) -> None:
        async def plugin_endpoint(subpath: str) -> Any:
            path = "/" + subpath
            route, params = self._match(request.method, path)
            spec = route.spec
            who = None
            if spec.protected or spec.permissions:
                who = await principal(*spec.permissions)
            headers: dict[str, str] = {}
            if spec.rate_limit is not None:
                caller = who.token_id if who is not None else (request.remote_addr or "")
                wait, remaining = self._take(route, spec.rate_limit, caller)
                if wait:
                    raise HTTPProblem(
                        429,
                        "Rate limited",
                        f"{spec.method} {spec.path} is over its rate limit;"
                        f" retry after {wait:.3g}s",
                        headers=rate_limit_headers(wait, spec.rate_limit),
                        retry_after=wait,
                    )
                headers = rate_limit_headers(0, spec.rate_limit, remaining)
                del headers["Retry-After"]
            body = await json_body(required=False) if request.method != "GET" else None
            api_request = APIRequest(
                request.method,
                path,
                query=dict(request.args),
                body=body,
                principal=who.name if who is not None else None,
                scopes=tuple(sorted(who.scopes)) if who is not None else (),
                path_params=params,
            )
            began = time.perf_counter()
            try:
                result = await self.daemon.host.call_api(
                    route.plugin, spec, api_request, source=Source.HTTP
                )
            except (ActorError, PluginError) as exc:
                problem = from_error(exc, plugin=route.plugin)
                if isinstance(exc, PluginError):
                    problem = HTTPProblem(502, "Plugin error", str(exc), plugin=route.plugin)
                raise problem from None
            finally:
                self.daemon.metrics.plugin_latency.labels(plugin=route.plugin, kind="api").observe(
                    time.perf_counter() - began
                )
            return _response(result, headers)

        for rule in ("/<path:subpath>",):
            self.app.add_url_rule(
                rule, _PLUGIN_ENDPOINT, plugin_endpoint, methods=_METHODS, strict_slashes=False
            )

    def cli_specs(self) -> list[dict[str, Any]]:
        return [
            {
                "plugin": plugin,
                "name": spec.name,
                "parent": spec.parent,
                "full_name": spec.full_name,
                "usage": spec.usage,
                "short": spec.short,
                "long": spec.long,
                "aliases": list(spec.aliases),
                "flags": [attrs.asdict(flag) for flag in spec.flags],
            }
            for plugin, spec in self.daemon.host.cli_commands()
        ]

    async def execute(self, argv: list[str], authorization: str | None) -> dict[str, Any]:
        """Run a plugin command; any valid token may (commands can change things)."""
        try:
            await authenticate(self.daemon.host.state, authorization)
        except AuthError as exc:
            raise HTTPProblem(401, "Unauthorized", str(exc)) from None
        began = time.perf_counter()
        result = await self.daemon.host.execute_cli(argv, source=Source.CLI)
        plugin = argv[0]
        self.daemon.metrics.plugin_latency.labels(plugin=plugin, kind="cli").observe(
            time.perf_counter() - began
        )
        return {"output": result.output, "exit_code": result.exit_code}

    async def install_upload(self, name: str | None, archive: Any, signature: Any) -> PluginStatus:
        """Install (``name`` None) or update a plugin from an uploaded archive."""
        staging = Path(tempfile.mkdtemp(prefix="upload-", dir=self._upload_dir()))
        try:
            filename = Path(archive.filename or "plugin.cwsplugin").name or "plugin.cwsplugin"
            target = staging / filename
            await archive.save(target)
            await self._refuse_a_bad_archive(target, filename)
            signature_path = None
            if signature is not None:
                signature_path = staging / f"{filename}.minisig"
                await signature.save(signature_path)
            host = self.daemon.host
            work = (
                host.install(target, signature=signature_path)
                if name is None
                else host.update(name, target, signature=signature_path)
            )
            try:
                return await work
            except (ActorError, PluginError) as exc:
                raise from_error(exc, plugin=name) from None
        finally:
            await trio.to_thread.run_sync(shutil.rmtree, staging, True)

    async def _refuse_a_bad_archive(self, archive: Path, filename: str) -> None:
        """An archive that breaks a rule (a name too deep or too long, a link, a zip bomb,
        no plugin.toml) is the client's error: a 400 naming the entry and the rule, before
        anything is unpacked. The host checks it again as it stages it."""
        limits = self.daemon.host.config.trust.archive_limits
        try:
            await trio.to_thread.run_sync(lambda: check_archive(archive.read_bytes(), limits))
        except ArchiveError as exc:
            raise HTTPProblem(
                400,
                "Bad archive",
                f"{filename}: {exc}; nothing was installed",
                entry=getattr(exc, "entry", None),
                rule=getattr(exc, "rule", "format"),
            ) from None

    def _upload_dir(self) -> Path:
        folder = self.daemon.config.home / "uploads"
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder


def _response(result: APIResult, headers: dict[str, str]) -> Response:
    return Response(
        json.dumps(result.data),
        status=result.status,
        headers={**headers, **dict(result.headers)},
        content_type="application/json",
    )

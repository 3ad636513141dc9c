"""A plugin with endpoints of every kind, for the HTTP API's tests."""

from __future__ import annotations

import textwrap
from pathlib import Path

CODE = """
from cws_actors import (
    APIEndpointSpec, APIResult, Capabilities, CLICommandSpec, CLIFlagSpec, CommandResult,
    Health, HealthStatus, Plugin, RateLimit,
)


class WebPlugin(Plugin):
    capabilities = Capabilities(
        api_endpoints=[
            APIEndpointSpec("/api/v1/web/open", handler="hello", protected=False),
            APIEndpointSpec("/api/v1/web/private", handler="hello"),
            APIEndpointSpec("/api/v1/web/reports", handler="hello", permissions=["web.read"]),
            APIEndpointSpec("/api/v1/web/items/{item}", handler="item", method="PUT"),
            APIEndpointSpec(
                "/api/v1/web/limited", handler="hello", protected=False,
                rate_limit=RateLimit(rate=1, burst=2),
            ),
            APIEndpointSpec("/api/v1/web/broken", handler="broken", protected=False),
            APIEndpointSpec("/api/v1/web/sick", handler="sick", method="POST"),
        ],
        cli_commands=[
            CLICommandSpec("web", handler="cli_hello", short="say hello",
                           flags=[CLIFlagSpec("name", required=True, help="who")]),
        ],
    )

    async def initialize(self, ctx, config):
        self.healthy = True

    async def hello(self, request):
        return APIResult(200, {"hello": request.principal, "scopes": list(request.scopes),
                               "query": dict(request.query)})

    async def item(self, request):
        return APIResult(201, {"item": request.path_params["item"], "body": request.body},
                         {"X-Plugin": "web"})

    async def broken(self, request):
        raise RuntimeError("the plugin broke")

    async def sick(self, request):
        self.healthy = False
        return APIResult(200, {"healthy": False})

    async def cli_hello(self, args):
        return CommandResult(f"hello {args['name']}")

    async def health(self):
        return Health() if self.healthy else Health(HealthStatus.CRITICAL, "asked to be sick")
"""

MANIFEST = """
[plugin]
name = "{name}"
version = "1.0.0"
api_version = "1.0"
isolation = "in_process"
entry = "web_plugin:WebPlugin"

[supervision]
probe_period = 0.2
"""


def write_web_plugin(folder: Path, name: str = "web", *, code: str = CODE) -> Path:
    plugin_dir = folder / name
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "plugin.toml").write_text(textwrap.dedent(MANIFEST.format(name=name)))
    (plugin_dir / "web_plugin.py").write_text(code)
    return plugin_dir

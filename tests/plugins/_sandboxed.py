"""A plugin whose sandbox asks for a secret, a port and a daemon API scope, with
commands that try each (written as a third party would, into a real folder)."""

from __future__ import annotations

import textwrap
from pathlib import Path

CODE = """
import json
import os

from cws_actors import CLICommandSpec, CLIFlagSpec, Capabilities, CommandResult, Plugin


class SandboxedPlugin(Plugin):
    capabilities = Capabilities(
        cli_commands=[
            CLICommandSpec("sbx", handler="noop"),
            CLICommandSpec("secret", handler="secret", parent="sbx",
                           flags=[CLIFlagSpec("name", required=True)]),
            CLICommandSpec("call", handler="call", parent="sbx", flags=[
                CLIFlagSpec("method", default="GET"), CLIFlagSpec("path", required=True),
                CLIFlagSpec("body", default=""),
            ]),
            CLICommandSpec("token", handler="token", parent="sbx"),
            CLICommandSpec("pid", handler="pid", parent="sbx"),
        ],
    )

    async def initialize(self, ctx, config):
        self.ctx = ctx

    async def noop(self, args):
        return CommandResult("sbx")

    async def secret(self, args):
        try:
            value = await self.ctx.secret(args["name"])
        except (PermissionError, LookupError) as exc:
            return CommandResult(f"{type(exc).__name__}: {exc}", 1)
        return CommandResult(value)

    async def call(self, args):
        body = json.loads(args["body"]) if args["body"] else None
        try:
            response = await self.ctx.api.request(args["method"], args["path"], json=body)
        except PermissionError as exc:
            return CommandResult(f"PermissionError: {exc}", 1)
        return CommandResult(f"{response.status_code} {response.text}")

    async def token(self, args):
        return CommandResult(self.ctx.api._token.token if self.ctx.api._token else "none")

    async def pid(self, args):
        # As the daemon sees it: in a PID namespace os.getpid() is the namespace's.
        return CommandResult(os.environ.get("CWS_PLUGIN_PID", str(os.getpid())))
"""

MANIFEST = """
[plugin]
name = "{name}"
version = "{version}"
api_version = "1.0"
isolation = "{isolation}"
entry = "sbx_plugin:SandboxedPlugin"

[sandbox]
{sandbox}
"""

SANDBOX = """network = ["*:443"]
secrets = ["aws_key"]
apis = ["events:publish"]
"""
"""What the fixture asks for, by default: network:*:443, secrets:aws_key,
apis:events:publish."""


def write_sandboxed(
    folder: Path,
    name: str = "sbx",
    *,
    version: str = "1.0.0",
    sandbox: str = SANDBOX,
    isolation: str = "subprocess",
) -> Path:
    plugin_dir = folder / name
    plugin_dir.mkdir(parents=True, exist_ok=True)
    manifest = MANIFEST.format(name=name, version=version, sandbox=sandbox, isolation=isolation)
    (plugin_dir / "plugin.toml").write_text(textwrap.dedent(manifest))
    (plugin_dir / "sbx_plugin.py").write_text(CODE)
    return plugin_dir

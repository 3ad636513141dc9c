"""A test plugin written as a third party would, placed in real plugin folders."""

from __future__ import annotations

import textwrap
from pathlib import Path

PLUGIN_CODE = """
import os
import signal

import trio

# The pid the host shows for this plugin (a sandboxed runner is pid 2 of its own PID
# namespace; the host tracks its keeper).
PID = int(os.environ.get("CWS_PLUGIN_PID", os.getpid()))

from cws_actors import (
    APIEndpointSpec, APIResult, Capabilities, CLICommandSpec, CLIFlagSpec, CommandResult,
    EventHandlerSpec, Health, HealthStatus, Plugin,
)


class EchoPlugin(Plugin):
    capabilities = Capabilities(
        cli_commands=[
            CLICommandSpec("echo", handler="echo", short="repeat text", flags=[
                CLIFlagSpec("text", required=True), CLIFlagSpec("times", type="int", default=1),
            ]),
            CLICommandSpec("crash", handler="crash", parent="echo"),
            CLICommandSpec("die", handler="die", parent="echo"),
            CLICommandSpec("hang", handler="hang", parent="echo"),
            CLICommandSpec("hog", handler="hog", parent="echo"),
            CLICommandSpec("sick", handler="sick", parent="echo"),
            CLICommandSpec("env", handler="env", parent="echo"),
            CLICommandSpec("announce", handler="announce", parent="echo"),
            CLICommandSpec("spin", handler="spin", parent="echo"),
            CLICommandSpec("files", handler="files", parent="echo",
                           flags=[CLIFlagSpec("count", type="int", default=100)]),
        ],
        api_endpoints=[APIEndpointSpec("/api/v1/echo", handler="http_echo", protected=False)],
        event_handlers=[EventHandlerSpec("instance.*", handler="on_instance")],
    )

    async def initialize(self, ctx, config):
        self.ctx = ctx
        self.greeting = config.get("greeting", "hello")
        self.healthy = True

    async def start(self, ctx):
        with (ctx.data_dir / "starts").open("a") as log:
            log.write(f"{PID}\\n")

    async def stop(self, ctx):
        with (ctx.data_dir / "stops").open("a") as log:
            log.write(f"{PID}\\n")

    async def echo(self, args):
        return CommandResult(" ".join([self.greeting, *[args["text"]] * args["times"]]))

    async def http_echo(self, request):
        return APIResult(200, {"query": dict(request.query), "pid": PID})

    async def on_instance(self, event):
        with (self.ctx.data_dir / "events").open("a") as log:
            log.write(f"{event.topic} {event.payload}\\n")

    async def crash(self, args):
        raise RuntimeError("asked to crash")

    async def die(self, args):
        os.kill(os.getpid(), signal.SIGKILL)

    async def hang(self, args):
        await trio.sleep_forever()

    async def hog(self, args):
        hoard = []
        while True:
            hoard.append(bytearray(16 * 1024 * 1024))

    async def spin(self, args):
        while True:
            pass

    async def files(self, args):
        handles = [open(__file__) for _ in range(args.get("count", 100))]
        return CommandResult(str(len(handles)))

    async def announce(self, args):
        await self.ctx.publish("echo.announced", {"pid": PID})
        return CommandResult("announced")

    async def env(self, args):
        return CommandResult(" ".join(sorted(os.environ)))

    async def sick(self, args):
        self.healthy = False
        return CommandResult("now critical")

    async def health(self):
        if self.healthy:
            return Health()
        return Health(HealthStatus.CRITICAL, "asked to be sick")

    async def status(self):
        return {"greeting": self.greeting}
"""

MANIFEST = """
[plugin]
name = "{name}"
version = "{version}"
api_version = "{api_version}"
isolation = "{isolation}"
entry = "echo_plugin:EchoPlugin"
description = "echoes"
author = "tests"

[limits]
{limits}

[supervision]
probe_period = 1.0

[config]
greeting = "hello"
"""


IN_PROCESS_ALLOWED = frozenset(
    {"big", "broken", "echo", "evil", "future", "good", "half", "idle", "keeper", "later",
     "local", "memory", "newer", "other", "other-major", "quick", "slow", "spinner", "steady",
     "stuck", "shadow", "sys", "system", "web", *(f"p{n}" for n in range(6))}
)  # fmt: skip
"""The folder plugins the tests' hosts and daemons let run in process (the operator's
``[plugins] in_process_allowed``): the names the tests give the plugins they write."""


def write_plugin(
    folder: Path,
    name: str = "echo",
    *,
    version: str = "1.0.0",
    api_version: str = "1.0",
    isolation: str = "in_process",
    code: str = PLUGIN_CODE,
    limits: str = "memory_mb = 200",
    extra: str = "",
) -> Path:
    """A plugin folder; ``extra`` is added to its manifest (a ``[sandbox]`` table)."""
    plugin_dir = folder / name
    plugin_dir.mkdir(parents=True)
    (plugin_dir / "plugin.toml").write_text(
        textwrap.dedent(
            MANIFEST.format(name=name, version=version, api_version=api_version,
                            isolation=isolation, limits=limits)
        )
        + extra
    )  # fmt: skip
    (plugin_dir / "echo_plugin.py").write_text(code)
    return plugin_dir


def code_for(command: str, code: str = PLUGIN_CODE) -> str:
    """``code`` with its CLI command and HTTP endpoint named ``command`` instead of echo,
    so that several copies load side by side (the host refuses two plugins on one
    route)."""
    return (
        code.replace('"/api/v1/echo"', f'"/api/v1/{command}"')
        .replace(
            'CLICommandSpec("echo", handler="echo"', f'CLICommandSpec("{command}", handler="echo"'
        )
        .replace('parent="echo"', f'parent="{command}"')
    )

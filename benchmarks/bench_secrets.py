"""What a granted ``ctx.secret`` read costs a subprocess plugin: asks whose handler reads
a secret (a request from the runner to the daemon over the pipe, checked against the
plugin's grants, the secrets file read) beside asks whose handler returns a constant,
measured in the same run, as a ratio.

Run: ``.venv/bin/python benchmarks/bench_secrets.py [--asks 2000] [--json]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import trio

from cws_actors import HostConfig, PluginCall, open_plugin_host, open_runtime

PLUGIN = """
from cws_actors import Capabilities, CLICommandSpec, CommandResult, Plugin

class Reader(Plugin):
    capabilities = Capabilities(cli_commands=[
        CLICommandSpec("plain", handler="plain"), CLICommandSpec("secret", handler="secret"),
    ])

    async def initialize(self, ctx, config):
        self.ctx = ctx

    async def plain(self, args):
        return CommandResult("x")

    async def secret(self, args):
        return CommandResult(await self.ctx.secret("token"))
"""

MANIFEST = """
[plugin]
name = "reader"
version = "1.0.0"
api_version = "1.0"
isolation = "subprocess"
entry = "reader_plugin:Reader"

[sandbox]
secrets = ["token"]

[supervision]
probe_period = 5.0
"""


async def main(asks: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        folder = home / "plugins" / "reader"
        folder.mkdir(parents=True)
        (folder / "plugin.toml").write_text(textwrap.dedent(MANIFEST))
        (folder / "reader_plugin.py").write_text(PLUGIN)
        config = HostConfig(
            home=home, system_dir=home / "system", entry_points=False,
            default_grants={"reader": ("secrets:token",)},
        )  # fmt: skip
        async with open_runtime() as runtime, open_plugin_host(runtime, config) as host:
            await host.secrets.set("token", "v" * 40)
            await host.load("reader")
            ref = runtime.lookup("/plugins/reader")
            figures: dict[str, Any] = {"asks": asks}
            for handler in ("plain", "secret", "plain", "secret"):  # warm, then measure
                call = PluginCall("cli", handler, {})
                began = time.perf_counter()
                for _ in range(asks):
                    await ref.ask(call, timeout=10)
                figures[f"{handler}_per_s"] = asks / (time.perf_counter() - began)
            figures["secret_to_plain"] = figures["secret_per_s"] / figures["plain_per_s"]
            return figures


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--asks", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = trio.run(main, args.asks)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"asks that return a constant:  {figures['plain_per_s']:9.0f}/s")
    print(f"asks that read a secret:      {figures['secret_per_s']:9.0f}/s")
    print(f"ratio (secret / constant):    {figures['secret_to_plain']:9.2f}")


if __name__ == "__main__":
    cli()

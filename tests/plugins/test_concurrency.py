"""Plugins that ask for concurrency: [concurrency] in the manifest, groups, the
multiplexed pipe protocol and cancellation across the process boundary (issue 17)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from cws_actors import PluginRefused

from .test_host import TIMEOUT, opened, wait_until

CODE = """
import trio

from cws_actors import Capabilities, CLICommandSpec, CLIFlagSpec, CommandResult, Plugin


class Gate(Plugin):
    capabilities = Capabilities(
        cli_commands=[
            CLICommandSpec("gate", handler="gate", flags=[CLIFlagSpec("n", type="int")]),
            CLICommandSpec("slow", handler="slow", parent="gate", group="{group}"),
            CLICommandSpec("quick", handler="quick", parent="gate"),
        ],
    )

    async def initialize(self, ctx, config):
        self.ctx = ctx
        self.arrived = 0
        self.all_here = trio.Event()

    async def gate(self, args):
        # Returns only once n calls are inside it at the same time: one handler at a
        # time would wait here for ever.
        self.arrived += 1
        if self.arrived == args["n"]:
            self.all_here.set()
        await self.all_here.wait()
        return CommandResult(f"{{self.arrived}} at once")

    async def slow(self, args):
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            (self.ctx.data_dir / "slow-cancelled").touch()
            raise

    async def quick(self, args):
        return CommandResult("quick")
"""

MANIFEST = """
[plugin]
name = "gate"
version = "1.0.0"
api_version = "1.0"
isolation = "{isolation}"
entry = "gate_plugin:Gate"

{concurrency}
"""

CONCURRENCY = """
[concurrency]
max = 10
groups = {slow = 1}
"""


def write_gate(
    home: Path, *, isolation: str, concurrency: str = CONCURRENCY, group: str = "slow"
) -> None:
    folder = home / "plugins" / "gate"
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(
        textwrap.dedent(MANIFEST.format(isolation=isolation, concurrency=concurrency))
    )
    (folder / "gate_plugin.py").write_text(CODE.format(group=group))


@pytest.fixture(params=["subprocess", "in_process"])
def isolation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_plugin_handles_up_to_max_calls_at_once(tmp_path: Path, isolation: str) -> None:
    write_gate(tmp_path, isolation=isolation)
    with trio.fail_after(TIMEOUT):
        async with opened(tmp_path, in_process_allowed={"gate"}) as host:
            await host.load("gate")
            outputs: list[str] = []

            async def call() -> None:
                result = await host.execute_cli(["gate", "--n", "10"])
                outputs.append(result.output)

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(call)
            assert outputs == ["10 at once"] * 10


async def test_the_operator_override_wins(tmp_path: Path) -> None:
    write_gate(tmp_path, isolation="subprocess")
    overrides = {"gate": {"concurrency": {"max": 1}}}
    with trio.fail_after(TIMEOUT):
        async with opened(tmp_path, overrides=overrides) as host:
            await host.load("gate")
            # One at a time: the second caller never gets in beside the first.
            results = []

            async def call() -> None:
                results.append(await host.execute_cli(["gate", "--n", "2"], timeout=2))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                nursery.start_soon(call)
            assert sorted(r.exit_code for r in results) == [1, 1]
            assert all("within 2s" in r.output for r in results)


async def test_an_ask_that_times_out_cancels_the_handler_in_the_plugin_process(
    tmp_path: Path, isolation: str
) -> None:
    write_gate(tmp_path, isolation=isolation)
    marker = tmp_path / "plugin-data/gate/slow-cancelled"
    with trio.fail_after(TIMEOUT):
        async with opened(tmp_path, in_process_allowed={"gate"}) as host:
            await host.load("gate")
            result = await host.execute_cli(["gate", "slow"], timeout=1)
            assert result.exit_code == 1
            assert "within 1s" in result.output

            async def cancelled() -> bool:
                return marker.exists()

            await wait_until(cancelled)
            status = await host.status("gate")
            assert status.restarts == 0  # a cancelled call is no crash
            assert (await host.execute_cli(["gate", "quick"])).output == "quick"


async def test_a_busy_group_delays_neither_the_default_group_nor_readiness(
    tmp_path: Path,
) -> None:
    write_gate(tmp_path, isolation="subprocess")
    with trio.fail_after(TIMEOUT):
        async with opened(tmp_path, probe_period=0.2) as host:
            await host.load("gate")
            async with trio.open_nursery() as nursery:
                for _ in range(3):  # one runs, two wait in the full "slow" group
                    nursery.start_soon(lambda: host.execute_cli(["gate", "slow"], timeout=60))
                await trio.sleep(1)  # five readiness periods with "slow" busy
                assert (await host.execute_cli(["gate", "quick"])).output == "quick"
                assert (await host.status("gate")).restarts == 0
                nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("write", "refusal"),
    [
        (
            lambda home: write_gate(
                home, isolation="subprocess", concurrency="[concurency]\nmax = 4"
            ),
            "unknown [concurency] (did you mean 'concurrency'?)",
        ),
        (
            lambda home: write_gate(
                home, isolation="subprocess", concurrency="[concurrency]\nmax_calls = 4"
            ),
            "unknown concurrency.max_calls (did you mean 'max'?)",
        ),
        (
            lambda home: write_gate(home, isolation="subprocess", group="nowhere"),
            "names concurrency group 'nowhere', which the plugin does not declare",
        ),
        (
            lambda home: write_gate(
                home, isolation="subprocess", concurrency="[concurrency]\nmax = 0"
            ),
            "max",
        ),
    ],
    ids=["unknown-table", "unknown-key", "unknown-group", "zero"],
)
async def test_what_the_host_does_not_know_is_refused_by_name(
    tmp_path: Path, write: Callable[[Path], None], refusal: str
) -> None:
    write(tmp_path)
    with trio.fail_after(TIMEOUT):
        async with opened(tmp_path) as host:
            with pytest.raises(PluginRefused) as caught:
                await host.load("gate")
            assert refusal in str(caught.value)


async def test_a_runner_that_speaks_another_protocol_is_refused(tmp_path: Path) -> None:
    write_gate(tmp_path, isolation="subprocess")
    code = tmp_path / "plugins/gate/gate_plugin.py"
    # An old runner, as a plugin process started by an older cws would be.
    code.write_text(
        "from cws_actors._isolation import _runner\n_runner.PROTOCOL_VERSION = 1\n"
        + code.read_text()
    )
    with trio.fail_after(TIMEOUT):
        async with opened(tmp_path) as host:
            with pytest.raises(PluginRefused) as caught:
                await host.load("gate")
            assert "spoke protocol 1 in its handshake; this host speaks 3" in str(caught.value)

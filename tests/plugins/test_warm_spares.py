"""Warm spares with real processes: a restart adopts the next run's process, forked and
confined ahead of time, whose plugin ran its module's top level but not its
``initialize`` until then; unload, an update and a spare's own death leave nothing
behind and never serve a stale version."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from cws_actors import PluginHost, PluginRefused

from ._fixtures import PLUGIN_CODE, write_plugin
from .test_host import TIMEOUT, opened, wait_until
from .test_subprocess import alive, plugin_pid, restarted

# The test plugin, noting in its data folder which process imported its module and
# which ran its initialize (the pid the host shows: a sandboxed run's keeper).
CODE = PLUGIN_CODE.replace(
    "class EchoPlugin(Plugin):",
    'DATA = os.environ.get("CWS_TEST_DATA", "/nonexistent")\n'
    "try:  # describing the plugin imports it with nothing writable\n"
    "    with open(os.path.join(DATA, 'imports'), 'a') as log:\n"
    "        log.write(f'{PID}\\n')\n"
    "except OSError:\n"
    "    pass\n\n\n"
    "class EchoPlugin(Plugin):",
).replace(
    "        self.healthy = True\n",
    "        self.healthy = True\n"
    "        with (ctx.data_dir / 'initializes').open('a') as log:\n"
    "            log.write(f'{PID}\\n')\n",
)


def noted(home: Path, what: str) -> list[int]:
    path = home / "plugin-data/echo" / what
    return [int(line) for line in path.read_text().split()] if path.exists() else []


async def spare_ready(host: PluginHost) -> bool:
    return (await host.status("echo")).spare_pid is not None


async def loaded_with_spare(host: PluginHost) -> int:
    """Load echo and wait for its spare; the spare's pid."""
    await host.load("echo")
    await wait_until(lambda: spare_ready(host))
    spare = (await host.status("echo")).spare_pid
    assert spare is not None
    return spare


def gone(pid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not alive(pid)

    return check


OVERRIDES = {"echo": {"env": ["CWS_TEST_DATA"]}}
"""The test's data folder reaches the plugin's import (its notes)."""


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    data = home / "plugin-data/echo"
    data.mkdir(parents=True)
    monkeypatch.setenv("CWS_TEST_DATA", str(data))
    write_plugin(home / "plugins", "echo", isolation="subprocess", code=CODE)
    return home


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandboxed", "unsandboxed"])
async def test_a_restart_adopts_the_spare_which_initializes_only_then(
    home: Path, sandbox: bool
) -> None:
    async with opened(
        home, warm_spares="always", spare_delay=0.0, sandbox=sandbox, overrides=OVERRIDES
    ) as host:
        with trio.fail_after(TIMEOUT):
            await host.load("echo")
            first = plugin_pid(host)
            await wait_until(lambda: spare_ready(host))
            spare = (await host.status("echo")).spare_pid
            assert spare is not None
            assert spare != first
            assert alive(spare)
            # The spare imported the plugin's module (confined, like any run)...
            await wait_until(
                lambda: trio.to_thread.run_sync(lambda: spare in noted(home, "imports"))
            )
            # ...and nothing more: its initialize waits for a run to adopt it.
            assert noted(home, "initializes") == [first]
            assert noted(home, "starts") == [first]

            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: restarted(host, first))
            assert plugin_pid(host) == spare  # adopted, not started anew
            assert noted(home, "initializes") == [first, spare]
            assert (await host.execute_cli(["echo", "--text", "again"])).output == "hello again"
            # The next spare is made once this run is up.
            await wait_until(lambda: spare_ready(host))
            assert (await host.status("echo")).spare_pid not in (first, spare)


async def test_unload_ends_the_spare(home: Path) -> None:
    async with opened(home, warm_spares="always", spare_delay=0.0, overrides=OVERRIDES) as host:
        with trio.fail_after(TIMEOUT):
            spare = await loaded_with_spare(host)
            await host.unload("echo")
            await wait_until(gone(spare))
            assert (await host.status("echo")).spare_pid is None


async def test_an_update_never_adopts_the_old_versions_spare(home: Path) -> None:
    async with opened(home, warm_spares="always", spare_delay=0.0, overrides=OVERRIDES) as host:
        with trio.fail_after(TIMEOUT):
            old_spare = await loaded_with_spare(host)
            # A new version in place: a different greeting, so a stale process shows.
            folder = home / "plugins/echo"
            manifest = folder / "plugin.toml"
            manifest.write_text(
                manifest.read_text().replace('version = "1.0.0"', 'version = "1.1.0"')
            )
            code = folder / "echo_plugin.py"
            code.write_text(code.read_text().replace("[self.greeting, *", '["bonjour", *'))
            await host.reload("echo")
            assert plugin_pid(host) != old_spare
            await wait_until(gone(old_spare))
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "bonjour x"
            # A crash now adopts the new version's spare: still the new version.
            await wait_until(lambda: spare_ready(host))
            current = plugin_pid(host)
            os.kill(current, signal.SIGKILL)
            await wait_until(lambda: restarted(host, current))
            assert (await host.execute_cli(["echo", "--text", "y"])).output == "bonjour y"


async def test_a_spare_that_dies_is_logged_and_the_restart_starts_its_own(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with opened(home, warm_spares="always", spare_delay=0.0, overrides=OVERRIDES) as host:
        with trio.fail_after(TIMEOUT):
            spare = await loaded_with_spare(host)
            with caplog.at_level(logging.WARNING, logger="cws.plugin.echo"):
                os.kill(spare, signal.SIGKILL)

                async def logged() -> bool:
                    return any("warm spare" in r.getMessage() for r in caplog.records)

                await wait_until(logged)
            assert (await host.status("echo")).spare_pid is None
            current = plugin_pid(host)
            os.kill(current, signal.SIGKILL)
            await wait_until(lambda: restarted(host, current))
            assert plugin_pid(host) != spare
            assert (await host.execute_cli(["echo", "--text", "z"])).output == "hello z"


async def test_by_default_a_plugin_gets_a_spare_once_it_has_restarted(home: Path) -> None:
    """``after-restart``: a stable plugin costs no second process; one that crashed
    gets a spare for its next restart."""
    async with opened(home, spare_delay=0.0, overrides=OVERRIDES) as host:
        with trio.fail_after(TIMEOUT):
            await host.load("echo")
            first = plugin_pid(host)
            await host.execute_cli(["echo", "--text", "x"])  # up and serving
            await trio.testing.wait_all_tasks_blocked()
            assert (await host.status("echo")).spare_pid is None
            assert noted(home, "imports") == [first]  # no spare was forked
            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: restarted(host, first))
            await wait_until(lambda: spare_ready(host))
            second = plugin_pid(host)
            spare = (await host.status("echo")).spare_pid
            os.kill(second, signal.SIGKILL)
            await wait_until(lambda: restarted(host, second))
            assert plugin_pid(host) == spare


async def test_warm_spares_can_be_turned_off(home: Path) -> None:
    async with opened(home, warm_spares="never", spare_delay=0.0, overrides=OVERRIDES) as host:
        with trio.fail_after(TIMEOUT):
            await host.load("echo")
            first = plugin_pid(host)
            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: restarted(host, first))
            assert (await host.status("echo")).spare_pid is None
            assert noted(home, "imports") == noted(home, "initializes")  # one per run


async def test_a_spare_still_starting_is_not_waited_for(home: Path) -> None:
    """A plugin that writes much to stderr at import: nobody reads a spare's stderr
    before it is adopted, so its spare waits at import for ever. A restart must not
    wait for it: it starts a process of its own, and the stuck spare is killed."""
    flood = CODE.replace(
        "class EchoPlugin(Plugin):",
        "import sys\nsys.stderr.write('x' * 200_000 + '\\n')\nsys.stderr.flush()\n\n\n"
        "class EchoPlugin(Plugin):",
    )
    (home / "plugins/echo/echo_plugin.py").write_text(flood)
    async with opened(home, warm_spares="always", spare_delay=0.0, overrides=OVERRIDES) as host:
        with trio.fail_after(TIMEOUT):
            await host.load("echo")
            first = plugin_pid(host)

            async def spare_imported() -> bool:
                return len(noted(home, "imports")) == 2

            await wait_until(spare_imported)
            stuck = noted(home, "imports")[1]
            assert stuck != first
            assert (await host.status("echo")).spare_pid is None  # it never said hello
            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: restarted(host, first))
            assert plugin_pid(host) != stuck
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"
            await wait_until(gone(stuck))


async def test_a_spare_imports_the_plugins_preload_ahead_of_time(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``Plugin.preload``: the modules a run imports before ``initialize`` (a cloud
    SDK). The spare imports them while it waits, so the restart that adopts it does
    not; a preload that fails is the plugin's import failing."""
    deps = tmp_path / "deps"
    deps.mkdir()
    (deps / "cws_test_heavy_dep.py").write_text(
        "import os\n"
        "with open(os.path.join(os.environ['CWS_TEST_DATA'], 'preloads'), 'a') as log:\n"
        "    log.write(os.environ.get('CWS_PLUGIN_PID', str(os.getpid())) + '\\n')\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{deps}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    code = CODE.replace(
        "class EchoPlugin(Plugin):\n",
        "class EchoPlugin(Plugin):\n    preload = ('cws_test_heavy_dep',)\n",
    )
    (home / "plugins/echo/echo_plugin.py").write_text(code)
    async with opened(home, warm_spares="always", spare_delay=0.0, overrides=OVERRIDES) as host:
        with trio.fail_after(TIMEOUT):
            await host.load("echo")
            first = plugin_pid(host)
            assert noted(home, "preloads") == [first]  # before its initialize
            await wait_until(lambda: spare_ready(host))
            spare = (await host.status("echo")).spare_pid
            assert noted(home, "preloads") == [first, spare]  # ahead of any crash
            assert noted(home, "initializes") == [first]
            os.kill(first, signal.SIGKILL)
            await wait_until(lambda: restarted(host, first))
            assert plugin_pid(host) == spare
            assert noted(home, "initializes") == [first, spare]

    # A preload that cannot be imported: the plugin does not start, and says why.
    (home / "plugins/echo/echo_plugin.py").write_text(
        CODE.replace(
            "class EchoPlugin(Plugin):\n",
            "class EchoPlugin(Plugin):\n    preload = ('cws_no_such_module',)\n",
        )
    )
    async with opened(home, warm_spares="always", spare_delay=0.0, overrides=OVERRIDES) as host:
        with trio.fail_after(TIMEOUT), pytest.raises(PluginRefused, match="could not be imported"):
            await host.load("echo")
    assert any(
        "cannot import 'cws_no_such_module', a preload of plugin 'echo'" in r.getMessage()
        for r in caplog.records
    )

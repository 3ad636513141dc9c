"""The fork server builds a sandbox spec's Landlock rulesets and seccomp filter once and
its children only enforce them: a cached one must be exactly what a fresh build would
make. Landlock rules name inodes, so a folder replaced at the same path (an update, a
data folder removed and made again) must get a new ruleset, not the old inode's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from cws_actors._isolation import _kernel
from cws_actors._isolation._kernel import support

from ._fixtures import write_plugin
from .test_host import TIMEOUT, opened

pytestmark = pytest.mark.skipif(
    support().landlock_abi < 1 or not support().seccomp,
    reason="needs Landlock and seccomp (what the fork server prepares)",
)


def _spec(tmp_path: Path) -> dict[str, object]:
    home = tmp_path / "home"
    (home / "plugins" / "p").mkdir(parents=True)
    (home / "plugin-data" / "p").mkdir(parents=True)
    return {
        "folder": str(home / "plugins" / "p"),
        "data": str(home / "plugin-data" / "p"),
        "read": [], "write": [], "exec": [], "network": "none", "ports": [],
        "protected_ports": [], "daemon_port": None, "home": str(home),
    }  # fmt: skip


def test_a_prepared_sandbox_is_reused_until_a_path_it_names_changes(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    try:
        first = _kernel.prepare(spec, notify=True)
        assert first.program
        assert first.rulesets
        assert _kernel.prepare(spec, notify=True) is first  # nothing changed: cached
        assert _kernel.prepare(spec, notify=False) is not first  # another filter

        data = Path(str(spec["data"]))
        shutil.rmtree(data)
        data.mkdir()  # the same path, another inode
        second = _kernel.prepare(spec, notify=True)
        assert second is not first
        assert _kernel.prepare(spec, notify=True) is second

        shutil.rmtree(data)  # gone: a fresh build would allow nothing there
        assert _kernel.prepare(spec, notify=True) is not second
    finally:
        _kernel.forget_prepared()


async def test_a_plugin_reloaded_over_replaced_folders_reads_and_writes_them(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    with trio.fail_after(TIMEOUT):
        async with opened(home, fork_server=True) as host:
            await host.load("echo")
            await host.unload("echo")
            # An update at the same path and a data folder made again: start() writes
            # to the new data folder, the import reads the new plugin folder.
            shutil.rmtree(home / "plugins" / "echo")
            write_plugin(home / "plugins", "echo", isolation="subprocess")
            shutil.rmtree(home / "plugin-data" / "echo")
            (home / "plugin-data" / "echo").mkdir()
            await host.load("echo")
            result = await host.execute_cli(["echo", "--text", "x"])
            assert result.output == "hello x", result.output
            assert len((home / "plugin-data" / "echo" / "starts").read_text().split()) == 1

"""What the daemon must never do with a plugin's code or files: run a subprocess
plugin's module in its own process, unpack other bytes than it verified, or leave its
state readable to others."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from cws_actors import PluginNotFound, PluginRefused
from cws_actors._host._state import StateStore
from cws_actors._isolation._describe import DescribeFailed, describe, describe_spec
from cws_actors._isolation._launch import allowed_environment
from cws_actors._packaging._archive import make_archive
from cws_actors._packaging._signing import generate_keypair, sign

from ._fixtures import PLUGIN_CODE, write_plugin
from .test_host import TIMEOUT, opened


def spying_code(marker: Path) -> str:
    """The echo plugin, whose module's top level records where it runs."""
    return (
        "import os as _os\n"
        f"with open({str(marker)!r}, 'a') as _log:\n"
        "    _log.write(f\"{_os.getpid()} {_os.environ.get('AWS_SECRET_ACCESS_KEY')}\\n\")\n"
        + PLUGIN_CODE
    )


async def test_a_subprocess_plugins_code_never_runs_in_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    marker = tmp_path / "ran-here"
    marker.touch()
    source = write_plugin(
        tmp_path / "src", "echo", isolation="subprocess", code=spying_code(marker),
        extra=f'\n[sandbox]\nfilesystem = [{{path = "{marker}", access = "write"}}]\n',
    )  # fmt: skip
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.install(source, grants=["filesystem"])  # checks its code
            await host.load("echo")  # reads its capabilities, then runs it
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"
            assert [spec.name for _, spec in host.cli_commands()][:1] == ["echo"]
    runs = [line.split() for line in marker.read_text().splitlines()]
    assert len(runs) >= 3  # install's check, load's describe, the plugin's process
    assert all(pid != str(os.getpid()) for pid, _ in runs)
    assert all(secret == "None" for _, secret in runs)


async def test_a_broken_subprocess_plugin_is_refused_by_its_describe(tmp_path: Path) -> None:
    broken = "raise RuntimeError('no luck at import')\n"
    source = write_plugin(tmp_path / "src", "echo", isolation="subprocess", code=broken)
    home = tmp_path / "home"
    write_plugin(home / "plugins", "other", isolation="subprocess", code=broken)
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            with pytest.raises(PluginRefused, match="RuntimeError: no luck at import"):
                await host.install(source)
            with pytest.raises(PluginRefused, match=r"its code is broken.*no luck at import"):
                await host.load("other")


async def test_describe_reads_capabilities_in_a_limited_process(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path, "echo", isolation="subprocess")
    env = allowed_environment("echo")
    with trio.fail_after(TIMEOUT):
        spec = describe_spec("echo", "echo_plugin:EchoPlugin", folder, {"memory_mb": 200})
        capabilities = await describe(spec, env, timeout=TIMEOUT)
        (echo, *_) = capabilities.cli_commands
        assert (echo.name, echo.handler, [f.name for f in echo.flags]) == (
            "echo", "echo", ["text", "times"]
        )  # fmt: skip
        assert capabilities.api_endpoints[0].path == "/api/v1/echo"
        assert capabilities.event_handlers[0].event_type == "instance.*"
        slow = write_plugin(tmp_path / "slow", "echo", code="import time\ntime.sleep(60)\n")
        spec = describe_spec("echo", "echo_plugin:EchoPlugin", slow, {})
        with trio.fail_after(10), pytest.raises(DescribeFailed, match="longer than 1s"):
            await describe(spec, env, timeout=1)


def test_the_runner_starts_without_warnings(tmp_path: Path) -> None:
    """The package must not import the runner module, or ``python -m`` warns in every
    plugin process (the warning lands in its log)."""
    import json
    import subprocess
    import sys

    folder = write_plugin(tmp_path, "echo", isolation="subprocess")
    spec = describe_spec("echo", "echo_plugin:EchoPlugin", folder, {})
    argv = [sys.executable, "-W", "error", "-m", "cws_actors._isolation._runner", "--describe"]
    result = subprocess.run(
        [*argv, json.dumps(spec)], capture_output=True, timeout=TIMEOUT, check=False
    )
    assert (result.returncode, result.stderr) == (0, b"")
    assert json.loads(result.stdout)["cli_commands"][0]["name"] == "echo"


async def test_the_archive_unpacked_is_the_archive_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    archive = make_archive(write_plugin(tmp_path / "good", "echo"), tmp_path / "echo.cwsplugin")
    evil_code = PLUGIN_CODE.replace('"hello"', '"pwned"')
    evil = make_archive(
        write_plugin(tmp_path / "evil", "echo", code=evil_code), tmp_path / "evil.cwsplugin"
    )
    key = generate_keypair()
    (home / "trusted_keys").mkdir(parents=True)
    (home / "trusted_keys/release.pub").write_text(key.public_key().to_minisign())
    Path(f"{archive}.minisig").write_text(
        sign(archive.read_bytes(), key, trusted_comment="file:echo.cwsplugin")
    )
    # The attacker's write lands just after the installer read the archive: a real
    # race, made certain by swapping the file from inside that read.
    real_read_bytes = Path.read_bytes
    swapped: list[Path] = []

    def read_then_swap(path: Path) -> bytes:
        data = real_read_bytes(path)
        if path == archive and not swapped:
            evil.replace(archive)
            swapped.append(path)
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_swap)
    with trio.fail_after(TIMEOUT):
        async with opened(home, require_signed=True) as host:
            await host.install(archive)
    assert swapped == [archive]
    assert "pwned" not in (home / "plugins/echo/echo_plugin.py").read_text()


async def test_the_state_database_and_its_wal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old_umask = os.umask(0o022)
    try:
        with trio.fail_after(TIMEOUT):
            store = await StateStore.open(path)
            try:
                await store.log("echo", "note")
                for suffix in ("", "-wal", "-shm"):
                    mode = stat.S_IMODE(Path(f"{path}{suffix}").stat().st_mode)
                    assert mode == 0o600, (suffix, oct(mode))
            finally:
                await store.aclose()
    finally:
        os.umask(old_umask)


async def test_daemons_opening_one_new_database_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            StateStore(str(path))._connect().close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    with trio.fail_after(TIMEOUT):
        for thread in threads:
            await trio.to_thread.run_sync(thread.join)
    assert errors == []
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM cws_schema").fetchall() == [(4,)]


async def test_a_load_racing_a_remove_never_brings_it_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.install(write_plugin(tmp_path / "src", "echo"))
            await host.load("echo")
            outcome: list[BaseException | None] = []

            async def load() -> None:
                try:
                    await host.load("echo")
                    outcome.append(None)
                except (PluginNotFound, PluginRefused) as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(host.remove, "echo")
                await trio.testing.wait_all_tasks_blocked()
                assert host._lock.locked()  # the remove is under way
                nursery.start_soon(load)  # waits for it
            assert isinstance(outcome[0], PluginNotFound)
            assert host.loaded_names() == []
            assert not (home / "plugins/echo").exists()

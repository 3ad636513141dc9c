"""Install, update (hot reload with roll-back) and remove, with real folders, archives,
signatures and processes. Every refusal checks its message and that nothing changed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from cws_actors import PluginHost, PluginNotFound, PluginRefused
from cws_actors._packaging._archive import make_archive
from cws_actors._packaging._removal import remove_tree
from cws_actors._packaging._signing import generate_keypair, sign

from ..api._daemon import client, running_daemon, token
from ..cli._cws import cws_daemon
from ._fixtures import PLUGIN_CODE, write_plugin
from .test_host import TIMEOUT, opened


def snapshot(home: Path) -> dict[str, bytes]:
    """Every file under the user plugin folder, with its content."""
    plugins = home / "plugins"
    if not plugins.exists():
        return {}
    return {
        str(path.relative_to(plugins)): path.read_bytes()
        for path in sorted(plugins.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A plugin folder outside the daemon's home: what a user installs from."""
    return write_plugin(tmp_path / "src", "echo")


async def test_install_from_a_folder_then_load(tmp_path: Path, source: Path) -> None:
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            status = await host.install(source)
            assert (status.name, status.version, status.source) == ("echo", "1.0.0", "user")
            assert not status.loaded
            assert (home / "plugins/echo/plugin.toml").is_file()
            await host.load("echo")
            assert (await host.execute_cli(["echo", "--text", "hi"])).output == "hello hi"
            records = await host.state.plugins()
            assert records["echo"].version == "1.0.0"
            events = [entry.event for entry in await host.history("echo")]
            assert events[:3] == ["installed", "verified", "loaded"]
        # A new daemon finds it installed.
        async with opened(home) as host:
            assert [p.name for p in await host.discover()] == ["echo"]


async def test_install_a_signed_archive(tmp_path: Path, source: Path) -> None:
    home = tmp_path / "home"
    archive = make_archive(source, tmp_path / "echo-1.0.0.cwsplugin")
    key = generate_keypair()
    (home / "trusted_keys").mkdir(parents=True)
    (home / "trusted_keys/release.pub").write_text(key.public_key().to_minisign())
    Path(f"{archive}.minisig").write_text(
        sign(archive.read_bytes(), key, trusted_comment="file:echo-1.0.0.cwsplugin")
    )
    with trio.fail_after(TIMEOUT):
        async with opened(home, require_signed=True) as host:
            status = await host.install(archive)
            assert status.version == "1.0.0"
            (verified,) = [e for e in await host.history("echo") if e.event == "verified"]
            assert verified.detail == f"1.0.0, signed by {key.public_key().key_id_hex}"
            await host.load("echo")
            assert (await host.execute_cli(["echo", "--text", "z"])).output == "hello z"


def _bad_manifest(tmp_path: Path, source: Path) -> Path:
    (source / "plugin.toml").write_text("[plugin]\nname = 'echo'\n")
    return source


def _future_api(tmp_path: Path, source: Path) -> Path:
    return write_plugin(tmp_path / "other", "echo", api_version="1.7")


def _broken_code(tmp_path: Path, source: Path) -> Path:
    return write_plugin(tmp_path / "other", "echo", code="import no_such_module_here\n")


def _escaping_archive(tmp_path: Path, source: Path) -> Path:
    archive = make_archive(source, tmp_path / "evil.cwsplugin")
    with zipfile.ZipFile(archive, "a") as bundle:
        bundle.writestr("../../escaped.txt", "gotcha")
    return archive


def _linked_folder(tmp_path: Path, source: Path) -> Path:
    (source / "passwd").symlink_to("/etc/passwd")
    return source


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_bad_manifest, "missing plugin.version"),
        (_future_api, "needs plugin API 1.7, newer than this host's 1.0"),
        (_broken_code, "its code is broken: importing 'echo_plugin' failed"),
        (_escaping_archive, "unsafe or broken archive evil.cwsplugin"),
        (_linked_folder, "is a symbolic link"),
    ],
)
async def test_a_bad_plugin_is_refused_and_nothing_changes(
    tmp_path: Path, source: Path, make: object, reason: str
) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "other")
    before = snapshot(home)
    bad = make(tmp_path, source)  # type: ignore[operator]
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            records = await host.state.plugins()
            with pytest.raises(PluginRefused) as caught:
                await host.install(bad)
            assert reason in str(caught.value)
            assert snapshot(home) == before
            assert await host.state.plugins() == records
            assert [p.name for p in await host.discover()] == ["other"]
    assert not (tmp_path / "escaped.txt").exists()


def _signed(tmp_path: Path, source: Path, home: Path, *, trusted: bool = True,
            comment: str = "file:echo.cwsplugin") -> tuple[Path, str]:  # fmt: skip
    archive = make_archive(source, tmp_path / "echo.cwsplugin")
    key = generate_keypair()
    if trusted:
        (home / "trusted_keys").mkdir(parents=True, exist_ok=True)
        (home / "trusted_keys/k.pub").write_text(key.public_key().to_minisign())
    Path(f"{archive}.minisig").write_text(sign(archive.read_bytes(), key, trusted_comment=comment))
    return archive, key.public_key().key_id_hex


@pytest.mark.parametrize("case", ["tampered", "untrusted", "revoked", "expired", "unsigned"])
async def test_a_bad_signature_is_refused_and_nothing_changes(
    tmp_path: Path, source: Path, case: str
) -> None:
    home = tmp_path / "home"
    (home / "plugins").mkdir(parents=True)
    expected = {
        "tampered": "signature refused",
        "untrusted": "signature refused",
        "revoked": "signature refused",
        "expired": "signature refused",
        "unsigned": "is not signed and the policy requires signed plugins",
    }[case]
    if case == "unsigned":
        archive = make_archive(source, tmp_path / "echo.cwsplugin")
    else:
        comment = f"expires:{int(time.time()) - 60}" if case == "expired" else "file:echo"
        archive, key_id = _signed(
            tmp_path, source, home, trusted=case != "untrusted", comment=comment
        )
        if case == "tampered":
            with zipfile.ZipFile(archive, "a") as bundle:
                bundle.writestr("extra.py", "print('not what was signed')")
        if case == "revoked":
            (home / "revoked_keys").write_text(f"# leaked on 2026-11-30\n{key_id}\n")
    with trio.fail_after(TIMEOUT):
        async with opened(home, require_signed=True) as host:
            with pytest.raises(PluginRefused) as caught:
                await host.install(archive)
            assert expected in str(caught.value)
            detail = {"untrusted": "trust", "revoked": "revoked", "expired": "expired"}
            assert detail.get(case, "") in str(caught.value).lower()
            assert snapshot(home) == {}
            assert await host.state.plugins() == {}


async def test_installing_twice_is_refused(tmp_path: Path, source: Path) -> None:
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.install(source)
            before = snapshot(home)
            with pytest.raises(PluginRefused, match=r"1\.0\.0 is already installed .*update it"):
                await host.install(source)
            assert snapshot(home) == before


def _version(source_root: Path, version: str, greeting: str, *, start_fails: bool = False) -> Path:
    code = PLUGIN_CODE.replace('config.get("greeting", "hello")', repr(greeting))
    if start_fails:
        code = code.replace(
            "    async def start(self, ctx):\n",
            "    async def start(self, ctx):\n        raise RuntimeError('v2 cannot start')\n",
        )
    return write_plugin(source_root / version, "echo", version=version, code=code)


@asynccontextmanager
async def echo_v1_loaded(tmp_path: Path, isolation: str) -> AsyncIterator[PluginHost]:
    """A host whose home is ``tmp_path/home``, with echo 1.0.0 (it answers ``v1 TEXT``)
    installed and loaded in ``isolation``."""
    async with opened(tmp_path / "home", overrides={"echo": {"isolation": isolation}}) as host:
        await host.install(_version(tmp_path, "1.0.0", "v1"))
        await host.load("echo")
        yield host


@pytest.mark.parametrize("isolation", ["in_process", "subprocess"])
async def test_update_hot_reloads_without_losing_a_message(tmp_path: Path, isolation: str) -> None:
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with echo_v1_loaded(tmp_path, isolation) as host:
            old_pid = host._loaded["echo"].counters.pid
            answers: list[str] = []
            updated = trio.Event()

            async def caller(host: PluginHost, answers: list[str], updated: trio.Event) -> None:
                # Calls keep coming while the new version starts; each one must succeed.
                while not updated.is_set():
                    result = await host.execute_cli(["echo", "--text", "x"])
                    assert result.exit_code == 0, result.output
                    answers.append(result.output)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(caller, host, answers, updated)
                status = await host.update("echo", _version(tmp_path, "2.0.0", "v2"))
                updated.set()
            assert (status.version, status.state, status.restarts) == ("2.0.0", "running", 0)
            assert set(answers) == {"v1 x", "v2 x"}  # served by both, none failed
            assert answers == sorted(answers)  # and never by v1 after v2
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "v2 x"
            assert status.path == "/plugins/echo"
            if isolation == "subprocess":
                assert host._loaded["echo"].counters.pid != old_pid
            assert 'version = "2.0.0"' in (home / "plugins/echo/plugin.toml").read_text()
            assert not any(p.name.startswith(".") for p in (home / "plugins").iterdir())


@pytest.mark.parametrize("isolation", ["in_process", "subprocess"])
async def test_a_failed_update_rolls_back(tmp_path: Path, isolation: str) -> None:
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with echo_v1_loaded(tmp_path, isolation) as host:
            before = snapshot(home)
            broken = _version(tmp_path, "2.0.0", "v2", start_fails=True)
            with pytest.raises(PluginRefused, match=r"2\.0\.0 failed to start .*v2 cannot start"):
                await host.update("echo", broken)
            assert snapshot(home) == before
            status = await host.status("echo")
            assert (status.version, status.state, status.restarts) == ("1.0.0", "running", 0)
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "v1 x"


async def test_remove_deletes_the_plugin(tmp_path: Path, source: Path) -> None:
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.install(source)
            await host.load("echo")
            await host.execute_cli(["echo", "--text", "x"])
            await host.remove("echo", purge_data=True)
            assert snapshot(home) == {}
            assert not (home / "plugin-data/echo").exists()
            assert "echo" not in await host.state.plugins()
            with pytest.raises(PluginNotFound):
                await host.status("echo")
            assert [e.event for e in await host.history("echo")][-2:] == ["unloaded", "removed"]


async def test_system_plugins_are_not_removed_or_updated(tmp_path: Path, source: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "system", "sys")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            with pytest.raises(PluginRefused, match="it is a system plugin; remove it with"):
                await host.remove("sys")
            with pytest.raises(PluginRefused, match="it is a system plugin; update it with"):
                await host.update("sys", source)
            assert (home / "system/sys/plugin.toml").is_file()


INSTALLER = """
import sys, time, trio
from pathlib import Path
from cws_actors import HostConfig, open_plugin_host, open_runtime
from cws_actors._host import _install

unpack = _install.unpack_archive

def unpack_then_wait(*args, **kwargs):
    # The archive is unpacked into the staging folder, not yet checked or renamed into
    # place: say so, and stay there until the test kills this process.
    unpack(*args, **kwargs)
    print("unpacked", flush=True)
    time.sleep(3600)

_install.unpack_archive = unpack_then_wait

async def main():
    home, source = Path(sys.argv[1]), Path(sys.argv[2])
    config = HostConfig(home=home, system_dir=home / "system", entry_points=False)
    async with open_runtime() as runtime, open_plugin_host(runtime, config) as host:
        await host.install(source)

trio.run(main)
"""


async def test_a_kill_mid_install_leaves_the_previous_state(tmp_path: Path) -> None:
    """SIGKILL the installing daemon once it has unpacked an archive into its staging
    folder (it says so, then waits there): the plugins folder is as it was, and the next
    daemon tidies the leftovers."""
    home = tmp_path / "home"
    write_plugin(home / "plugins", "other")
    big = write_plugin(tmp_path / "src", "big")
    for index in range(20):
        (big / f"data_{index}.bin").write_bytes(os.urandom(64 * 1024))
    archive = make_archive(big, tmp_path / "big.cwsplugin")
    before = snapshot(home)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", INSTALLER, str(home), str(archive)], stdout=subprocess.PIPE
    )
    try:
        with trio.fail_after(TIMEOUT):
            assert process.stdout is not None
            said = b""
            while b"unpacked" not in said:
                chunk = await process.stdout.receive_some()
                assert chunk, "the installer ended before it unpacked"
                said += chunk
            staged = [p for p in (home / "plugins").iterdir() if p.name.startswith(".staging-")]
            assert len(staged) == 1  # mid-install: staged, not yet in place
    finally:
        process.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()
    with trio.fail_after(TIMEOUT):
        assert not (home / "plugins/big").exists()
        assert {k: v for k, v in snapshot(home).items() if not k.startswith(".")} == before
        async with opened(home) as host:
            assert [p.name for p in await host.discover()] == ["other"]
            assert snapshot(home) == before  # the staging folder is gone


async def test_an_update_killed_between_renames_is_recovered(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo")
    before = snapshot(home)
    # What a kill between "plugin -> backup" and "staging -> plugin" leaves.
    (home / "plugins/echo").rename(home / "plugins/.old-echo")
    write_plugin(home / "plugins/.staging-0123", "half", version="9.9.9")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            assert [(p.name, p.version) for p in await host.discover()] == [("echo", "1.0.0")]
    assert snapshot(home) == before


# ---------------------------------------------------------------- deep trees (issue 14.9)


def deep_tree(root: Path, depth: int) -> None:
    """``root/d/d/.../d/x.txt``, ``depth`` folders below ``root``, made relative to one
    open folder at a time: deeper than the recursion limit and longer than PATH_MAX."""
    root.mkdir(parents=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        os.close(os.open("x.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.symlink(str(root.parent / "outside"), "link", dir_fd=fd)
    finally:
        os.close(fd)


def test_remove_tree_removes_a_tree_of_any_depth_without_following_links(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_text("not ours")
    deep_tree(tmp_path / "deep", 3000)
    with pytest.raises(RecursionError):  # what recovery used before
        shutil.rmtree(tmp_path / "deep")
    remove_tree(tmp_path / "deep")
    assert not (tmp_path / "deep").exists()
    assert (outside / "kept.txt").read_text() == "not ours"  # the link was not followed
    remove_tree(tmp_path / "deep")  # gone already: nothing to do
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()


async def test_an_archive_nested_too_deep_is_a_400_over_http(tmp_path: Path, source: Path) -> None:
    """The upload that used to be a 500 (RecursionError) leaving a staging folder no
    start could remove: refused before unpacking, naming the entry, nothing left."""
    archive = make_archive(source, tmp_path / "echo.cwsplugin")
    deep_name = "/".join(["d"] * 2100) + "/x.txt"
    with zipfile.ZipFile(archive, "a") as bundle:
        bundle.writestr(deep_name, "deep")
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with running_daemon(home) as daemon:
            manager = await token(daemon, "plugins:manage")
            async with client(daemon, manager) as http:
                files = {"archive": ("deep.cwsplugin", archive.read_bytes(), "application/zip")}
                refused = await http.post("/api/v1/plugins/install", files=files)
                assert refused.status_code == 400, refused.text
                body = refused.json()
                assert (body["title"], body["rule"], body["entry"]) == (
                    "Bad archive",
                    "depth",
                    deep_name,
                )
                assert body["detail"].startswith("deep.cwsplugin: entry 'd/d/d/")
                assert "is 2101 levels deep, over the limit of 32" in body["detail"]
                assert body["detail"].endswith("; nothing was installed")
                assert (await http.get("/api/v1/plugins")).json()["plugins"] == []
    assert not (home / "plugins").exists()  # refused before staging: nothing was unpacked
    assert list((home / "uploads").iterdir()) == []


def _unremovable(folder: Path) -> None:
    """Make ``folder``'s content impossible to delete, even for root (immutable)."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        return
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.fail(f"cannot make a folder immutable here: {made.stderr.decode().strip()}")


def _removable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=False)
    else:
        folder.chmod(0o700)


async def test_a_daemon_starts_whatever_the_leftovers(tmp_path: Path) -> None:
    """A staging folder 2,100 levels deep (what the upload above used to leave) is
    removed at start; one that cannot be removed is logged with its path, and the
    daemon starts and serves anyway."""
    home = tmp_path / "home"
    write_plugin(home / "plugins", "other")
    deep_tree(home / "plugins/.staging-deep", 2100)
    stuck = home / "plugins/.trash-stuck"
    write_plugin(stuck, "stuck")
    _unremovable(stuck)
    try:
        with trio.fail_after(TIMEOUT):
            async with cws_daemon(home) as daemon, httpx.AsyncClient() as http:
                assert (await http.get(f"{daemon.url}/healthz")).status_code == 200
                listed = (await http.get(f"{daemon.url}/api/v1/plugins")).json()
                assert [p["name"] for p in listed["plugins"]] == ["other"]
                log = daemon.log.read_text()
        assert not (home / "plugins/.staging-deep").exists()
        assert "removed the unfinished .staging-deep" in log
        assert f"ERROR cws.plugins: cannot tidy up {stuck}" in log
        assert "can be removed by hand" in log
        assert stuck.exists()
    finally:
        _removable(stuck)

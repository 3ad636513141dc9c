"""Issue 16, items 7-9: what the operator trusts. No plugin code runs in the daemon
before the plugin is accepted; folder plugins run in process only when the operator
allows it; under ``require_signed`` a folder plugin loads only as a signed install put
it, unchanged; an update to a lower version is refused unless asked for."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from api import load_config
from api._config import ConfigError
from cws_actors import PluginHost, PluginRefused
from cws_actors._packaging._archive import make_archive
from cws_actors._packaging._signing import SigningKey, generate_keypair, sign

from ..api._daemon import client, running_daemon, token
from ._fixtures import PLUGIN_CODE, write_plugin
from .test_host import TIMEOUT, opened
from .test_install import snapshot


def _grant(folder: Path) -> str:
    """A ``[sandbox]`` letting the plugin write in ``folder`` (its home excepted: so
    only to what exists there, such as the marker, made here first)."""
    (folder / "ran").touch()
    return f'\n[sandbox]\nfilesystem = [{{path = "{folder}", access = "write"}}]\n'


def _marking(marker: Path) -> str:
    """The echo plugin, with a module top level that appends its process id to
    ``marker``: where its code ran."""
    return (
        f"import os\nwith open({str(marker)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n"
        + (PLUGIN_CODE)
    )


def _pids(marker: Path) -> list[int]:
    return [int(line) for line in marker.read_text().split()] if marker.exists() else []


def _trust(home: Path) -> SigningKey:
    key = generate_keypair()
    (home / "trusted_keys").mkdir(parents=True, exist_ok=True)
    (home / "trusted_keys/release.pub").write_text(key.public_key().to_minisign())
    return key


def _signed_archive(source: Path, archive: Path, key: SigningKey) -> Path:
    make_archive(source, archive)
    comment = f"file:{archive.name}"
    Path(f"{archive}.minisig").write_text(sign(archive.read_bytes(), key, trusted_comment=comment))
    return archive


async def _state(host: PluginHost, name: str) -> tuple[object, list[tuple[str, str]]]:
    records = await host.state.plugins()
    history = [(entry.event, entry.detail) for entry in await host.history(name)]
    return records.get(name), history


# ----------------------------------------------------------- 7: code before a refusal


async def test_an_archive_named_like_an_installed_plugin_runs_no_code(tmp_path: Path) -> None:
    """The attack: an in-process archive named ``aws`` (an entry point) is refused as
    installed already, and its module's top level never ran, anywhere."""
    home, marker = tmp_path / "home", tmp_path / "ran"
    source = write_plugin(tmp_path / "src", "aws", code=_marking(marker))
    archive = make_archive(source, tmp_path / "aws.cwsplugin")
    with trio.fail_after(TIMEOUT):
        async with opened(home, entry_points=True, in_process_allowed={"aws"}) as host:
            before, records = snapshot(home), await host.state.plugins()
            with pytest.raises(PluginRefused, match=r"version .* is already installed"):
                await host.install(archive)
            assert (snapshot(home), await host.state.plugins()) == (before, records)
    assert _pids(marker) == []


async def test_installing_describes_an_in_process_plugin_in_another_process(
    tmp_path: Path,
) -> None:
    """Validating an install imports the plugin in a describe process only; its code
    runs in the daemon when an allowed in-process plugin loads, not before."""
    home, marker = tmp_path / "home", tmp_path / "ran"
    source = write_plugin(tmp_path / "src", "echo", code=_marking(marker), extra=_grant(tmp_path))
    with trio.fail_after(TIMEOUT):
        async with opened(home, in_process_allowed={"echo"}) as host:
            await host.install(source, grants=["filesystem"])
            assert _pids(marker)  # it was described...
            assert os.getpid() not in _pids(marker)  # ...in another process
            status = await host.load("echo")
            assert status.isolation == "in_process"
            assert _pids(marker)[-1] == os.getpid()


async def test_a_folder_plugin_runs_in_process_only_when_the_operator_allows_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home, marker = tmp_path / "home", tmp_path / "ran"
    # asks for in_process; its describe, sandboxed, may write the marker
    write_plugin(home / "plugins", "echo", code=_marking(marker), extra=_grant(tmp_path))
    with trio.fail_after(TIMEOUT):
        grants = {"default_grants": {"echo": ("filesystem",)}}
        async with opened(home, in_process_allowed=(), **grants) as host:
            status = await host.load("echo")
            assert (status.isolation, status.state) == ("subprocess", "running")
            assert status.pid not in (None, os.getpid())
            assert os.getpid() not in _pids(marker)
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"
    assert any(
        record.levelno == logging.WARNING and "in_process_allowed" in record.getMessage()
        for record in caplog.records
    )
    # The operator's override decides too.
    async with opened(
        home, in_process_allowed=(), overrides={"echo": {"isolation": "in_process"}}, **grants
    ) as host:
        with trio.fail_after(TIMEOUT):
            assert (await host.load("echo")).isolation == "in_process"


def test_in_process_allowed_is_an_array_of_names_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cws.toml"
    path.write_text('[plugins]\nin_process_allowed = ["echo", "web"]\n')
    assert load_config(path, env={}).in_process_allowed == ("echo", "web")
    assert load_config(None, env={}).in_process_allowed == ()
    path.write_text('[plugins]\nin_process_allowed = "echo"\n')
    with pytest.raises(ConfigError, match="in_process_allowed must be an array of plugin names"):
        load_config(path, env={})


# ------------------------------------------------ 8: folder plugins and require_signed


async def test_under_require_signed_a_plugin_copied_into_the_folder_is_refused(
    tmp_path: Path,
) -> None:
    """A plugin written into $CWS_HOME/plugins by hand is refused at load (as SIGHUP's
    load_all loads it), and none of its code ran."""
    home, marker = tmp_path / "home", tmp_path / "ran"
    write_plugin(home / "plugins", "echo", code=_marking(marker))
    with trio.fail_after(TIMEOUT):
        async with opened(home, require_signed=True) as host:
            results = await host.load_all()
            assert results["echo"] is not None
            assert "not installed from a signed archive" in results["echo"]
            assert host.loaded_names() == []
            with pytest.raises(PluginRefused, match="require_signed is on"):
                await host.load("echo")
    assert _pids(marker) == []


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (lambda d: (d / "echo_plugin.py").write_text(PLUGIN_CODE + "\nEVIL = 1\n"),
         "echo_plugin.py was changed"),
        (lambda d: (d / "sitecustomize.py").write_text("EVIL = 1\n"), "sitecustomize.py was added"),
    ],
    ids=["changed", "added"],
)  # fmt: skip
async def test_under_require_signed_a_changed_file_is_refused_by_name(
    tmp_path: Path, tamper: object, named: str
) -> None:
    home = tmp_path / "home"
    key = _trust(home)
    archive = _signed_archive(write_plugin(tmp_path / "src", "echo"), tmp_path / "e.cwsplugin", key)
    with trio.fail_after(TIMEOUT):
        async with opened(home, require_signed=True) as host:
            await host.install(archive)
            assert (await host.load("echo")).state == "running"  # as installed: it loads
            await host.unload("echo")
            tamper(home / "plugins/echo")  # type: ignore[operator]
            before = await _state(host, "echo")
            with pytest.raises(PluginRefused, match=f"its file {named} since it was installed"):
                await host.load("echo")
            assert host.loaded_names() == []
            assert (await _state(host, "echo"))[0] == before[0]


async def test_without_require_signed_a_changed_file_is_logged_and_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    source = write_plugin(tmp_path / "src", "echo")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.install(source)
            (home / "plugins/echo/echo_plugin.py").write_text(PLUGIN_CODE + "\n# edited\n")
            assert (await host.load("echo")).state == "running"
    assert any(
        "echo_plugin.py was changed since it was installed" in record.getMessage()
        and record.levelno == logging.WARNING
        for record in caplog.records
    )


# ------------------------------------------------------------------- 9: downgrades


async def test_a_signed_downgrade_is_refused_unless_allowed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = _trust(home)
    v2 = _signed_archive(
        write_plugin(tmp_path / "v2", "echo", version="2.0.0"), tmp_path / "v2.cwsplugin", key
    )
    v1 = _signed_archive(
        write_plugin(tmp_path / "v1", "echo", version="1.0.0"), tmp_path / "v1.cwsplugin", key
    )
    with trio.fail_after(TIMEOUT):
        async with opened(home, require_signed=True) as host:
            await host.install(v2)
            await host.load("echo")
            before, files, state = (
                await host.status("echo"),
                snapshot(home),
                await _state(host, "echo"),
            )
            with pytest.raises(
                PluginRefused, match=r"version 1\.0\.0 is lower than the installed 2\.0\.0"
            ):
                await host.update("echo", v1)
            assert (await host.status("echo")).version == before.version == "2.0.0"
            assert (snapshot(home), await _state(host, "echo")) == (files, state)
            status = await host.update("echo", v1, allow_downgrade=True)
            assert status.version == "1.0.0"
            assert ("downgraded", "from 2.0.0 to 1.0.0") in (await _state(host, "echo"))[1]
            # The downgraded files are the ones recorded: it loads again after an unload.
            await host.unload("echo")
            assert (await host.load("echo")).version == "1.0.0"


async def test_the_http_update_refuses_a_downgrade_unless_the_field_allows_it(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    key = _trust(home)
    v2 = _signed_archive(
        write_plugin(tmp_path / "v2", "echo", version="2.0.0"), tmp_path / "v2.cwsplugin", key
    )
    v1 = _signed_archive(
        write_plugin(tmp_path / "v1", "echo", version="1.0.0"), tmp_path / "v1.cwsplugin", key
    )

    def upload(archive: Path, **fields: str) -> dict[str, object]:
        files = {
            "archive": (archive.name, archive.read_bytes(), "application/zip"),
            "signature": (f"{archive.name}.minisig", Path(f"{archive}.minisig").read_bytes()),
        }
        return {"files": files, "data": fields or None}

    with trio.fail_after(TIMEOUT):
        async with running_daemon(home, require_signed=True) as daemon:
            bearer = await token(daemon, "plugins:manage")
            async with client(daemon, bearer) as http:
                response = await http.post("/api/v1/plugins/install", **upload(v2))  # type: ignore[arg-type]
                assert response.status_code == 201, response.text
                response = await http.post("/api/v1/plugins/echo/update", **upload(v1))  # type: ignore[arg-type]
                assert response.status_code == 409, response.text
                assert "1.0.0 is lower than the installed 2.0.0" in response.json()["detail"]
                assert (await daemon.host.status("echo")).version == "2.0.0"
                bad = await http.post(
                    "/api/v1/plugins/echo/update", **upload(v1, allow_downgrade="maybe")
                )  # type: ignore[arg-type]
                assert bad.status_code == 400
                assert "allow_downgrade must be true or false" in bad.json()["detail"]
                response = await http.post(
                    "/api/v1/plugins/echo/update",
                    **upload(v1, allow_downgrade="true"),  # type: ignore[arg-type]
                )
                assert response.status_code == 200, response.text
                assert (await daemon.host.status("echo")).version == "1.0.0"

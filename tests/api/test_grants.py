"""Grants, secrets and ``ctx.api`` against a real daemon (hypercorn on 127.0.0.1) and a
real subprocess plugin whose sandbox asks for a port, a secret and a daemon scope."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import trio

from api._daemon import Daemon

from ..plugins._sandboxed import write_sandboxed
from ._daemon import TIMEOUT, client, running_daemon, token

ASKS = ["network:*:443", "secrets:aws_key", "apis:events:publish"]


async def run(daemon: Daemon, *argv: str) -> tuple[int, str]:
    result = await daemon.host.execute_cli(list(argv))
    return result.exit_code, result.output


@contextlib.asynccontextmanager
async def sbx_and_an_admin(tmp_path: Path) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    """A daemon whose plugins folder holds ``sbx``, put there by hand (nothing granted),
    and a client holding an admin token."""
    write_sandboxed(tmp_path / "plugins")
    async with running_daemon(tmp_path) as daemon:
        admin = await token(daemon, "admin")
        async with client(daemon, admin) as http:
            yield daemon, http


def archive_of(folder: Path) -> bytes:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, path.name)
    return data.getvalue()


async def test_a_plugin_put_in_the_folder_by_hand_has_no_grants_until_granted(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with sbx_and_an_admin(tmp_path) as (_, http):
            view = (await http.get("/api/v1/plugins/sbx")).json()
            assert view["loaded"] is False
            assert view["sandbox"]["requests"] == ASKS
            assert view["sandbox"]["ungranted"] == ASKS
            refused = await http.post("/api/v1/plugins/sbx/load")
            assert refused.status_code == 409
            problem = refused.json()
            assert problem["ungranted"] == ASKS
            assert (
                "its sandbox asks for network:*:443, secrets:aws_key, apis:events:publish,"
                " which the operator has not granted; grant it with `cws plugin grant sbx"
                " network:*:443,secrets:aws_key,apis:events:publish`" in problem["detail"]
            )
            # A grant it does not ask for is a 400 naming what it asks for.
            wrong = await http.post("/api/v1/plugins/sbx/grant", json={"grants": "exec"})
            assert wrong.status_code == 400
            assert "does not ask for 'exec'" in wrong.json()["detail"]
            bad = await http.post("/api/v1/plugins/sbx/grant", json={"grants": "root"})
            assert bad.status_code == 400
            assert "'root' is not a grant" in bad.json()["detail"]
            # Granting a part: the rest is still named at load.
            part = await http.post("/api/v1/plugins/sbx/grant", json={"grants": ["network"]})
            assert part.json()["sandbox"]["stored"] == ["network:*:443"]
            again = await http.post("/api/v1/plugins/sbx/load")
            assert again.json()["ungranted"] == ["secrets:aws_key", "apis:events:publish"]
            done = await http.post(
                "/api/v1/plugins/sbx/grant", json={"grants": "secrets,apis:events:publish"}
            )
            assert done.json()["sandbox"]["ungranted"] == []
            loaded = await http.post("/api/v1/plugins/sbx/load")
            assert loaded.status_code == 200, loaded.text
            assert loaded.json()["state"] == "running"
            history = (await http.get("/api/v1/plugins/sbx")).json()["history"]
            assert [e["event"] for e in history].count("granted") == 2


async def test_a_token_cannot_grant_more_than_it_holds(tmp_path: Path) -> None:
    write_sandboxed(tmp_path / "plugins")
    with trio.fail_after(TIMEOUT):
        async with running_daemon(tmp_path) as daemon:
            manager = await token(daemon, "plugins:manage")
            async with client(daemon, manager) as http:
                for grant in ("all", "secrets:aws_key", "apis:events:publish"):
                    refused = await http.post("/api/v1/plugins/sbx/grant", json={"grants": grant})
                    assert refused.status_code == 403, grant
                    assert "a token cannot give a plugin more than it holds" in refused.text
                allowed = await http.post("/api/v1/plugins/sbx/grant", json={"grants": "network"})
                assert allowed.status_code == 200


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc``."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            todo.extend(int(child) for child in (task / "children").read_text().split())
    return found


async def test_secrets_reach_only_the_plugins_granted_them(tmp_path: Path) -> None:
    write_sandboxed(tmp_path / "plugins")
    value = "AKIA-not-a-real-key-0123456789"
    with trio.fail_after(TIMEOUT):
        async with running_daemon(tmp_path) as daemon:
            admin = await token(daemon, "admin")
            manager = await token(daemon, "plugins:manage")
            async with client(daemon, manager) as weak:
                assert (await weak.get("/api/v1/secrets")).status_code == 403
                put = await weak.put("/api/v1/secrets/aws_key", json={"value": value})
                assert put.status_code == 403
            async with client(daemon, admin) as http:
                created = await http.put("/api/v1/secrets/aws_key", json={"value": value})
                assert (created.status_code, created.json()) == (
                    201, {"name": "aws_key", "replaced": False}
                )  # fmt: skip
                bad = await http.put("/api/v1/secrets/a%20b", json={"value": "x"})
                assert bad.status_code == 400
                assert "letters, digits" in bad.json()["detail"]
                listed = await http.get("/api/v1/secrets")
                assert listed.json()["secrets"] == [{"name": "aws_key", "asked_for_by": ["sbx"]}]
                assert value not in listed.text
                file = tmp_path / "secrets.json"
                assert stat.S_IMODE(file.stat().st_mode) == 0o600
                await http.post("/api/v1/plugins/sbx/grant", json={"grants": "all"})
                assert (await http.post("/api/v1/plugins/sbx/load")).status_code == 200

                assert await run(daemon, "sbx", "secret", "--name", "aws_key") == (0, value)
                code, said = await run(daemon, "sbx", "secret", "--name", "gcp_key")
                assert code == 1
                assert said == (
                    "PermissionError: plugin 'sbx' may not read the secret 'gcp_key': its"
                    " [sandbox] secrets does not name it (add it there, and the operator"
                    " grants it with `cws plugin grant sbx secrets:gcp_key`)"
                )
                # Never in the plugin's environment (its process's environ, as the kernel
                # holds it), whatever it is granted.
                _, pid = await run(daemon, "sbx", "pid")
                processes = _family(int(pid))
                assert len(processes) >= 2  # its keeper and the plugin, in its namespace
                for process in processes:
                    environ = Path(f"/proc/{process}/environ").read_bytes()
                    assert value.encode() not in environ
                    assert b"aws_key" not in environ

                # Revoked: the running plugin is refused at its next read.
                revoked = await http.post("/api/v1/plugins/sbx/revoke", json={"grants": "secrets"})
                assert revoked.json()["sandbox"]["ungranted"] == ["secrets:aws_key"]
                code, said = await run(daemon, "sbx", "secret", "--name", "aws_key")
                assert code == 1
                assert said.startswith(
                    "PermissionError: plugin 'sbx' may not read the secret 'aws_key': it is not"
                    " granted; the operator grants it with `cws plugin grant sbx secrets:aws_key`"
                )
                await http.post("/api/v1/plugins/sbx/grant", json={"grants": "secrets"})
                removed = await http.delete("/api/v1/secrets/aws_key")
                assert removed.json() == {"removed": "aws_key"}
                assert (await http.delete("/api/v1/secrets/aws_key")).status_code == 404
                code, said = await run(daemon, "sbx", "secret", "--name", "aws_key")
                assert (code, said) == (
                    1,
                    "LookupError: the secret 'aws_key' is not set; the operator sets it with"
                    " `cws secret set aws_key`",
                )


async def test_ctx_api_has_exactly_the_granted_scopes_and_its_token_dies_with_the_run(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with sbx_and_an_admin(tmp_path) as (daemon, http):
            await http.post("/api/v1/plugins/sbx/grant", json={"grants": "all"})
            assert (await http.post("/api/v1/plugins/sbx/load")).status_code == 200
            body = '{"topic": "sbx.hello", "payload": {"n": 1}}'
            code, said = await run(
                daemon, "sbx", "call", "--method", "POST", "--path", "/api/v1/events",
                "--body", body,
            )  # fmt: skip
            assert code == 0, said
            assert said.startswith("202 "), said
            # Not granted: a write that needs another scope, and the daemon's reads.
            code, said = await run(
                daemon, "sbx", "call", "--method", "POST", "--path", "/api/v1/faults",
                "--body", '{"target": "/plugins/sbx", "spec": "crash:1"}',
            )  # fmt: skip
            assert said.startswith("403 "), said
            assert "faults:inject" in said, said
            code, said = await run(daemon, "sbx", "call", "--path", "/api/v1/plugins")
            assert said.startswith("403 "), said
            assert "api:read" in said, said
            assert (await http.get("/api/v1/faults")).status_code == 200  # an operator reads

            # The minted token: in memory, never in the state database or token file.
            _, minted = await run(daemon, "sbx", "token")
            assert minted.startswith("cws_")
            assert daemon.plugin_tokens.active("sbx") == 1
            assert minted[4:20] not in (tmp_path / "state.db").read_bytes().decode("latin-1")
            async with client(daemon, minted) as as_plugin:
                answer = await as_plugin.post(
                    "/api/v1/events", json={"topic": "sbx.direct", "payload": None}
                )
                assert answer.status_code == 202
                # Expired (the daemon's clock two hours on): 401; the plugin renews.
                real = daemon.plugin_tokens.clock
                daemon.plugin_tokens.clock = lambda: real() + 7200
                try:
                    expired = await as_plugin.post(
                        "/api/v1/events", json={"topic": "sbx.direct", "payload": None}
                    )
                    assert expired.status_code == 401
                    assert "has expired" in expired.json()["detail"]
                    code, said = await run(
                        daemon, "sbx", "call", "--method", "POST", "--path",
                        "/api/v1/events", "--body", body,
                    )  # fmt: skip
                    assert said.startswith("202 "), said
                finally:
                    daemon.plugin_tokens.clock = real
                _, renewed = await run(daemon, "sbx", "token")
                assert renewed != minted
                # Unloaded: every token of its run is revoked.
                assert (await http.post("/api/v1/plugins/sbx/unload")).status_code == 200
                assert daemon.plugin_tokens.active("sbx") == 0
                async with client(daemon, renewed) as stale:
                    gone = await stale.post(
                        "/api/v1/events", json={"topic": "sbx.direct", "payload": None}
                    )
                    assert gone.status_code == 401


async def test_a_plugin_without_apis_gets_a_client_that_refuses(tmp_path: Path) -> None:
    write_sandboxed(tmp_path / "plugins", sandbox='secrets = ["aws_key"]')
    with trio.fail_after(TIMEOUT):
        async with running_daemon(tmp_path, default_grants={"sbx": ("all",)}) as daemon:
            assert (await daemon.host.status("sbx")).loaded  # default_grants granted it
            code, said = await run(daemon, "sbx", "call", "--path", "/api/v1/events")
            assert code == 1
            assert said.startswith("PermissionError: plugin 'sbx' may not call the daemon's API")


async def test_default_grants_apply_to_every_plugin_or_by_name(tmp_path: Path) -> None:
    write_sandboxed(tmp_path / "plugins")
    write_sandboxed(tmp_path / "plugins", "sbx2", sandbox='network = "loopback"')
    grants = {"*": ("network",), "sbx": ("secrets:aws_key",)}
    with trio.fail_after(TIMEOUT):
        async with running_daemon(tmp_path, default_grants=grants) as daemon:
            assert (await daemon.host.status("sbx2")).loaded
            status = await daemon.host.status("sbx")
            assert not status.loaded
            assert status.sandbox.ungranted == ("apis:events:publish",)
            assert status.sandbox.defaults == ("network", "secrets:aws_key")


async def test_install_asks_for_grants_and_an_update_for_what_is_new(tmp_path: Path) -> None:
    source = write_sandboxed(tmp_path / "src", sandbox='network = ["*:443"]')
    with trio.fail_after(TIMEOUT):
        async with running_daemon(tmp_path) as daemon:
            admin = await token(daemon, "admin")
            async with client(daemon, admin) as http:
                files = {"archive": ("sbx.cwsplugin", archive_of(source), "application/zip")}
                refused = await http.post("/api/v1/plugins/install", files=files)
                assert refused.status_code == 409
                assert refused.json()["ungranted"] == ["network:*:443"]
                assert "install it with --grant network:*:443" in refused.json()["detail"]
                assert not (tmp_path / "plugins" / "sbx").exists()
                installed = await http.post(
                    "/api/v1/plugins/install", files=files, data={"grant": "network"}
                )
                assert installed.status_code == 201, installed.text
                assert installed.json()["sandbox"]["granted"] == ["network:*:443"]
                assert (await http.post("/api/v1/plugins/sbx/load")).status_code == 200

                write_sandboxed(
                    tmp_path / "src", version="1.1.0",
                    sandbox='network = ["*:443"]\nsecrets = ["aws_key"]',
                )  # fmt: skip
                files = {"archive": ("sbx.cwsplugin", archive_of(source), "application/zip")}
                more = await http.post("/api/v1/plugins/sbx/update", files=files)
                assert more.status_code == 409
                assert more.json()["ungranted"] == ["secrets:aws_key"]
                assert (
                    "version 1.1.0 asks for more than was granted: secrets:aws_key (new)"
                    in (more.json()["detail"])
                )
                assert (await http.get("/api/v1/plugins/sbx")).json()["version"] == "1.0.0"
                updated = await http.post(
                    "/api/v1/plugins/sbx/update", files=files, data={"grant": "secrets:aws_key"}
                )
                assert updated.status_code == 200, updated.text
                view = updated.json()
                assert (view["version"], view["state"]) == ("1.1.0", "running")
                assert view["sandbox"]["stored"] == ["network:*:443", "secrets:aws_key"]


async def test_an_in_process_plugin_reads_secrets_and_calls_the_api_through_the_host(
    tmp_path: Path,
) -> None:
    """A plugin with a [sandbox] runs in process only where the operator says so."""
    write_sandboxed(tmp_path / "plugins", isolation="in_process")
    with trio.fail_after(TIMEOUT):
        async with running_daemon(
            tmp_path, in_process_allowed={"sbx"}, default_grants={"sbx": ("all",)}
        ) as daemon:
            status = await daemon.host.status("sbx")
            assert (status.isolation, status.loaded) == ("in_process", True)
            await daemon.host.secrets.set("aws_key", "in-process-value")
            assert await run(daemon, "sbx", "secret", "--name", "aws_key") == (
                0, "in-process-value"
            )  # fmt: skip
            _code, said = await run(
                daemon, "sbx", "call", "--method", "POST", "--path", "/api/v1/events",
                "--body", '{"topic": "sbx.inproc", "payload": 1}',
            )  # fmt: skip
            assert said.startswith("202 "), said
            assert os.getpid() == int((await run(daemon, "sbx", "pid"))[1])
            await daemon.host.unload("sbx")
            assert daemon.plugin_tokens.active("sbx") == 0


def test_httpx_is_not_imported_by_the_plugin_runner_until_used() -> None:
    import subprocess
    import sys

    code = "import sys, cws_actors._isolation._runner; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert httpx  # the tests' own client

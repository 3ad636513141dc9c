"""Grants and secrets through the real ``cws`` executable and a real daemon process:
an install refused without ``--grant`` and accepted with it, the grant kept across a
daemon restart; a terminal's yes; ``cws plugin grant``; ``cws secret``."""

from __future__ import annotations

import os
import pty
import stat
import subprocess
from pathlib import Path

import trio

from ..plugins._sandboxed import write_sandboxed
from ._cws import CWS, TIMEOUT, Result, create_token, cws, cws_daemon, expect


async def cws_with_stdin(*args: str, env: dict[str, str], stdin: bytes) -> Result:
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            [CWS, *args], stdin=stdin, capture_stdout=True, capture_stderr=True, check=False,
            env=env,
        )  # fmt: skip
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


def _on_a_terminal(args: list[str], env: dict[str, str], answer: bytes) -> Result:
    """``cws ARGS`` with a pseudo-terminal as stdin (``answer`` typed in advance)."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [CWS, *args], stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        os.close(terminal)
        os.write(controller, answer)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        os.close(controller)
    return Result(process.returncode, out.decode(), err.decode())


async def test_install_needs_a_grant_and_the_grant_outlives_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = write_sandboxed(tmp_path / "src", sandbox='network = ["*:443"]')
    async with cws_daemon(home) as daemon:
        env = daemon.env | {"CWS_TOKEN": await create_token(daemon)}
        refused = await cws("plugin", "install", str(source), env=env)
        expect(
            refused, 1,
            err="its sandbox asks for network:*:443, which is not granted; install it with"
            " --grant network:*:443 (or --grant all)",
        )  # fmt: skip
        assert not (home / "plugins" / "sbx").exists()
        installed = await cws("plugin", "install", str(source), "--grant", "network", env=env)
        expect(installed, 0, out="installed sbx 1.0.0; load it with `cws plugin load sbx`")
        assert "sandbox asks:  network:*:443" in installed.out
        assert "granted:       network:*:443" in installed.out
        expect(await cws("plugin", "load", "sbx", env=env), 0, out="loaded sbx: running")

        # A plugin put in the folder by hand: no grants until `cws plugin grant`.
        write_sandboxed(home / "plugins", "byhand", sandbox='network = "loopback"')
        load = await cws("plugin", "load", "byhand", env=env)
        expect(load, 1, err="grant it with `cws plugin grant byhand network:loopback`")
        status = await cws("plugin", "status", "byhand", env=env)
        expect(status, 0, out="not granted:")
        assert "network:loopback (it will not load" in status.out
        granted = await cws("plugin", "grant", "byhand", "network", env=env)
        expect(granted, 0, out="granted byhand: network:loopback")
        expect(await cws("plugin", "load", "byhand", env=env), 0, out="loaded byhand: running")
        bad = await cws("plugin", "grant", "byhand", "secrets", env=env)
        expect(bad, 1, err="plugin 'byhand' does not ask for 'secrets'")

    async with cws_daemon(home) as daemon:  # the same home: the grants are in state.db
        env = daemon.env | {"CWS_TOKEN": await create_token(daemon)}
        for name, request in (("sbx", "network:*:443"), ("byhand", "network:loopback")):
            status = await cws("plugin", "status", name, env=env)
            expect(status, 0, out=f"granted:       {request}")
            assert "running" in status.out, status.out
        revoked = await cws("plugin", "revoke", "byhand", "all", env=env)
        expect(revoked, 0, out="byhand now holds: nothing")
        expect(await cws("plugin", "unload", "byhand", env=env), 0)
        expect(await cws("plugin", "load", "byhand", env=env), 1, err="not granted")


async def test_a_terminal_is_asked_and_no_grants_nothing(tmp_path: Path) -> None:
    source = write_sandboxed(tmp_path / "src", sandbox='secrets = ["aws_key"]')
    async with cws_daemon(tmp_path / "home") as daemon:
        env = daemon.env | {"CWS_TOKEN": await create_token(daemon)}
        args = ["plugin", "install", str(source)]
        declined = await trio.to_thread.run_sync(_on_a_terminal, args, env, b"n\n")
        assert declined.code == 1, declined
        assert "sbx's sandbox asks for:\n  secrets:aws_key\nGrant sbx secrets:aws_key?" in (
            declined.err
        )
        assert "nothing was changed: sbx's sandbox was not granted" in declined.err
        accepted = await trio.to_thread.run_sync(_on_a_terminal, args, env, b"y\n")
        expect(accepted, 0, out="installed sbx 1.0.0")
        assert "granted:       secrets:aws_key" in accepted.out


async def test_cws_secret_set_list_rm_and_a_plugin_reads_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_sandboxed(home / "plugins")
    value = "s3cr3t-value-never-on-a-command-line"
    async with cws_daemon(home) as daemon:
        env = daemon.env | {"CWS_TOKEN": await create_token(daemon)}
        weak = daemon.env | {"CWS_TOKEN": await create_token(daemon, "plugins:manage")}
        refused = await cws_with_stdin("secret", "set", "aws_key", env=weak, stdin=value.encode())
        expect(refused, 4, err="this needs the scope admin")
        done = await cws_with_stdin(
            "secret", "set", "aws_key", env=env, stdin=f"{value}\n".encode()
        )
        expect(done, 0, out="set the secret aws_key")
        assert stat.S_IMODE((home / "secrets.json").stat().st_mode) == 0o600
        empty = await cws_with_stdin("secret", "set", "other", env=env, stdin=b"")
        expect(empty, 2, err="no value for other")
        listed = await cws("secret", "list", env=env)
        expect(listed, 0, out="aws_key")
        assert "sbx" in listed.out
        assert value not in listed.out + listed.err

        expect(await cws("plugin", "grant", "sbx", "all", env=env), 0)
        expect(await cws("plugin", "load", "sbx", env=env), 0, out="loaded sbx: running")
        read = await cws("sbx", "secret", "--name", "aws_key", env=env)
        expect(read, 0, out=value)
        pid = (await cws("sbx", "pid", env=env)).out.strip()
        assert value.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
        assert value.encode() not in Path(f"/proc/{daemon.process.pid}/cmdline").read_bytes()
        other = await cws("sbx", "secret", "--name", "nope", env=env)
        expect(other, 1, err="its [sandbox] secrets does not name it")

        expect(await cws("secret", "rm", "aws_key", env=env), 0, out="removed the secret aws_key")
        expect(await cws("secret", "rm", "aws_key", env=env), 1, err="no secret is named")
        unset = await cws("sbx", "secret", "--name", "aws_key", env=env)
        expect(unset, 1, err="is not set; the operator sets it with `cws secret set aws_key`")

"""The real ``cws`` executable and a real daemon process, for the CLI's tests."""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import httpx
import trio

CWS = str(Path(sys.executable).parent / "cws")
"""The console script installed beside this interpreter, as a user runs it."""

TIMEOUT = 30


def cws_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without the user's CWS_* settings, with ``home`` as CWS_HOME and
    the daemon kept to its home (no entry points, no system plugins, no fork server) and
    its reads open (``CWS_OPEN_READS``: these tests are not about the token to read)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CWS_")}
    env |= {
        "CWS_HOME": str(home),
        "CWS_ENTRY_POINTS": "false",
        "CWS_SYSTEM_DIR": str(home / "system"),
        "CWS_FORK_SERVER": "false",
        "CWS_OPEN_READS": "true",
    }
    return env | extra


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


def expect(result: Result, code: int, *, err: str = "", out: str = "") -> None:
    """The exit code is ``code`` and the output holds ``err`` and ``out``."""
    assert result.code == code, result
    assert err in result.err, result
    assert out in result.out, result


async def cws(*args: str, env: dict[str, str]) -> Result:
    """Run ``cws ARGS`` to its end, with no terminal (stdin, stdout and stderr are pipes)."""
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(
            [CWS, *args], stdin=b"", capture_stdout=True, capture_stderr=True, check=False,
            env=env,
        )  # fmt: skip
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


@attrs.define(eq=False)
class Lines:
    """Whole lines from a process's pipe."""

    stream: trio.abc.ReceiveStream
    _buffer: bytearray = attrs.field(factory=bytearray, init=False)

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self.stream.receive_some(4096)
            if not chunk:
                raise EOFError(f"the stream ended; unread: {bytes(self._buffer)!r}")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        return line.decode()


async def close_pipes(process: trio.Process) -> None:
    """Kill ``process`` if it still runs, reap it and close its pipes, even when the test
    that started it is being cancelled (a test that timed out must not leave a zombie or
    an open pipe to the next one)."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()


async def wait_until_ready(url: str) -> None:
    """Poll ``/readyz`` while it says 503: the daemon serves before its plugins have
    loaded. (A daemon whose health routes want a token answers 401: nothing to wait for.)"""
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        while (await client.get("/readyz")).status_code == 503:  # noqa: ASYNC110 - a process
            await trio.sleep(0.02)


@attrs.frozen
class Daemon:
    url: str
    home: Path
    env: dict[str, str]
    """For ``cws`` commands against this daemon (CWS_URL set, no token)."""
    process: trio.Process
    log: Path


@contextlib.asynccontextmanager
async def cws_daemon(
    home: Path, *, config: Path | None = None, open_files: int | None = None, **extra_env: str
) -> AsyncIterator[Daemon]:
    """``cws daemon --port 0 --home HOME [--config CONFIG]`` in a subprocess, with
    ``extra_env`` over ``cws_env(home)``; SIGTERM at the end of the block, which must make
    it exit 0. ``open_files`` sets its RLIMIT_NOFILE, as systemd's ``LimitNOFILE=`` does."""
    home.mkdir(parents=True, exist_ok=True)
    log = home.parent / f"{home.name}-daemon.log"
    env = cws_env(home, **extra_env)
    config_args = ["--config", str(config)] if config is not None else []
    with log.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            [CWS, "daemon", "--port", "0", "--home", str(home), *config_args],
            stdout=subprocess.PIPE, stderr=log_file, env=env,
            preexec_fn=None if open_files is None else functools.partial(
                resource.setrlimit, resource.RLIMIT_NOFILE, (open_files, open_files)
            ),
        )  # fmt: skip
    try:
        assert process.stdout is not None
        with trio.fail_after(TIMEOUT):
            url = await Lines(process.stdout).next()
            await wait_until_ready(url)
        yield Daemon(url, home, env | {"CWS_URL": url}, process, log)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(TIMEOUT):
            code = await process.wait()
        assert code == 0, log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        await close_pipes(process)


async def create_token(daemon: Daemon, *scopes: str) -> str:
    """A token made with ``cws token create`` in the daemon's home."""
    args = [arg for scope in scopes or ("admin",) for arg in ("--scope", scope)]
    created = await cws("token", "create", *args, "--name", "test", env=daemon.env)
    assert created.code == 0, created.err
    return created.out.strip()

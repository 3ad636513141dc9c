"""What a subprocess plugin offers, learnt without running its code in the daemon.

A plugin's module runs code when it is imported, so for a subprocess plugin the daemon
asks ``python -m cws_actors._isolation._runner --describe SPEC`` instead: a process with
the plugin's limits and the environment allow-list, which imports the class and
writes its capabilities as JSON. :func:`describe` is for Trio code (loading);
:func:`describe_sync` for the installer's worker thread. Both bound the time and the
output they accept, since the code they run is the plugin's.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from typing import IO, Any

import trio

from .._plugins._model import Capabilities
from ._protocol import ProtocolError, decode_capabilities

MAX_OUTPUT = 1024 * 1024
"""Bytes kept of each of the describing process's stdout and stderr; the rest is read
and dropped."""


class DescribeFailed(Exception):
    """The plugin could not be described: its import failed, took too long, or its
    process said something other than its capabilities. The message says which."""


def describe_spec(
    name: str, entry: str, folder: str | os.PathLike[str] | None, limits: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "entry": entry,
        "folder": os.fspath(folder) if folder is not None else None,
        "limits": limits,
        "parent_pid": os.getpid(),  # the describing process exits when this one is gone
    }


def _argv(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "cws_actors._isolation._runner", "--describe", json.dumps(spec)]


async def describe(spec: dict[str, Any], env: dict[str, str], *, timeout: float) -> Capabilities:
    """Describe the plugin ``spec`` names in a process with exactly ``env``.

    Raises:
        DescribeFailed: saying why.
    """
    process = await trio.lowlevel.open_process(
        _argv(spec),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    out, err = bytearray(), bytearray()
    try:
        with trio.move_on_after(timeout) as deadline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_capped, process.stdout, out)
                nursery.start_soon(_read_capped, process.stderr, err)
            await process.wait()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()
    if deadline.cancelled_caught:
        raise DescribeFailed(f"importing it took longer than {timeout:g}s")
    assert process.returncode is not None
    return _capabilities(spec, process.returncode, bytes(out), bytes(err))


async def _read_capped(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    async for chunk in stream:
        into += chunk[: max(0, MAX_OUTPUT - len(into))]


def describe_sync(spec: dict[str, Any], env: dict[str, str], *, timeout: float) -> Capabilities:
    """:func:`describe` for a worker thread.

    Raises:
        DescribeFailed: saying why.
    """
    deadline = time.monotonic() + timeout
    with subprocess.Popen(
        _argv(spec),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        try:
            out, err = _read_all_capped(process.stdout, process.stderr, deadline)
            returncode = process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            raise DescribeFailed(f"importing it took longer than {timeout:g}s") from None
        except BaseException:
            process.kill()
            raise
    return _capabilities(spec, returncode, out, err)


def _read_all_capped(stdout: IO[bytes], stderr: IO[bytes], deadline: float) -> tuple[bytes, bytes]:
    kept = {stdout.fileno(): bytearray(), stderr.fileno(): bytearray()}
    with selectors.DefaultSelector() as selector:
        for stream in (stdout, stderr):
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired("describe", 0)
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = kept[key.fd]
                buffer += chunk[: max(0, MAX_OUTPUT - len(buffer))]
    return bytes(kept[stdout.fileno()]), bytes(kept[stderr.fileno()])


def _capabilities(spec: dict[str, Any], returncode: int, out: bytes, err: bytes) -> Capabilities:
    # Not at the top: the package imports this module, and ``python -m`` warns about a
    # runner module imported before it runs.
    from ._runner import EXIT_IMPORT

    text = err.decode(errors="replace").strip()
    last = text.rpartition("\n")[2]
    if returncode == EXIT_IMPORT:
        # The runner's own report comes last (the plugin may have printed before it).
        _, found, message = text.rpartition(f"cannot import plugin {spec['name']!r}: ")
        raise DescribeFailed((message if found else last) or "its import failed")
    if returncode != 0:
        raise DescribeFailed(f"describing it failed with exit code {returncode}: {last}")
    try:
        return decode_capabilities(json.loads(out))
    except (ValueError, ProtocolError) as exc:
        raise DescribeFailed(f"it did not describe its capabilities: {exc}") from None

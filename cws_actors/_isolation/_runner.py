"""The plugin side of subprocess isolation: ``python -m cws_actors._isolation._runner SPEC``.

It applies its resource limits before any plugin code runs, moves the protocol off
stdout (a plugin's ``print`` lands in stderr, which the daemon logs), imports the
plugin, says hello, then answers the host's requests one at a time. It exits when the
host says stop, on SIGTERM (after the plugin's ``stop``), when its stdin closes, or at
once when the process that started it is gone (:func:`exit_with_parent`), which is how a
dead daemon takes its plugins with it even while one is busy in a handler.

``python -m cws_actors._isolation._runner --describe SPEC`` only imports the plugin (under
the same limits) and writes its class's capabilities to stdout as JSON: how the daemon
learns what a subprocess plugin offers without running its code itself.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import itertools
import json
import math
import os
import resource
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import trio

from .._plugins._api import APIToken, PluginAPI
from .._plugins._loader import load_plugin_class
from .._plugins._model import PLUGIN_API_VERSION, Plugin, PluginContext
from . import _kernel
from ._protocol import (
    PROTOCOL_VERSION,
    FrameReader,
    FrameWriter,
    decode_event,
    decode_request,
    encode_capabilities,
    encode_result,
    send_frame,
)

EXIT_MEMORY = 3
"""Exit code when the plugin ran out of memory under its limit."""
EXIT_IMPORT = 4
"""Exit code when the plugin could not be imported."""
KEEPER_PIDFD: int | None = None
"""A pidfd of this runner's keeper (sandboxed runs), readable once it has exited."""


def apply_limits(limits: dict[str, int | None]) -> None:
    """The per-process limits alone (an unsandboxed run); see :mod:`._kernel`."""
    _kernel.apply_limits({k: v for k, v in limits.items() if k != "processes"})


def hog_memory() -> NoReturn:
    """Allocate until the memory limit stops it with MemoryError (the ``memory_hog``
    fault). Refused without a limit, which would take the whole machine's memory."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        raise ValueError("memory_hog needs a memory limit (limits.memory_mb); none is set")
    hoard = []
    while True:
        hoard.append(bytearray(16 * 1024 * 1024))


class Runner:
    def __init__(self, spec: dict[str, Any], plugin_class: type[Plugin], out: int) -> None:
        self.spec = spec
        self.plugin = plugin_class()
        self.out = trio.lowlevel.FdStream(out)
        self.reader = FrameReader(trio.lowlevel.FdStream(os.dup(0)))
        self.ctx = PluginContext(
            name=spec["name"],
            data_dir=Path(spec["data_dir"]),
            config=spec.get("config", {}),
            publish=self.publish,
            read_secret=self.ask_secret,
            api=PluginAPI(spec["name"], self.ask_token),
        )
        self.started = False
        self.writer = FrameWriter(self.out)  # concurrent handlers' frames never interleave
        self.calls: dict[Any, trio.CancelScope] = {}
        self.asked = HostRequests(self.send)
        # Requests handed to worker tasks, which stay for the next one: a call costs a
        # hand-over to a waiting worker, not a task of its own (a new worker only when
        # all are busy, so there are as many as calls ever ran at once).
        self.to_workers, self.for_workers = trio.open_memory_channel[
            tuple[dict[str, Any], trio.CancelScope]
        ](math.inf)

    async def send(self, message: dict[str, Any]) -> None:
        await self.writer.send(message)

    async def publish(self, topic: str, payload: Any = None) -> None:
        await self.send({"type": "publish", "topic": topic, "payload": payload})

    async def ask_secret(self, name: str) -> str:
        return str(await self.asked.ask({"type": "secret", "name": name}))

    async def ask_token(self) -> APIToken | None:
        value = await self.asked.ask({"type": "api_token"})
        return _token(value)

    async def serve(self) -> None:
        # What exists now (the plugin's import, its preloads, the sandbox's set-up in
        # this process and its keeper and init) lives as long as the run: out of the
        # collector's reach. Otherwise the first collections after the hello walk all of
        # it and copy the pages it shares with the fork server; a warm spare's first
        # request (``init``, on a restart's critical path) took 2.5-4.5 ms of CPU instead
        # of 0.4 ms when sandboxed.
        gc.freeze()
        await send_frame(
            self.out,
            {
                "type": "hello",
                "protocol": PROTOCOL_VERSION,
                "api_version": PLUGIN_API_VERSION,
                "name": self.spec["name"],
                "pid": os.getpid(),
            },
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._on_sigterm, nursery.cancel_scope)
            try:
                while True:
                    request = await self.reader.receive()
                    if request is None:
                        if _keeper_gone():
                            os._exit(EXIT_ORPHANED)  # killed: no graceful stop
                        break  # the daemon is gone
                    kind = request["type"]
                    if kind == "stop":
                        for scope in self.calls.values():
                            scope.cancel()  # the host waited for its handlers already
                        await self._stop()
                        await self.send({"type": "result", "id": request.get("id")})
                        break
                    if kind == "answer":  # to a request of ours (protocol 3)
                        self.asked.answered(request)
                    elif kind == "cancel":
                        cancelled = self.calls.get(request.get("id"))
                        if cancelled is not None:
                            cancelled.cancel()
                    elif kind == "memory_hog":
                        await self.send(await self._answer(request))
                    else:  # calls, health, readiness, status: side by side
                        call = self.calls[request.get("id")] = trio.CancelScope()
                        if not self.to_workers.statistics().tasks_waiting_receive:
                            nursery.start_soon(self._work)  # every worker is busy
                        self.to_workers.send_nowait((request, call))
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop()
            nursery.cancel_scope.cancel()

    async def _on_sigterm(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                scope.cancel()  # the finally above runs the plugin's stop()
                return

    async def _stop(self) -> None:
        if self.started:
            self.started = False
            await self.plugin.stop(self.ctx)

    async def _work(self) -> None:
        async for request, scope in self.for_workers:
            await self._answer_in_task(request, scope)

    async def _answer_in_task(self, request: dict[str, Any], scope: trio.CancelScope) -> None:
        request_id = request.get("id")
        try:
            with scope:
                answer = await self._answer(request)
        finally:
            del self.calls[request_id]
        if scope.cancelled_caught:
            answer = {
                "type": "error",
                "id": request_id,
                "error_type": "Cancelled",
                "message": "cancelled: the host no longer waits for this call",
            }
        await self.send(answer)

    async def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        request_id = request.get("id")
        try:
            value = await self._dispatch(request)
        except MemoryError:
            os._exit(EXIT_MEMORY)
        except Exception as exc:  # noqa: BLE001 - sent to the host, which crashes the actor
            return {
                "type": "error",
                "id": request_id,
                "error_type": type(exc).__qualname__,
                "message": str(exc),
                "traceback": traceback.format_exc(limit=20),
            }
        return {"type": "result", "id": request_id, "value": encode_result(value)}

    async def _dispatch(self, request: dict[str, Any]) -> Any:
        kind = request["type"]
        plugin = self.plugin
        if kind == "init":
            self.ctx.api.prime(_token(request.get("api_token")))
            await plugin.initialize(self.ctx, self.ctx.config)
            await plugin.start(self.ctx)
            self.started = True
            return None
        if kind == "health":
            return await plugin.health()
        if kind == "ready":
            return bool(await plugin.ready())
        if kind == "status":
            return await plugin.status()
        if kind == "call":
            payload: Any = request.get("payload")
            if request.get("payload_type") == "event":
                payload = decode_event(payload)
            elif request.get("payload_type") == "request":
                payload = decode_request(payload)
            return await getattr(plugin, request["handler"])(payload)
        if kind == "memory_hog":
            hog_memory()  # its MemoryError exits the process with EXIT_MEMORY
        raise ValueError(f"unknown request type {kind!r}")


def _token(value: Any) -> APIToken | None:
    if not isinstance(value, dict):
        return None
    return APIToken(
        str(value["token"]), float(value["expires_at"]), str(value["url"]),
        tuple(value.get("scopes", ())),
    )  # fmt: skip


class HostRequests:
    """The runner's requests to the host (protocol 3), by id, and their answers."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.ids = itertools.count()
        self.pending: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = {}

    async def ask(self, message: dict[str, Any]) -> Any:
        request_id = next(self.ids)
        done, box = self.pending[request_id] = (trio.Event(), [])
        try:
            await self.send({**message, "id": request_id})
            await done.wait()
        finally:
            del self.pending[request_id]
        answer = box[0]
        if "error_type" in answer:
            error = {"PermissionError": PermissionError, "LookupError": LookupError}
            raise error.get(answer["error_type"], RuntimeError)(answer.get("message", ""))
        return answer.get("value")

    def answered(self, answer: dict[str, Any]) -> None:
        waiting = self.pending.get(answer.get("id", -1))
        if waiting is not None:
            waiting[1].append(answer)
            waiting[0].set()


def _keeper_gone() -> bool:
    if KEEPER_PIDFD is None:
        return False
    return bool(select.select([KEEPER_PIDFD], [], [], 0)[0])


def run(spec: dict[str, Any]) -> None:
    """Run the plugin ``spec`` describes on fds 0, 1 and 2 until the host lets go.

    Called in a fresh interpreter (``main``) or in a child of the fork server, which
    has this module and Trio imported already. With a sandbox in ``spec`` this process
    becomes the plugin's keeper (:mod:`._keeper`) and the runner is its child."""
    _kept(spec, _serve)


def _kept(spec: dict[str, Any], body: Callable[[dict[str, Any], Any, bool], None]) -> None:
    """``body(spec, keeper, namespace)`` in this process, or, with a sandbox in
    ``spec``, in the child of the keeper this process becomes."""
    _first(spec)
    if spec.get("sandbox") is None:
        body(spec, None, False)
        return
    from ._keeper import keep

    keep(spec, lambda keeper, namespace: body(spec, keeper, namespace))


def _serve(spec: dict[str, Any], keeper: Any, namespace: bool) -> None:
    plugin_class, protocol_out = _import_limited(spec, keeper, namespace)
    for module in plugin_class.preload:  # before hello: a warm spare has them imported
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - reported on stderr, then a distinct exit code
            print(
                f"cannot import {module!r}, a preload of plugin {spec['name']!r}:"
                f" {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            sys.exit(EXIT_IMPORT)
    try:
        trio.run(Runner(spec, plugin_class, protocol_out).serve)
    except MemoryError:
        os._exit(EXIT_MEMORY)


def describe(spec: dict[str, Any]) -> None:
    """Import the plugin ``spec`` names and write its capabilities to stdout as JSON."""
    _kept(spec, _describe)


def _describe(spec: dict[str, Any], keeper: Any, namespace: bool) -> None:
    plugin_class, protocol_out = _import_limited(spec, keeper, namespace)
    try:
        data = json.dumps(encode_capabilities(plugin_class.capabilities)).encode()
    except TypeError as exc:
        print(f"plugin {spec['name']!r} has capabilities that are not JSON: {exc}", file=sys.stderr)
        sys.exit(EXIT_IMPORT)
    with os.fdopen(protocol_out, "wb") as out:
        out.write(data)


def _first(spec: dict[str, Any]) -> None:
    exit_with_parent(spec.get("parent_pid"))
    # Ctrl-C in the daemon's terminal reaches the whole process group; the daemon
    # decides when its plugins stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _kernel.not_dumpable()


EXIT_ORPHANED = 5
"""Exit code when the process that started this one (the daemon, or its fork server)
is gone. Nobody waits for it; it tells a reader of a leftover log what happened."""

_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent: int | None) -> None:
    """End this process as soon as ``parent``, the process that started it, is gone,
    whatever this process is doing: idle, busy in a handler, or importing.

    Why not ``PR_SET_PDEATHSIG`` alone: Linux sends the parent-death signal when the
    *thread* that forked us exits, not the process. ``trio.lowlevel.open_process``
    spawns from a Trio worker thread, and Trio retires idle worker threads after 10 s,
    so a daemon that spawned a plugin and then sat idle killed it 10 s later (issue 14).

    What we do instead is tied to the process: a pidfd of the parent becomes readable
    when the whole process has exited, and a thread of ours blocked in ``poll`` on it
    ends this process at once (a busy pure-Python handler gives the thread the GIL
    within the interpreter's switch interval, 5 ms). Where pidfds are missing (not
    Linux, or a kernel before 5.3) the thread polls ``getppid()`` four times a second.
    ``parent`` is the pid the starter says it has; if ``getppid()`` already differs,
    the parent died while this interpreter started, and we exit now.

    A plugin forked by the fork server also sets ``PR_SET_PDEATHSIG``: its parent is the
    server's only thread, which lives as long as the server, so there the kernel's
    signal is exact and reaches even a stopped or GIL-holding process (the server itself
    watches the daemon the same way, through its selector)."""
    if parent is None:
        return
    if os.getppid() != parent:
        os._exit(EXIT_ORPHANED)
    try:
        pidfd: int | None = os.pidfd_open(parent)
    except (AttributeError, OSError):
        pidfd = None
    if os.getppid() != parent:  # died between the check and the pidfd: maybe not ours
        os._exit(EXIT_ORPHANED)
    threading.Thread(
        target=_wait_for_parent, args=(parent, pidfd), name="cws-exit-with-parent", daemon=True
    ).start()


def _wait_for_parent(parent: int, pidfd: int | None) -> None:
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll():
            pass
    else:
        while os.getppid() == parent:
            time.sleep(0.25)
    os._exit(EXIT_ORPHANED)


def set_parent_death_signal() -> None:
    """SIGKILL this process when the thread that forked it exits: exact only when that
    thread lives as long as its process (see :func:`exit_with_parent`)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _import_limited(
    spec: dict[str, Any], keeper: Any = None, namespace: bool = False
) -> tuple[type[Plugin], int]:
    """Limits and the sandbox first (:func:`._kernel.confine`), then the protocol moved
    off stdout, then the plugin's import: no code of the plugin runs unconfined. The
    plugin class and the protocol's file descriptor. Exits with EXIT_IMPORT if the
    import fails."""
    limits = dict(spec.get("limits", {}))
    sandbox = spec.get("sandbox")
    if sandbox is None:
        apply_limits(limits)
    else:
        if not namespace or os.geteuid() == 0 or keeper is not None:
            # RLIMIT_NPROC counts every process of the user (root: ignored); a keeper
            # counts the plugin's own, and so does the kernel in a user namespace.
            limits.pop("processes", None)
        _kernel.confine(sandbox, limits, keeper)
    protocol_out = os.dup(1)
    os.dup2(2, 1)  # a plugin's print() must not corrupt the protocol
    try:
        folder = Path(spec["folder"]) if spec.get("folder") else None
        plugin_class = load_plugin_class(spec["entry"], folder)
    except Exception as exc:  # noqa: BLE001 - reported on stderr, then a distinct exit code
        print(f"cannot import plugin {spec['name']!r}: {exc}", file=sys.stderr)
        sys.exit(EXIT_IMPORT)
    return plugin_class, protocol_out


def main() -> None:
    if sys.argv[1:2] == ["--describe"]:
        describe(json.loads(sys.argv[2]))
        return
    run(json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()

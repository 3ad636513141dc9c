"""A fork server for subprocess plugins: one process that has Python, Trio and the plugin
runner imported already, and forks a plugin process on request in about a millisecond
instead of starting an interpreter (a quarter of a second here).

The server (``python -c "from cws_actors._forkserver import main; main()" FD``) is
single-threaded and never runs Trio
itself, so forking it is safe. The host talks to it over a ``SOCK_SEQPACKET`` socket:

- host -> server: ``{"spec": ..., "env": {...}}`` with the child's stdin, stdout and
  stderr pipe ends attached (``SCM_RIGHTS``);
- server -> host: ``{"type": "forked", "pid": N}`` in reply, and
  ``{"type": "exited", "pid": N, "returncode": R}`` when it reaps a child (``R`` is
  negative for a signal, as in :mod:`subprocess`).

The host holds a pidfd for every child, so that its signals never reach a recycled pid.
The server exits when the host's end of the socket closes (the daemon died or closed);
its children exit when their stdin closes, as a directly started runner does.
"""

from __future__ import annotations

import array
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
from typing import Any

import attrs
import trio

_MAX_MESSAGE = 1 << 20
# Not ``-m cws_actors._forkserver``: the package imports this module, and runpy warns.
_SERVER_COMMAND = "from cws_actors._forkserver import main; main()"


# ---------------------------------------------------------------------- the server


def serve(control: socket.socket) -> None:
    """The server's loop: fork on request, report every exit."""
    from . import _plugin_runner  # noqa: F401 - imported once here, inherited by every child

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.set_wakeup_fd(wake_write)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "control")
    selector.register(wake_read, selectors.EVENT_READ, "child")
    while True:
        for key, _ in selector.select():
            if key.data == "child":
                try:
                    while os.read(wake_read, 4096):
                        pass
                except BlockingIOError:
                    pass  # drained
                _reap(control)
                continue
            message, fds, _, _ = socket.recv_fds(control, _MAX_MESSAGE, 3)
            if not message:
                return  # the host is gone
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                _child(request, fds, control, (wake_read, wake_write))
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"type": "forked", "pid": pid}).encode())
        _reap(control)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        control.send(json.dumps({"type": "exited", "pid": pid, "returncode": code}).encode())


def _child(
    request: dict[str, Any], fds: list[int], control: socket.socket, wake: tuple[int, int]
) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        for fd in wake:
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        from ._plugin_runner import run

        run(request["spec"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - a forked child must never return into the loop
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    serve(socket.socket(fileno=int(sys.argv[1])))


# ---------------------------------------------------------------------- the host side


@attrs.define(eq=False)
class ForkedProcess:
    """A plugin process forked by the server: the parts of ``trio.Process`` the
    subprocess driver uses."""

    pid: int
    stdin: trio.lowlevel.FdStream
    stdout: trio.lowlevel.FdStream
    stderr: trio.lowlevel.FdStream
    _pidfd: int
    returncode: int | None = None
    _exited: trio.Event = attrs.field(factory=trio.Event)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None and self._pidfd >= 0:
            try:
                signal.pidfd_send_signal(self._pidfd, signum)
            except ProcessLookupError:
                pass  # it has just exited; its exit report is on its way

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _exit(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
            if self._pidfd >= 0:
                os.close(self._pidfd)
            self._exited.set()


class ForkServerGone(Exception):
    """The fork server is not running (it died, or the host closed it)."""


@attrs.define(eq=False)
class ForkServer:
    """The host's handle on the server. Start it with ``nursery.start(server.run, env)``."""

    _socket: trio.socket.SocketType | None = None
    _process: trio.Process | None = None
    _children: dict[int, ForkedProcess] = attrs.field(factory=dict)
    _early_exits: dict[int, int] = attrs.field(factory=dict)
    """Exits reported before ``spawn`` registered the child (it died at once)."""
    _forked: tuple[trio.MemorySendChannel[int], trio.MemoryReceiveChannel[int]] = attrs.field(
        factory=lambda: trio.open_memory_channel[int](1)
    )
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    @property
    def running(self) -> bool:
        return self._socket is not None

    async def run(
        self, env: dict[str, str], task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", _SERVER_COMMAND, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._process = process
        self._socket = trio.socket.from_stdlib_socket(ours)
        task_status.started()
        try:
            await self._read_reports(self._socket, self._forked[0])
        finally:
            with trio.CancelScope(shield=True):
                await self._shut_down(process)

    async def _read_reports(
        self, sock: trio.socket.SocketType, forked: trio.MemorySendChannel[int]
    ) -> None:
        while True:
            data = await sock.recv(_MAX_MESSAGE)
            if not data:
                return  # the server died
            report = json.loads(data)
            if report["type"] == "forked":
                await forked.send(report["pid"])
            else:
                child = self._children.pop(report["pid"], None)
                if child is not None:
                    child._exit(report["returncode"])
                else:
                    self._early_exits[report["pid"]] = report["returncode"]

    async def _shut_down(self, process: trio.Process) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()  # the server exits when it sees the socket close
        for child in list(self._children.values()):
            # Without its parent nobody reports this child's exit: end it for sure.
            child.kill()
            child._exit(-signal.SIGKILL)
        self._children.clear()
        with trio.move_on_after(5):
            await process.wait()
            return
        process.kill()
        await process.wait()

    async def spawn(self, spec: dict[str, Any], env: dict[str, str]) -> ForkedProcess:
        """Fork a plugin runner for ``spec`` with exactly ``env`` as its environment.

        Raises:
            ForkServerGone: the server is not running; start the process directly.
        """
        async with self._lock:
            sock = self._socket
            if sock is None:
                raise ForkServerGone("the fork server is not running")
            pipes = [os.pipe() for _ in range(3)]
            theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
            ours = [pipes[0][1], pipes[1][0], pipes[2][0]]
            try:
                message = json.dumps({"spec": spec, "env": env}).encode()
                await sock.sendmsg(
                    [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", theirs))]
                )
            except OSError as exc:
                for fd in ours:
                    os.close(fd)
                raise ForkServerGone(f"the fork server is gone: {exc}") from None
            finally:
                for fd in theirs:
                    os.close(fd)
            pid = await self._forked[1].receive()
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                pidfd = -1  # already reaped: its exit report is here or on its way
            child = ForkedProcess(
                pid,
                trio.lowlevel.FdStream(ours[0]),
                trio.lowlevel.FdStream(ours[1]),
                trio.lowlevel.FdStream(ours[2]),
                pidfd,
            )
            if pid in self._early_exits:
                child._exit(self._early_exits.pop(pid))
            else:
                self._children[pid] = child
            return child

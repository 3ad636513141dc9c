"""A fork server for subprocess plugins: one process that has Python, Trio and the plugin
runner imported already, and forks a plugin process on request in about a millisecond
instead of starting an interpreter (a quarter of a second here).

The server (``python -c "from cws_actors._isolation._forkserver import main; main()" FD``) is
single-threaded and never runs Trio
itself, so forking it is safe. The host talks to it over a ``SOCK_SEQPACKET`` socket:

- host -> server: ``{"id": N, "spec": ..., "env": {...}}`` with the child's stdin,
  stdout and stderr pipe ends attached (``SCM_RIGHTS``), and for a sandboxed spec a
  fourth: how the run ended (the child's fd 3, ``STATUS_FD``), written by its init as
  soon as the runner is gone (or by the keeper), before the keeper's own exit, which
  does not hurry after a crash (:data:`._keeper.TEARDOWN_DELAY`);
- server -> host: ``{"type": "forked", "id": N, "pid": P}`` in reply, with a pidfd of
  the child attached (opened before the server's loop can reap it, so it always names
  that child), and ``{"type": "exited", "pid": P, "returncode": R}`` when it reaps a
  child (``R`` is negative for a signal, as in :mod:`subprocess`).

Replies are matched to requests by id, so a spawn that is cancelled or times out never
hands its child to the next one: a reply nobody waits for any more gets its child
killed. The host's signals go through the pidfd, so they never reach a recycled pid.
The server exits when the host's end of the socket closes (the host closed it) or when
the daemon process is gone (a pidfd of it in the server's selector: even a daemon killed
with SIGKILL); its children die with it (``PR_SET_PDEATHSIG``, exact here because the
server is single-threaded) and also exit when their stdin closes. If the
server dies, every spawn waiting on it fails with :class:`ForkServerGone` (the driver
then starts a fresh interpreter) and ``ForkServer.run`` returns.
"""

from __future__ import annotations

import array
import gc
import itertools
import json
import logging
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
from typing import Any

import attrs
import trio

_MAX_MESSAGE = 1 << 20
STATUS_FD = 3
"""Where a sandboxed child's keeper finds the pipe for its word on how the run ended."""
# Room for the one pidfd a "forked" reply carries.
_FD_SPACE = socket.CMSG_SPACE(array.array("i").itemsize)
# Not ``-m cws_actors._isolation._forkserver``: the package imports this module, and runpy warns.
_SERVER_COMMAND = "from cws_actors._isolation._forkserver import main; main()"
_log = logging.getLogger("cws.plugins")


# ---------------------------------------------------------------------- the server


def serve(control: socket.socket, daemon: int) -> None:
    """The server's loop: fork on request, report every exit; return when the host's
    socket closes or the daemon process ``daemon`` is gone."""
    from . import _keeper, _kernel, _runner  # noqa: F401 - imported once here, inherited by every child

    _kernel.support()  # probed once here too
    # Everything imported so far lives as long as the server: out of the collector's
    # reach, so that no collection in a child (a plugin's keeper, init or runner) walks
    # these objects and copies every page they sit on (copy on write). This is what the
    # gc module's documentation advises for a process that forks without exec. (No
    # collection first: it would cost the start 10 ms to free a few hundred objects.)
    gc.freeze()

    if os.getppid() != daemon:
        return  # the daemon died while this interpreter started
    lifeline = _open_lifeline(daemon)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.set_wakeup_fd(wake_write)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, "control")
    selector.register(wake_read, selectors.EVENT_READ, "child")
    if lifeline is not None:
        selector.register(lifeline, selectors.EVENT_READ, "daemon")
    # Imported (and on a cold machine compiled) what every child inherits: the host
    # counts a spawn's reply_timeout from here on.
    control.send(json.dumps({"type": "ready"}).encode())
    server = os.getpid()
    while True:
        # Without a pidfd, look at our parent every half second instead.
        events = selector.select(None if lifeline is not None else 0.5)
        if _daemon_gone(events, daemon):
            return  # the daemon died: our children follow us (their death signal)
        for key, _ in events:
            if key.data == "child":
                try:
                    while os.read(wake_read, 4096):
                        pass
                except BlockingIOError:
                    pass  # drained
                _reap(control)
                continue
            message, fds, _, _ = socket.recv_fds(control, _MAX_MESSAGE, 4)
            if not message:
                return  # the host is gone
            request = json.loads(message)
            _prepare_sandbox(request["spec"].get("sandbox"))
            pid = os.fork()
            if pid == 0:
                _child(request, fds, control, server, (wake_read, wake_write, lifeline))
            for fd in fds:
                os.close(fd)
            _send_forked(control, request["id"], pid)
        _reap(control)


def _prepare_sandbox(sandbox: dict[str, Any] | None) -> None:
    """Build here, once per sandbox spec, what is costly to build in every child: the
    Landlock rulesets (fds, which the children inherit; the loopback ruleset has a rule
    per port) and the compiled seccomp filter. A child then only enforces them."""
    if sandbox is None:
        return
    from ._kernel import prepare, support

    kernel = support()
    try:
        prepare(sandbox, notify=kernel.user_notification and kernel.seccomp)
    except Exception as exc:  # noqa: BLE001 - the child builds them itself, and says why not
        print(f"cws-forkserver: cannot prepare a sandbox: {exc!r}", file=sys.stderr)


def _open_lifeline(daemon: int) -> int | None:
    """A pidfd of the daemon, readable once the daemon process has exited; None where
    pidfds are missing. Why not ``PR_SET_PDEATHSIG``: see
    :func:`cws_actors._isolation._runner.exit_with_parent` (the daemon starts us from a
    worker thread, which Trio retires when idle)."""
    try:
        pidfd = os.pidfd_open(daemon)
    except (AttributeError, OSError):
        return None
    if os.getppid() != daemon:  # died meanwhile: the pid may name another process now
        os.close(pidfd)
        os._exit(0)
    return pidfd


def _daemon_gone(events: list[tuple[selectors.SelectorKey, int]], daemon: int) -> bool:
    return any(key.data == "daemon" for key, _ in events) or os.getppid() != daemon


def _send_forked(control: socket.socket, request_id: int, pid: int) -> None:
    # Only this loop reaps, so the child cannot have been reaped yet: the pidfd names it
    # even if it has exited already.
    pidfd = os.pidfd_open(pid)
    try:
        reply = json.dumps({"type": "forked", "id": request_id, "pid": pid}).encode()
        socket.send_fds(control, [reply], [pidfd])
    finally:
        os.close(pidfd)


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
    request: dict[str, Any],
    fds: list[int],
    control: socket.socket,
    server: int,
    private: tuple[int | None, ...],
) -> None:
    code = 1
    try:
        from ._runner import EXIT_ORPHANED, set_parent_death_signal

        # Our parent is the server's only thread, which lives as long as the server: the
        # kernel's parent-death signal is exact here, stopped or busy processes included.
        set_parent_death_signal()
        if os.getppid() != server:
            os._exit(EXIT_ORPHANED)  # the server died before the signal was armed
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        from ._kernel import keep_only, support

        kernel = support()
        keep_only(request["spec"].get("sandbox"), kernel.user_notification and kernel.seccomp)
        for fd in private:  # the server's wake-up pipe and its pidfd of the daemon
            if fd is not None:
                os.close(fd)
        for target, fd in enumerate(fds):  # fds above 2 (received): never a target too
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        from ._runner import run

        told = {"status_fd": STATUS_FD} if len(fds) > STATUS_FD else {}
        run({**request["spec"], "parent_pid": server, **told})
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
    serve(socket.socket(fileno=int(sys.argv[1])), daemon=int(sys.argv[2]))


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
    status: trio.lowlevel.FdStream | None = None
    """A sandboxed run's: its keeper's word on how the run ended (:meth:`read_status`)."""
    returncode: int | None = None
    """The process's exit code once the server reaped it (negative: a signal)."""
    ended: int | None = None
    """How the run ended: its keeper's word, or else the process's exit code. A keeper
    says it as soon as the runner is gone, then exits at idle priority (unmapping it
    takes milliseconds, which a restart need not wait for)."""
    _exited: trio.Event = attrs.field(factory=trio.Event)
    _over: trio.Event = attrs.field(factory=trio.Event)

    async def wait(self) -> int:
        """The process's exit."""
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def wait_ended(self) -> int:
        """The run's end: the keeper's word (:meth:`read_status`), or the exit."""
        await self._over.wait()
        assert self.ended is not None
        return self.ended

    async def read_status(self) -> None:
        """Take the keeper's word for how the run ended, if it gives one: run by the
        process's owner beside its wait. Returns at the word or at the keeper's exit."""
        stream = self.status
        if stream is None:
            return
        said = b""
        try:
            while b"\n" not in said and len(said) < 64:
                chunk = await stream.receive_some(64)
                if not chunk:
                    return  # gone without a word (killed, say): its exit tells
                said += chunk
            self._end(int(said.split(b"\n")[0]))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            return
        finally:
            stream.close()

    def has_ended(self) -> bool:
        """The run has ended: its process exited, or its keeper's word waits unread (a
        warm spare's: nobody reads it before a restart adopts the spare)."""
        if self.ended is not None:
            return True
        stream = self.status
        if stream is None:
            return False
        try:
            return bool(select.select([stream.fileno()], [], [], 0)[0])
        except (OSError, ValueError):  # closed: nothing will come
            return True

    def _end(self, code: int) -> None:
        if self.ended is None:
            self.ended = code
            self._over.set()

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
                self._pidfd = -1
            self._exited.set()
        self._end(returncode)

    def _close_pipes(self) -> None:
        for stream in (self.stdin, self.stdout, self.stderr, self.status):
            if stream is not None:
                stream.close()


class ForkServerGone(Exception):
    """The fork server is not running (it died, or the host closed it), or it did not
    answer in time: start the process directly."""


@attrs.define(eq=False)
class _Request:
    """A spawn waiting for the server's reply; ``pipes`` are our ends of the child's
    stdin, stdout and stderr (and a sandboxed keeper's status), owned by the request
    until ``child`` takes them."""

    pipes: list[int]
    done: trio.Event = attrs.field(factory=trio.Event)
    child: ForkedProcess | None = None


@attrs.define(eq=False)
class ForkServer:
    """The host's handle on the server. Start it with ``nursery.start(server.run, env)``,
    which raises OSError if the server cannot start or does not get ready; once started,
    ``run`` returns (it never raises) when the server dies or the host closes it."""

    reply_timeout: float = 10.0
    """A fork takes milliseconds: a server that does not answer a spawn in this long is
    stuck, and that spawn gives up with ForkServerGone."""
    ready_timeout: float = 30.0
    """How long the server may take to import what its children inherit, the first time
    on a cold machine included (``.pyc`` files written, a cold disk cache); past it,
    plugins start fresh interpreters (well within systemd's 90 s start timeout)."""
    _socket: trio.socket.SocketType | None = None
    _process: trio.Process | None = None
    _children: dict[int, ForkedProcess] = attrs.field(factory=dict)
    _requests: dict[int, _Request] = attrs.field(factory=dict)
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))

    @property
    def running(self) -> bool:
        return self._socket is not None

    async def run(
        self, env: dict[str, str], task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", _SERVER_COMMAND, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._process = process
        sock = trio.socket.from_stdlib_socket(ours)
        problem: str | None = "was cancelled while starting"
        try:
            problem = await self._wait_ready(sock)
            if problem is None:
                self._socket = sock  # running: spawns go to it from now on
                task_status.started()
                await self._read_reports(sock)
        finally:
            if problem is not None:
                sock.close()
                process.kill()  # it never served: nothing of it is worth a grace period
            with trio.CancelScope(shield=True):
                await self._shut_down(process)
        if problem is not None:
            raise OSError(f"the fork server {problem}")  # the host falls back to fresh ones
        _log.warning(
            "the fork server exited (code %s); subprocess plugins start a fresh interpreter"
            " until the next load starts a new server",
            process.returncode,
        )

    async def _wait_ready(self, sock: trio.socket.SocketType) -> str | None:
        """None once the server says it is ready, else what went wrong."""
        with trio.move_on_after(self.ready_timeout):
            try:
                data, _, _, _ = await sock.recvmsg(_MAX_MESSAGE)
            except OSError as exc:
                return f"died while starting: {exc}"
            if not data:
                return "died while starting"
            try:
                ready = json.loads(data).get("type") == "ready"
            except (ValueError, AttributeError):
                ready = False
            return None if ready else f"sent {data[:100]!r} before it was ready"
        return f"did not get ready within {self.ready_timeout:g}s"

    async def _read_reports(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, ancdata, _, _ = await sock.recvmsg(_MAX_MESSAGE, _FD_SPACE)
            except OSError as exc:  # ECONNRESET and kin: the server died
                _log.warning("lost the fork server: %s", exc)
                return
            fds = _received_fds(ancdata)
            if not data:
                return  # the server died
            try:
                report = json.loads(data)
                if report["type"] == "forked":
                    self._forked(report["id"], report["pid"], fds)
                else:
                    child = self._children.pop(report["pid"], None)
                    if child is not None:
                        child._exit(report["returncode"])
            except (ValueError, KeyError, TypeError) as exc:
                for fd in fds:
                    os.close(fd)
                _log.warning("the fork server broke its protocol (%r): %s", data[:200], exc)
                return

    def _forked(self, request_id: int, pid: int, fds: list[int]) -> None:
        pidfd, *extra = fds or [-1]
        for fd in extra:
            os.close(fd)
        request = self._requests.pop(request_id, None)
        if request is None:
            # Its spawn was cancelled or gave up after the request went out: nobody owns
            # this child. Its exit report will find no one either.
            if pidfd >= 0:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # exited already
                os.close(pidfd)
            return
        stdin, stdout, stderr, *status = (trio.lowlevel.FdStream(fd) for fd in request.pipes)
        child = ForkedProcess(pid, stdin, stdout, stderr, pidfd, status[0] if status else None)
        self._children[pid] = child
        request.child = child
        request.done.set()

    async def _shut_down(self, process: trio.Process) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            sock.close()  # the server exits when it sees the socket close
        requests, self._requests = self._requests, {}
        for request in requests.values():
            request.done.set()  # with no child: ForkServerGone
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

        Cancelled, it leaves nothing behind: our pipe ends are closed, and a child the
        server forks for it anyway is killed.

        Raises:
            ForkServerGone: the server is not running, died meanwhile or did not answer
                within ``reply_timeout``; start the process directly.
        """
        sock = self._socket
        if sock is None:
            raise ForkServerGone("the fork server is not running")
        request_id = next(self._ids)
        # stdin, stdout, stderr; and a sandboxed run's keeper's word on its end.
        pipes = [os.pipe() for _ in range(3 if spec.get("sandbox") is None else 4)]
        theirs = [pipes[0][0], *(write for _, write in pipes[1:])]
        request = _Request([pipes[0][1], *(read for read, _ in pipes[1:])])
        self._requests[request_id] = request
        try:
            try:
                message = json.dumps({"id": request_id, "spec": spec, "env": env}).encode()
                await sock.sendmsg(
                    [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", theirs))]
                )
            except (OSError, trio.ClosedResourceError) as exc:
                raise ForkServerGone(f"the fork server is gone: {exc}") from None
            finally:
                for fd in theirs:
                    os.close(fd)
            with trio.move_on_after(self.reply_timeout):
                await request.done.wait()
            if request.child is None:
                if request.done.is_set():
                    raise ForkServerGone("the fork server died before it forked")
                raise ForkServerGone(f"the fork server did not answer in {self.reply_timeout:g}s")
            return request.child
        except BaseException:
            # A reply that comes later finds no request: the reader kills its child.
            self._requests.pop(request_id, None)
            if request.child is None:
                for fd in request.pipes:
                    os.close(fd)
            else:  # the reply landed between our cancellation and this line
                child = request.child
                self._children.pop(child.pid, None)
                child.kill()
                child._exit(-signal.SIGKILL)
                child._close_pipes()
            raise


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)

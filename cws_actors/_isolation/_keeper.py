"""The keeper: the process the daemon (or its fork server) starts for a plugin, which
runs none of the plugin's code and holds the plugin's processes together.

It makes a PID namespace (as root, or inside an unprivileged user namespace) and forks
the run's init into it as its PID 1, which forks the runner. The kernel ends every
process of a namespace when its PID 1 dies, and the init ends the run when the keeper
dies (its parent-death signal, SIGUSR1, handled: :class:`_Ending`), so unload, SIGKILL
and daemon exit take every child of the plugin along, double-forked and ``setsid`` ones
included. Without a PID namespace the init is a child subreaper instead: orphans of the
plugin become its children and it kills them when the run ends.

How a run ends: the init tells the host (a pipe of the fork server's) and the keeper
how the runner ended as soon as it reaps it; after a crash the rest of the run is
stopped, and ended :data:`TEARDOWN_DELAY` later at idle priority, so that a restart does
not queue behind the kernel unmapping it.

The runner hands the keeper its seccomp listener; the keeper then answers, one at a
time: each new process or thread (``clone``/``fork``, refused with EAGAIN past the
plugin's ``processes`` limit, and with EPERM if it asks for namespaces) and each call
the sandbox refuses (EPERM), which it logs on stderr, so the daemon logs it under the
plugin's name. It forwards SIGTERM to the runner and exits as the runner did (same
code, or killed by the same signal), so the host sees the runner's exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from . import _kernel

SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1


def keep(spec: dict[str, Any], confined: Callable[[socket.socket | None, bool], None]) -> NoReturn:
    """Run ``confined(keeper_socket, in_namespace)`` in the runner process; this
    process keeps it until it exits, then exits as it did."""
    kernel = _kernel.support()
    _kernel.not_dumpable()
    # Every process of the plugin carries its per-process limits, this one included.
    limits = {k: v for k, v in spec.get("limits", {}).items() if k != "processes"}
    _kernel.apply_limits(limits)
    name = spec.get("name", "?")
    entered = False
    if spec.get("cgroup"):
        # Before the init is forked: every process of the plugin is born inside.
        from . import _cgroup

        limits = dict(spec.get("limits", {}))
        if kernel.user_notification and kernel.seccomp:
            # This keeper counts them and says so; a pids.max at the same count also
            # refuses the runner's own threads mid-call (seen: probes time out).
            limits.pop("processes", None)
        try:
            _cgroup.enter(spec["cgroup"], name, limits)
            entered = True
        except OSError as exc:
            print(
                f"cws-sandbox: plugin {name!r} runs without its cgroup ({exc}): its memory"
                " and CPU limits hold per process only",
                file=sys.stderr,
                flush=True,
            )
    namespace = False
    if kernel.pid_namespace:
        flags = _kernel.CLONE_NEWPID | (0 if kernel.root else _kernel.CLONE_NEWUSER)
        uid, gid = os.getuid(), os.getgid()
        try:
            _kernel.unshare(flags)
            if not kernel.root:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"{uid} {uid} 1")
                _write("/proc/self/gid_map", f"{gid} {gid} 1")
            namespace = True
        except OSError as exc:
            print(f"cws-sandbox: no PID namespace ({exc}); a subreaper instead", file=sys.stderr)
    notify = kernel.user_notification and kernel.seccomp
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if notify else (None, None)
    status_read, status_write = os.pipe()
    keeper = os.getpid()
    # The runner's way to tell "the daemon let go" (its input closed, keeper alive)
    # from "the plugin was killed" (the keeper is gone first): it skips the plugin's
    # stop then, in the moment before the kernel ends it.
    from . import _runner

    # Where the runner's code reads it: run with ``python -m``, that code is
    # ``__main__``, and ``from . import _runner`` is a second copy of the module.
    pidfd = os.pidfd_open(keeper)
    for module in (_runner, sys.modules.get("__main__")):
        if module is not None and hasattr(module, "KEEPER_PIDFD"):
            module.KEEPER_PIDFD = pidfd
    ending = _Ending(pidfd, namespace)
    tell_host = spec.get("status_fd")
    init = _fork_child(_INIT_DEATH_SIGNAL, ending.keeper_gone)
    if init == 0:
        os.close(status_read)
        if ours is not None:
            ours.close()
        run = lambda: confined(theirs, namespace)  # noqa: E731
        _init(keeper, status_write, run, namespace, theirs, ending, tell_host)
    os.close(status_write)
    if entered:
        with contextlib.suppress(OSError):  # else it stays: only its end is slower
            _cgroup.leave(spec["cgroup"])
    _kernel.forget_prepared()  # the runner's to enforce, not ours
    if theirs is not None:
        theirs.close()
    # The runner owns the protocol pipes: the host must see them close when it exits.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    processes = spec.get("limits", {}).get("processes")
    disk_mb = spec.get("limits", {}).get("disk_mb")
    quota = (spec["data_dir"], disk_mb * 1024 * 1024) if disk_mb and spec.get("data_dir") else None
    cpu_seconds = spec.get("limits", {}).get("cpu_seconds")
    _Keeper(name, init, processes, status_read, quota, cpu_seconds, tell_host).serve(ours)


def _fork_child(
    death_signal: int = signal.SIGKILL, on_death: Callable[[int, Any], None] | None = None
) -> int:
    """Fork; in the child, die with this process (exact: it forks from its only
    thread that matters, the main one, which lives as long as it does): killed, or
    ``death_signal`` handled by ``on_death``."""
    parent = os.pidfd_open(os.getpid())
    pid = os.fork()
    if pid == 0:
        if on_death is not None:
            signal.signal(death_signal, on_death)
        _kernel.prctl(_kernel.PR_SET_PDEATHSIG, death_signal)
        if select.select([parent], [], [], 0)[0]:
            os._exit(_orphaned())  # the parent died before the signal was armed
    os.close(parent)
    return pid


TEARDOWN_DELAY = 0.05
"""How long what is left of a crashed run waits, stopped, before it is killed: ending a
process costs the kernel 1-2 ms here (unmapping what it shares with the fork server),
in code that nothing preempts on a kernel built without preemption (idle priority does
not help there), and a restart should not queue behind it. A restart from a warm spare
takes milliseconds, a cold one tens."""


def _crashed(code: int) -> bool:
    """The runner's end was not a stop (a clean exit, or the host's SIGTERM)."""
    return code not in (0, -signal.SIGTERM)


_INIT_DEATH_SIGNAL = signal.SIGUSR1
"""What the init gets when its keeper dies: handled (:meth:`_Ending.keeper_gone`), so
that the run is stopped at once and ended later at idle priority; a SIGKILL would end
it at once, competing with the restart that follows for the CPU."""


def _tell_host(fd: int, code: int) -> None:
    """Write how the run ended (an exit code, negative for a signal) where the host
    reads it (:meth:`._forkserver.ForkedProcess.read_status`)."""
    with contextlib.suppress(OSError):  # the host is gone: nobody waits
        os.write(fd, f"{code}\n".encode())


def idle(pid: int = 0) -> None:
    """Let ``pid`` (0: this process) run only when nothing else wants a CPU: for the
    processes of a run that is ending. Their end is mostly the kernel unmapping what
    they share with the fork server (about 2 ms each here), which otherwise competes
    with the restart that follows. Lowering one's own priority needs no privilege."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


class _Ending:
    """How the init ends the run when its keeper is gone (SIGKILLed, say)."""

    def __init__(self, keeper_pidfd: int, namespace: bool) -> None:
        self.keeper_pidfd = keeper_pidfd
        self.namespace = namespace
        self.runner: int | None = None
        """The runner's pid (in the run's namespace), once forked."""
        self.ended = False
        """The run is ending (the keeper's death, when it comes, changes nothing)."""

    def keeper_gone(self, signum: int, frame: Any) -> None:
        # A process of the plugin may send this signal too (the init handles it, so
        # the kernel lets it through): only the keeper's death ends the run.
        # The signal comes as the keeper's thread exits, a moment before the pidfd
        # says the whole keeper is gone: wait that moment (a signal from anyone else
        # finds the keeper alive, and changes nothing).
        if self.ended or not select.select([self.keeper_pidfd], [], [], 1.0)[0]:
            return
        self.ended = True
        self.end_later(crashed=True)
        os._exit(_orphaned())

    def end_later(self, crashed: bool) -> None:
        """End what is left of the run: stopped at once (its code runs no more), killed
        :data:`TEARDOWN_DELAY` later at idle priority if it ``crashed`` (a restart is
        coming), at once otherwise. Then this init may exit."""
        runner = self.runner
        stop = -1 if self.namespace else runner  # -1 from PID 1: the namespace but us
        if crashed and stop is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stop, signal.SIGSTOP)
            time.sleep(TEARDOWN_DELAY)
        if runner is not None:
            idle(runner)
        idle()
        if stop is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stop, signal.SIGKILL)
        if not self.namespace:
            _end_orphans()  # a subreaper's; in a namespace the kernel ends them with us


def _init(
    keeper: int,
    status_out: int,
    confined: Callable[[], None],
    namespace: bool,
    listener_socket: socket.socket | None,
    ending: _Ending,
    tell_host: int | None = None,
) -> NoReturn:
    """PID 1 of the plugin's namespace (or a subreaper): fork the runner, reap every
    orphan, pass SIGTERM on, and when the runner exits tell the host (``tell_host``)
    and the keeper how, then exit at idle priority (the kernel ends what is left in the
    namespace; a subreaper kills it itself)."""
    if not namespace:
        _kernel.prctl(_kernel.PR_SET_CHILD_SUBREAPER, 1)
    os.environ["CWS_PLUGIN_PID"] = str(keeper)
    runner = _fork_child()
    if runner == 0:
        signal.signal(_INIT_DEATH_SIGNAL, signal.SIG_DFL)  # the init's, not the plugin's
        os.close(status_out)
        if tell_host is not None:
            os.close(tell_host)  # ours to write, not the plugin's
        code = 1
        try:
            confined()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # noqa: BLE001 - never return into the keeper's code
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    ending.runner = runner
    _kernel.forget_prepared()  # the runner's to enforce, not ours
    if listener_socket is not None:
        listener_socket.close()  # the keeper must see it close if the runner dies
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)

    def forward(signum: int, frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(runner, signum)

    for forwarded in (signal.SIGTERM, signal.SIGCONT, signal.SIGHUP):
        signal.signal(forwarded, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == runner:
            break
    code = os.waitstatus_to_exitcode(status)
    if tell_host is not None:
        _tell_host(tell_host, code)  # first: a restart waits for this
    os.write(status_out, str(status).encode())
    ending.ended = True
    ending.runner = None  # reaped: its pid may name another process of the plugin now
    ending.end_later(crashed=_crashed(code))
    os._exit(0)


def _orphaned() -> int:
    from ._runner import EXIT_ORPHANED

    return EXIT_ORPHANED


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _end_orphans() -> None:
    """Subreaper mode: kill what the runner left behind and reap it. Never blocks on
    one child: a child killed here may leave children of its own, which become ours."""
    for _ in range(100):
        children = _children(os.getpid())
        if not children:
            return
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)  # one of those just killed ends; then look again
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return


CPU_CHECK = 0.5
"""Seconds between two looks at the CPU time of a plugin's child processes (with
``cpu_seconds``): together they may pass the limit by this much per CPU before they are
told to end."""

DISK_CALLS = ("open", "openat", "creat", "fallocate")
"""What the filter sends here, when a disk quota is set, for :meth:`_Keeper._disk`."""


class _Keeper:
    def __init__(
        self,
        name: str,
        init: int,
        processes: int | None,
        status: int,
        quota: tuple[str, int] | None = None,
        cpu_seconds: int | None = None,
        tell_host: int | None = None,
    ) -> None:
        self.name = name
        self.tell_host = tell_host
        """Where the host reads how the run ended (a pipe the fork server gave), so that
        it need not wait for this process's own exit; the init writes it first."""
        self.cpu_seconds = cpu_seconds
        """CPU seconds the plugin's child processes may use together (each process of
        it also has its RLIMIT_CPU): past it, the keeper ends them."""
        self._ticks: dict[int, int] = {}
        """The CPU ticks of each child process at the last look."""
        self._told: set[int] = set()
        """Children sent SIGXCPU at the last look."""
        self.runner = init
        """The plugin's init (its processes are those below it)."""
        self.processes = processes
        self.status = status
        self.quota = quota
        """(data folder, bytes it may hold): writable opens refused at or past it."""
        self._used = 0
        self._fresh_until = 0.0
        self._disk_logged = -1.0
        self._disk_quiet = 0

    def serve(self, sock: socket.socket | None) -> NoReturn:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for forwarded in (signal.SIGTERM, signal.SIGCONT, signal.SIGHUP):
            signal.signal(forwarded, self._forward)
        runner_fd = os.pidfd_open(self.runner)
        listener = self._listener(sock)
        poller = select.poll()
        poller.register(runner_fd, select.POLLIN)
        # The init writes how the runner ended as soon as it reaps it: the keeper ends
        # then, without waiting for the init's own exit (a restart waits for this one).
        poller.register(self.status, select.POLLIN)
        if listener is not None:
            poller.register(listener, select.POLLIN)
        # With cpu_seconds, the group's total is looked at every CPU_CHECK seconds.
        period = int(CPU_CHECK * 1000) if self.cpu_seconds else None
        while True:
            events = dict(poller.poll(period))
            if runner_fd in events or self.status in events:
                break
            # POLLHUP: no process uses the filter any more (the runner and its children
            # are gone); polled again, it would wake this loop at once, for ever, while
            # the init reaps the runner.
            if (
                listener is not None
                and listener in events
                and (events[listener] & select.POLLHUP or not self._answer(listener))
            ):
                poller.unregister(listener)
                os.close(listener)
                listener = None
            if self.cpu_seconds:
                self._check_cpu()
        told = os.read(self.status, 64)
        if told:
            status = int(told)  # how the runner ended, which its init saw
            # The init exits next (and the kernel ends what is left in the namespace);
            # reaped if it has, else it dies with this process (its death signal).
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.runner, os.WNOHANG)
        else:
            _, status = os.waitpid(self.runner, 0)  # the init died without a word
        sys.stderr.flush()
        code = os.waitstatus_to_exitcode(status)
        if self.tell_host is not None:
            if not told:  # the init told the host when it told us
                _tell_host(self.tell_host, code)
            if _crashed(code):  # a restart is coming; the host knows, and will not wait
                time.sleep(TEARDOWN_DELAY)
                idle()  # this exit (unmapping this process) need not hurry either
            # else a stop: the host waits for this exit
        if code < 0:
            if -code not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code)

    def _check_cpu(self) -> None:
        """Once the plugin's child processes (all but its init and runner, alive or
        exited) used ``cpu_seconds`` together, end each of them that goes on using CPU:
        SIGXCPU, as RLIMIT_CPU does, then SIGKILL if it still does at the next look.
        Children that wait (a server's idle workers) are left alone; the runner goes on
        (its own RLIMIT_CPU bounds it)."""
        assert self.cpu_seconds is not None
        used, children = children_cpu(self.runner)
        before, self._ticks = self._ticks, children
        if used < self.cpu_seconds:
            return
        busy = [pid for pid, ticks in children.items() if ticks > before.get(pid, ticks)]
        if not busy:
            return
        told = [pid for pid in busy if pid in self._told]
        print(
            f"cws-sandbox: plugin {self.name!r}: its child processes used {used:.1f} CPU"
            f" seconds together, its cpu_seconds is {self.cpu_seconds}: ending the"
            f" {len(busy)} still using CPU"
            + (f" ({len(told)} with SIGKILL: SIGXCPU did not end them)" if told else ""),
            file=sys.stderr,
            flush=True,
        )
        for pid in busy:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL if pid in self._told else signal.SIGXCPU)
        self._told = set(busy)

    def _forward(self, signum: int, frame: Any) -> None:
        try:
            os.kill(self.runner, signum)
        except ProcessLookupError:
            pass

    def _listener(self, sock: socket.socket | None) -> int | None:
        if sock is None:
            return None
        try:
            _, fds, _, _ = socket.recv_fds(sock, 64, 1)
        except OSError:
            fds = []
        sock.close()
        return fds[0] if fds else None

    def _answer(self, listener: int) -> bool:
        """Answer one notification; False once the listener is dead."""
        import pyseccomp as sc

        lib = sc._libseccomp
        request = ctypes.POINTER(sc._Notif)()
        response = ctypes.POINTER(sc._NotifResp)()
        if lib.seccomp_notify_alloc(ctypes.byref(request), ctypes.byref(response)) != 0:
            return False
        try:
            if lib.seccomp_notify_receive(listener, request) != 0:
                # ENOENT: the caller went away meanwhile (a signal); anything else: gone.
                return os.path.exists(f"/proc/{self.runner}")
            note = request.contents
            name = sc.resolve_syscall(note.data.arch, note.data.nr).decode()
            answer = response.contents
            answer.id, answer.val, answer.error, answer.flags = note.id, 0, 0, 0
            refusal = self._judge(name, note)
            if refusal is None:
                answer.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE
            else:
                answer.error = -refusal[0]
                if refusal[0] != errno.ENOSPC or self._log_disk():
                    print(
                        f"cws-sandbox: plugin {self.name!r} denied {name}"
                        f" ({errno.errorcode[refusal[0]]}): {refusal[1]}",
                        file=sys.stderr,
                        flush=True,
                    )
            lib.seccomp_notify_respond(listener, response)
            return True
        finally:
            lib.seccomp_notify_free(request, response)

    def _judge(self, name: str, note: Any) -> tuple[int, str] | None:
        """None to let the call go on, or (errno, why)."""
        if name in DISK_CALLS and self.quota is not None:
            return self._disk()
        if name not in ("clone", "fork", "vfork"):
            return errno.EPERM, "the sandbox refuses it"
        flags = note.data.args[0] if name == "clone" else 0
        if flags & _kernel.CLONE_NAMESPACES:
            return errno.EPERM, "new namespaces are refused"
        if self.processes is not None:
            count = _count_tasks(self.runner) - 1  # not the init
            if count >= self.processes:
                return errno.EAGAIN, f"{count} processes and threads of {self.processes}"
        return None

    def _disk(self) -> tuple[int, str] | None:
        """ENOSPC while the data folder holds its quota or more. Its size is measured
        again at each call, unless measuring takes long (a folder of many files): then
        it is reused for ten times as long as it took, which bounds the cost."""
        assert self.quota is not None
        folder, limit = self.quota
        now = time.monotonic()
        if now >= self._fresh_until:
            self._used = folder_size(folder)
            took = time.monotonic() - now
            self._fresh_until = now + (10 * took if took > 0.002 else 0.0)
        if self._used >= limit:
            return errno.ENOSPC, (
                f"its data folder holds {self._used} bytes, at its disk_mb"
                f" ({limit // (1024 * 1024)} MB)"
            )
        return None

    def _log_disk(self) -> bool:
        """Log a disk refusal at most once a second (a plugin may retry in a loop)."""
        now = time.monotonic()
        if now - self._disk_logged < 1.0 and self._disk_logged >= 0:
            self._disk_quiet += 1
            return False
        if self._disk_quiet:
            print(
                f"cws-sandbox: plugin {self.name!r}: {self._disk_quiet} more writes refused"
                " (ENOSPC) in the last second",
                file=sys.stderr,
                flush=True,
            )
            self._disk_quiet = 0
        self._disk_logged = now
        return True


def folder_size(folder: str) -> int:
    """Bytes the files under ``folder`` take on disk (allocated blocks)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(child) for child in file.read().split()]
    except OSError:
        pass
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (those alive, or not reaped yet)."""
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += _children(pid)
    return found


def cpu_times(pid: int) -> tuple[int, int, int] | None:
    """(own CPU ticks, its waited-for children's ticks, start time) of ``pid``; None
    once it is gone (its time is in its reaper's then)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        return (
            int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]), int(fields[19])
        )  # fmt: skip
    except (OSError, ValueError, IndexError):
        return None


def children_cpu(init: int) -> tuple[float, dict[int, int]]:
    """CPU seconds used by the plugin's child processes (every process below its init
    but the runner, the init's first child), alive or exited: theirs, and what the
    runner and the init waited for (their ``cutime`` and ``cstime``: the children they
    reaped, and their children; one not waited for yet is still in the tree, as a
    zombie). And each live child's own CPU ticks."""
    times = {pid: found for pid in process_tree(init) if (found := cpu_times(pid))}
    if init not in times:
        return 0.0, {}
    started = [(times[pid][2], pid) for pid in _children(init) if pid in times]
    if not started:
        return 0.0, {}
    runner = min(started)[1]
    ticks = times[init][1] + times[runner][1]  # what the init and the runner reaped
    children = {pid: own for pid, (own, _, _) in times.items() if pid not in (init, runner)}
    ticks += sum(own + reaped for pid, (own, reaped, _) in times.items() if pid in children)
    return ticks / os.sysconf("SC_CLK_TCK"), children


def _count_tasks(root: int) -> int:
    """Threads of ``root`` and of all its descendants."""
    count = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            count += len(os.listdir(f"/proc/{pid}/task"))
    return count

"""The kernel's side of a plugin's sandbox: what this machine can enforce, and the
runner confining itself before any plugin code runs.

The runner calls :func:`confine` in this order, once, single-threaded (Landlock and
seccomp apply to the calling thread and what it starts after; no thread exists yet):

1. capabilities dropped (a root daemon's plugin keeps uid 0 but no capability: no
   raising its rlimits back, no ``CAP_SYS_PTRACE``, ``CAP_KILL``, ``CAP_NET_RAW``...);
2. rlimits: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_NOFILE``, ``RLIMIT_NPROC``
   (processes), ``RLIMIT_FSIZE`` (disk, per file) and ``RLIMIT_CORE`` 0;
3. Landlock: files (its folder and what Python needs, read; its data folder, write;
   what it was granted), execute rights (only the programs it may run), TCP bind and
   connect by port, signals and abstract Unix sockets scoped to its own domain (so it
   cannot signal the daemon), and ptrace of anything outside its domain;
4. seccomp: what Landlock cannot say (UDP, raw, packet and netlink sockets; ``execve``
   when it runs no program; ``ptrace``, ``mount``, namespaces, ``bpf``, keyrings,
   modules, io_uring, making itself dumpable again). With a keeper (see
   :mod:`._keeper`) denials and new processes go to the keeper through seccomp's user
   notification, which logs each denial with the plugin's name and counts processes.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import resource
import signal
import socket
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .._plugins._model import PluginMetadata
from .._plugins._sandbox import NetworkMode, PathAccess, Sandbox

try:  # imported here once: the fork server's children inherit them ready
    import landlockpy  # noqa: F401
    import pyseccomp  # noqa: F401
except (ImportError, OSError, RuntimeError):  # no libseccomp.so.2: reported, not fatal
    pass

ENFORCED = "enforced"

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NAMESPACES = 0x7E020080  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME

SYSTEM_READ = (
    "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/usr/share/zoneinfo",
    "/etc/ssl", "/etc/ca-certificates", "/usr/share/ca-certificates", "/etc/pki",
    "/etc/localtime", "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf",
    "/etc/gai.conf", "/etc/host.conf", "/etc/services", "/etc/protocols", "/etc/mime.types",
    "/dev/urandom", "/dev/random",
)  # fmt: skip
"""What every plugin reads besides its folder: shared libraries, Python's own files
(its prefix and ``sys.path`` are added), CA certificates, time zones and the resolver's
files. ``/proc``, ``/home``, ``/root``, ``/etc`` at large and ``$CWS_HOME`` are not."""
SYSTEM_WRITE = ("/dev/null",)

DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsmount", "fsconfig", "fspick", "mount_setattr", "unshare", "setns",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "syslog", "open_by_handle_at",
    "name_to_handle_at", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
    "setdomainname", "iopl", "ioperm", "quotactl", "vhangup",
)  # fmt: skip
"""Refused to every plugin (EPERM): reading other processes, mounts and namespaces, the
kernel's own interfaces. ``execve``/``execveat`` join them for a plugin that runs no
program, as do sockets other than TCP and Unix ones (and every inet socket for
``network = "none"``)."""


# ---------------------------------------------------------------------- what the machine has


@attrs.frozen
class KernelSupport:
    landlock_abi: int
    seccomp: bool
    user_notification: bool
    pid_namespace: str | None
    """How a plugin gets a PID namespace: ``root`` or ``user namespace``; None: cannot."""
    pid_namespace_problem: str
    cgroup: str | None
    """The cgroup backend for plugin runs (``cgroup v1 ...``, ``cgroup v2 delegated
    (...)``, see :mod:`._cgroup`); None with ``cgroup_problem``."""
    cgroup_problem: str
    root: bool
    cgroup_controllers: frozenset[str] = frozenset({"memory", "cpu", "pids"})
    """What the backend limits, when there is one."""


@functools.cache
def support() -> KernelSupport:
    """Probe once: the Landlock ABI (``landlock_create_ruleset`` version query),
    seccomp's actions, namespaces and cgroup delegation."""
    try:
        import landlockpy

        abi = landlockpy.abi_version()
    except (ImportError, OSError):
        abi = 0
    actions = _read("/proc/sys/kernel/seccomp/actions_avail").split()
    root = os.geteuid() == 0
    pidns, pid_problem = _pid_namespace(root)
    cgroup, cgroup_problem = _cgroup()
    return KernelSupport(
        landlock_abi=abi,
        seccomp="errno" in actions and _seccomp_library(),
        user_notification="user_notif" in actions,
        pid_namespace=pidns,
        pid_namespace_problem=pid_problem,
        cgroup=cgroup,
        cgroup_problem=cgroup_problem,
        root=root,
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _seccomp_library() -> bool:
    try:
        import pyseccomp  # noqa: F401 - loads libseccomp.so.2
    except (ImportError, OSError):
        return False
    return True


def _pid_namespace(root: bool) -> tuple[str | None, str]:
    if not Path("/proc/self/ns/pid").exists():
        return None, "this kernel has no PID namespaces"
    if root:
        return "root", ""
    if _read("/proc/sys/user/max_user_namespaces") in ("", "0"):
        return None, "user namespaces are off (user.max_user_namespaces = 0)"
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return None, "unprivileged user namespaces are off (kernel.unprivileged_userns_clone)"
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return None, "AppArmor restricts unprivileged user namespaces"
    return "user namespace", ""


def _cgroup() -> tuple[str | None, str]:
    from . import _cgroup

    found = _cgroup.probe()
    if found.kind is None:
        return None, found.problem
    return _cgroup.describe(found.kind, found.bases), ""


# ---------------------------------------------------------------------- the honesty report


def controls(metadata: PluginMetadata, kernel: KernelSupport | None = None) -> dict[str, str]:
    """Per control, for this plugin on this machine: ``enforced``, ``partially enforced
    (why)`` or ``not available (why)``."""
    k = kernel or support()
    sandbox, limits = metadata.sandbox, metadata.limits
    ll, sc = k.landlock_abi, k.seccomp
    no_ll = f"not available (Landlock is off or missing: ABI {ll})"
    no_sc = "not available (seccomp or libseccomp.so.2 is missing)"
    report = {
        "environment": ENFORCED,
        "dumpable": ENFORCED,
        "filesystem": ENFORCED if ll >= 1 else no_ll,
        "exec": (ENFORCED if ll >= 1 and sc else no_ll if ll < 1 else no_sc),
        "syscalls": ENFORCED if sc else no_sc,
        "signals": ENFORCED if ll >= 6 else f"not available (needs Landlock ABI 6, have {ll})",
    }
    if sandbox.network is NetworkMode.NONE and sandbox.apis:
        report["network"] = (
            "partially enforced (TCP to the daemon's port only, for ctx.api; Landlock"
            " filters ports, not addresses)"
            if ll >= 4 and sc
            else f"not available (ctx.api needs TCP: Landlock ABI 4 and seccomp; ABI {ll})"
        )
    elif sandbox.network is NetworkMode.NONE:
        report["network"] = ENFORCED if sc else no_sc
    elif ll < 4 or not sc:
        report["network"] = f"not available (needs Landlock ABI 4 and seccomp; ABI {ll})"
    elif sandbox.network is NetworkMode.LOOPBACK:
        report["network"] = (
            "partially enforced (Landlock filters ports, not addresses: every port but"
            " the daemon's, on any host)"
        )
    else:
        report["network"] = (
            "partially enforced (Landlock filters ports, not addresses: the listed ports"
            " and 53 (DNS over TCP) on any host; UDP refused)"
        )
    if k.pid_namespace:
        report["process_group"] = ENFORCED
    else:
        report["process_group"] = (
            f"partially enforced (no PID namespace: {k.pid_namespace_problem}; the keeper"
            " is a subreaper and ends the plugin's processes, unless it is SIGKILLed)"
        )
    group = k.cgroup_controllers if k.cgroup else frozenset()
    if limits.memory_mb:
        if "memory" in group:
            report["memory"] = (
                f"enforced ({k.cgroup} memory controller: its processes together; RLIMIT_AS"
                " per process too)"
            )
        else:
            report["memory"] = (
                f"partially enforced (RLIMIT_AS per process only: {k.cgroup_problem})"
            )
    if limits.cpu_seconds:
        report["cpu_seconds"] = (
            "enforced (RLIMIT_CPU on each process, and the keeper ends the plugin's child"
            " processes once together they used cpu_seconds)"
        )
    if limits.open_files:
        report["open_files"] = ENFORCED
    if limits.cpu_percent:
        if "cpu" in group:
            report["cpu_percent"] = f"enforced ({k.cgroup} cpu controller: a CPU bandwidth quota)"
        else:
            report["cpu_percent"] = f"not available (needs a cgroup: {k.cgroup_problem})"
    if limits.processes:
        if k.user_notification and sc:
            report["processes"] = ENFORCED
        elif "pids" in group:
            report["processes"] = f"enforced ({k.cgroup} pids controller)"
        elif not k.root:
            report["processes"] = "partially enforced (RLIMIT_NPROC counts the whole user)"
        else:
            report["processes"] = "not available (root ignores RLIMIT_NPROC; no seccomp notify)"
    if limits.disk_mb:
        if k.user_notification and sc:
            report["disk"] = (
                "partially enforced (a file that may write is not opened, ENOSPC, while the"
                " data folder is at disk_mb; a file open already grows up to RLIMIT_FSIZE,"
                " disk_mb per file)"
            )
        else:
            report["disk"] = (
                "partially enforced (RLIMIT_FSIZE caps each file; the data folder's total"
                " is measured in status, not refused: no seccomp user notification)"
            )
    return report


def weaker(report: Mapping[str, str]) -> list[str]:
    """The controls a plugin asks for that this machine cannot enforce at all."""
    return [f"{name}: {state}" for name, state in report.items() if state.startswith("not ")]


# ---------------------------------------------------------------------- the launch spec


def sandbox_spec(
    metadata: PluginMetadata,
    folder: Path | None,
    data_dir: Path | None,
    home: Path | None,
    protected_ports: Iterable[int] = (),
    daemon_port: int | None = None,
) -> dict[str, Any]:
    """What the runner needs to confine itself (JSON). ``daemon_port`` is set when the
    plugin may call the daemon's API (``ctx.api``): then it may connect to that port
    over TCP (whatever its network mode), and to no other of ``protected_ports``."""
    sandbox: Sandbox = metadata.sandbox
    read: list[str] = []
    write: list[str] = []
    for rule in sandbox.filesystem:
        (write if rule.access is PathAccess.WRITE else read).append(rule.path)
    ports = sorted({e.port for e in sandbox.endpoints})
    if ports:
        ports = sorted({*ports, 53})  # the resolver, over TCP (RES_OPTIONS=use-vc)
    return {
        "folder": str(folder) if folder else None,
        "data": str(data_dir) if data_dir else None,
        "read": read,
        "write": write,
        "exec": list(sandbox.exec),
        "network": sandbox.network.value,
        "ports": ports,
        "protected_ports": sorted(set(protected_ports) - {daemon_port}),
        "daemon_port": daemon_port,
        # The data folder's total is checked by the keeper (``disk_mb``).
        "disk": bool(metadata.limits.disk_mb) and data_dir is not None,
        "home": str(home) if home else None,
    }


# ---------------------------------------------------------------------- the runner's side


def prctl(option: int, arg: int = 0) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def not_dumpable() -> None:
    """No process of the same user reads this one's ``/proc/<pid>/environ`` or
    ``mem``, nor ptraces it (root still can, unless confined as plugins are)."""
    if sys.platform.startswith("linux"):
        prctl(PR_SET_DUMPABLE, 0)


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@functools.cache
def _last_cap() -> int:
    return int(_read("/proc/sys/kernel/cap_last_cap") or 40)


def drop_capabilities() -> None:
    """Empty the bounding set and every capability set (a no-op for a non-root daemon
    outside a user namespace)."""
    for cap in range(_last_cap() + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EPERM:
            break  # no CAP_SETPCAP: nothing to drop
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def apply_limits(limits: Mapping[str, int | None]) -> None:
    def cap(kind: int, value: int, hard: int | None = None) -> None:
        resource.setrlimit(kind, (value, value if hard is None else hard))

    if limits.get("memory_mb"):
        cap(resource.RLIMIT_AS, int(limits["memory_mb"] or 0) * 1024 * 1024)
    if limits.get("cpu_seconds"):
        seconds = int(limits["cpu_seconds"] or 0)
        cap(resource.RLIMIT_CPU, seconds, seconds + 1)
    if limits.get("open_files"):
        cap(resource.RLIMIT_NOFILE, int(limits["open_files"] or 0))
    if limits.get("processes"):
        cap(resource.RLIMIT_NPROC, int(limits["processes"] or 0))
    if limits.get("disk_mb"):
        # A write past it fails with EFBIG instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        cap(resource.RLIMIT_FSIZE, int(limits["disk_mb"] or 0) * 1024 * 1024)


def python_paths(home: str | None) -> list[str]:
    """Python's prefix and import path, minus the working directory (``-m`` puts it
    first) unless the package itself lives there."""
    here = Path(__file__).resolve().parents[2]
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).parent)}
    cwd = os.getcwd()
    for entry in sys.path:
        if not entry or entry == "/" or (entry == cwd and here != Path(cwd)):
            continue
        found.add(entry)
    found.update(editable_packages())
    return sorted(found)


def editable_packages() -> set[str]:
    """The package folders that editable installs (``pip install -e``) map outside
    ``sys.path``: setuptools' finders on ``sys.meta_path`` hold them in ``MAPPING`` (a
    package name to its folder) and ``NAMESPACES``. Without them a plugin installed so,
    ours included, could not import its own code."""
    found: set[str] = set()
    for finder in sys.meta_path:
        name = getattr(finder, "__module__", "") or ""
        module = sys.modules.get(name)
        mapping = getattr(module, "MAPPING", None)
        if not name.startswith("__editable__") or not isinstance(mapping, dict):
            continue
        found.update(str(folder) for folder in mapping.values())
        for folders in (getattr(module, "NAMESPACES", None) or {}).values():
            found.update(str(folder) for folder in folders)
    return found


Witness = list[tuple[str, str, Any]]
"""What a Landlock ruleset was built from: per path allowed, ``("path", path, (device,
inode, is a folder))`` (None: missing); per folder walked into, ``("folder", path, its
sorted entries)``. Landlock rules name inodes, not paths, and a ruleset holds its inodes
(their numbers cannot be reused meanwhile): while all of these still read the same, the
ruleset is exactly the one a fresh build would make."""
_CHANGED = object()  # a path that changed while its rule was added: never the same again


def _identity(path: str) -> tuple[int, int, bool] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino, stat.S_ISDIR(found.st_mode)


def _entries(path: str) -> tuple[str, ...] | None:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return None


def _allow_except(
    ruleset: Any, path: str, access: Any, excluded: list[Path], seen: Witness
) -> None:
    """Allow ``access`` under ``path`` but not under any of ``excluded`` inside it:
    Landlock only adds rights, so allow each sibling on the way down instead. What it
    looked at goes to ``seen``."""
    target = Path(path)
    inside = [e for e in excluded if e == target or target in e.parents]
    if not inside:
        identity = _identity(path)
        if identity is None:
            seen.append(("path", path, None))
            return  # it does not exist: nothing to allow
        if not identity[2]:
            access &= _FILE_RIGHTS  # directory rights on a file: EINVAL
        try:
            ruleset.allow_path(path, access)
        except OSError:
            pass  # it vanished meanwhile
        changed = _identity(path) != identity  # swapped while we looked: rebuild next time
        seen.append(("path", path, _CHANGED if changed else identity))
        return
    if any(e == target for e in inside):
        return
    names = _entries(path)
    seen.append(("folder", path, names))
    for name in names or ():
        _allow_except(ruleset, str(target / name), access, inside, seen)


def _still(witness: Witness) -> bool:
    """Whether every path of ``witness`` still reads the same."""
    for kind, path, value in witness:
        if (_identity(path) if kind == "path" else _entries(path)) != value:
            return False
    return True


def _file_rights() -> Any:
    try:
        from landlockpy import AccessFS
    except ImportError:
        return 0
    return AccessFS.EXECUTE | AccessFS.WRITE_FILE | AccessFS.READ_FILE | AccessFS.TRUNCATE


_FILE_RIGHTS = _file_rights()


def _loaders() -> list[str]:
    import glob

    patterns = ("/lib64/ld-*.so*", "/lib/ld-*.so*", "/lib/*-linux-*/ld-*.so*",
                "/usr/lib/*-linux-*/ld-*.so*", "/usr/lib64/ld-*.so*")  # fmt: skip
    return sorted({found for pattern in patterns for found in glob.glob(pattern)})


_NET_RULESETS: dict[tuple[int, ...], Any] = {}


def loopback_ruleset(protected: tuple[int, ...]) -> Any:
    """A network-only Landlock ruleset allowing TCP connect to every port but
    ``protected``: 65 535 rules, built once per process (the fork server builds it
    before forking, so its plugins inherit it)."""
    from landlockpy import AccessFS, AccessNet, Ruleset

    ruleset = _NET_RULESETS.get(protected)
    if ruleset is None:
        ruleset = Ruleset(handled_fs=AccessFS.NONE, handled_net=AccessNet.CONNECT_TCP)
        skip = set(protected)
        for port in range(1, 65536):
            if port not in skip:
                ruleset.allow_port(port, AccessNet.CONNECT_TCP)
        _NET_RULESETS[protected] = ruleset
    return ruleset


def landlock_ruleset(spec: Mapping[str, Any]) -> tuple[Any, Witness]:
    """The plugin's own ruleset (files, bind, connect but in loopback mode, scopes),
    not enforced, and what it was built from."""
    from landlockpy import AccessFS, AccessNet, Ruleset, Scope

    kernel = support()
    home = [Path(spec["home"])] if spec.get("home") else []
    read_rights = AccessFS.READ_FILE | AccessFS.READ_DIR
    write_rights = (
        read_rights | AccessFS.WRITE_FILE | AccessFS.REMOVE_DIR | AccessFS.REMOVE_FILE
        | AccessFS.MAKE_DIR | AccessFS.MAKE_REG | AccessFS.MAKE_SYM | AccessFS.TRUNCATE
        | AccessFS.REFER | AccessFS.MAKE_SOCK | AccessFS.MAKE_FIFO
    )  # fmt: skip
    network = spec["network"]
    daemon_port = spec.get("daemon_port")
    handled_net = AccessNet.BIND_TCP | AccessNet.CONNECT_TCP
    if network == NetworkMode.LOOPBACK.value and kernel.landlock_abi >= 4:
        handled_net = AccessNet.BIND_TCP  # connect: the loopback ruleset, stacked under
    seen: Witness = []
    rs = Ruleset(handled_net=handled_net, scoped=Scope.SIGNAL | Scope.ABSTRACT_UNIX_SOCKET)
    try:
        # $CWS_HOME stays out of reach even below a path granted or needed by Python;
        # only the plugin's own folder and data folder inside it are allowed.
        for path in (*SYSTEM_READ, *python_paths(spec.get("home")), *spec["read"]):
            _allow_except(rs, path, read_rights, home, seen)
        for path in (*spec["write"], *SYSTEM_WRITE):
            _allow_except(rs, path, write_rights, home, seen)
        for program in spec["exec"]:
            _allow_except(rs, program, read_rights | AccessFS.EXECUTE, home, seen)
        if spec["exec"]:
            # The kernel opens a dynamic program's loader for execution too.
            for loader in _loaders():
                _allow_except(rs, loader, read_rights | AccessFS.EXECUTE, home, seen)
        if spec.get("folder"):
            _allow_except(rs, spec["folder"], read_rights, [], seen)
        if spec.get("data"):
            _allow_except(rs, spec["data"], write_rights, [], seen)
        if network == NetworkMode.LIST.value:
            for port in spec["ports"]:
                rs.allow_port(port, AccessNet.CONNECT_TCP)
        if daemon_port and network != NetworkMode.LOOPBACK.value:
            rs.allow_port(daemon_port, AccessNet.CONNECT_TCP)  # ctx.api
    except BaseException:
        rs.close()
        raise
    return rs, seen


def landlock(spec: Mapping[str, Any]) -> None:
    """Build the plugin's rulesets and enforce them (what :func:`confine` does with a
    prepared sandbox, in one go)."""
    prepared = _build(spec, notify=False, program=False)
    try:
        prepared.restrict()
    finally:
        prepared.close()


WRITE_OPEN_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC)
"""An open with any of these may write: the keeper sees it when a disk quota is set."""


def seccomp_filter(spec: Mapping[str, Any], notify: bool, disk: bool | None = None) -> Any:
    """The filter (not loaded): denials answered by the keeper when ``notify``, else
    EPERM straight from the kernel. ``disk`` (with ``notify``; by default the spec's
    ``disk``): opens that may write, and ``fallocate``, go to the keeper, which refuses
    them (ENOSPC) while the data folder is at its ``disk_mb``; reads never do."""
    import pyseccomp as sc

    if disk is None:
        disk = bool(spec.get("disk"))

    deny = sc.NOTIFY if notify else sc.ERRNO(errno.EPERM)
    rules = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        rules.add_rule(deny, name)
    rules.add_rule(deny, "prctl", sc.Arg(0, sc.EQ, PR_SET_DUMPABLE))
    if not spec["exec"]:
        rules.add_rule(deny, "execve")
        rules.add_rule(deny, "execveat")
    # clone3 passes its flags in memory, which seccomp cannot read: ENOSYS makes the C
    # library fall back to clone, whose flags it can.
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    if notify and disk:
        # openat2's flags are in memory too: the C library falls back to openat.
        rules.add_rule(sc.ERRNO(errno.ENOSYS), "openat2")
        for flag in WRITE_OPEN_FLAGS:  # one rule per bit: any of them (rules OR)
            rules.add_rule(sc.NOTIFY, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
            rules.add_rule(sc.NOTIFY, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
        rules.add_rule(sc.NOTIFY, "creat")
        rules.add_rule(sc.NOTIFY, "fallocate")
    if notify:  # the keeper counts processes and refuses namespaces
        for name in ("clone", "fork", "vfork"):
            rules.add_rule(sc.NOTIFY, name)
    else:
        rules.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    unix, inet, inet6 = socket.AF_UNIX, socket.AF_INET, socket.AF_INET6
    if spec["network"] == NetworkMode.NONE.value and not spec.get("daemon_port"):
        rules.add_rule(deny, "socket", sc.Arg(0, sc.NE, unix))
    else:
        rules.add_rule(deny, "socket", sc.Arg(0, sc.GT, inet6))
        for family in range(inet6):
            if family not in (unix, inet):
                rules.add_rule(deny, "socket", sc.Arg(0, sc.EQ, family))
        for family in (inet, inet6):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET):
                rules.add_rule(
                    deny, "socket", sc.Arg(0, sc.EQ, family), sc.Arg(1, sc.MASKED_EQ, 0xF, kind)
                )
    return rules


# ---------------------------------------------------------------------- prepared once


SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@functools.cache
def _seccomp_number() -> int:
    import pyseccomp as sc

    return int(sc.resolve_syscall(sc.system_arch(), "seccomp"))


def seccomp_program(spec: Mapping[str, Any], notify: bool) -> bytes:
    """:func:`seccomp_filter` compiled to classic BPF (what ``seccomp_load`` would
    hand the kernel), loadable with :func:`load_seccomp` in any process."""
    rules = seccomp_filter(spec, notify)
    with os.fdopen(os.memfd_create("cws-seccomp", os.MFD_CLOEXEC), "w+b") as out:
        rules.export_bpf(out)
        out.seek(0)
        return out.read()


def load_seccomp(program: bytes, notify: bool) -> int | None:
    """Load a compiled filter on this thread (no new privileges must be set already):
    the one ``seccomp(2)`` call ``seccomp_load`` makes. The listener's fd when
    ``notify``."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER if notify else 0
    result = _libc.syscall(
        ctypes.c_long(_seccomp_number()),
        ctypes.c_long(SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(flags),
        ctypes.byref(fprog),
    )
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {os.strerror(err)}")
    return int(result) if notify else None


@attrs.define(eq=False)
class Prepared:
    """A sandbox spec's Landlock rulesets (built, not enforced: fds, which a fork
    inherits) and compiled seccomp filter. The fork server prepares them once per spec
    (:func:`prepare`), so a plugin's restart only enforces them."""

    rulesets: list[Any]
    """Enforced in this order (the loopback ruleset, shared, then the plugin's own)."""
    witness: Witness
    program: bytes | None
    notify: bool
    own: Any = None
    """The ruleset this one owns (closed with it; the loopback one is shared)."""

    def restrict(self) -> None:
        for ruleset in self.rulesets:
            ruleset.restrict()

    def close(self) -> None:
        if self.own is not None:
            self.own.close()


_PREPARED: dict[str, Prepared] = {}
_MAX_PREPARED = 64


def _key(spec: Mapping[str, Any], notify: bool) -> str:
    return json.dumps([spec, notify], sort_keys=True)


def _build(spec: Mapping[str, Any], notify: bool, program: bool = True) -> Prepared:
    kernel = support()
    rulesets: list[Any] = []
    own: Any = None
    witness: Witness = []
    if kernel.landlock_abi >= 1:
        if spec["network"] == NetworkMode.LOOPBACK.value and kernel.landlock_abi >= 4:
            # Any port but the daemon's for connect; the plugin's own layer stacks on it.
            rulesets.append(loopback_ruleset(tuple(spec["protected_ports"])))
        own, witness = landlock_ruleset(spec)
        rulesets.append(own)
    compiled = seccomp_program(spec, notify) if program and kernel.seccomp else None
    return Prepared(rulesets, witness, compiled, notify, own)


def prepare(spec: Mapping[str, Any], notify: bool) -> Prepared:
    """Make (or check) ``spec``'s rulesets and filter here, before forking: the fork
    server's children confine themselves with them (:func:`confine`). A cached one is
    rebuilt when any path it was built from changed (an update, a new data folder)."""
    _last_cap()
    key = _key(spec, notify)
    found = _PREPARED.pop(key, None)
    if found is not None and not _still(found.witness):
        found.close()
        found = None
    if found is None:
        found = _build(spec, notify)
        while len(_PREPARED) >= _MAX_PREPARED:
            _PREPARED.pop(next(iter(_PREPARED))).close()
    _PREPARED[key] = found  # the most recent last
    return found


def keep_only(spec: Mapping[str, Any] | None, notify: bool) -> None:
    """In a child of the fork server: close what was prepared for other plugins (their
    rulesets' fds), keeping ``spec``'s."""
    key = _key(spec, notify) if spec is not None else None
    for other in [k for k in _PREPARED if k != key]:
        _PREPARED.pop(other).close()
    keep = {id(r) for p in _PREPARED.values() for r in p.rulesets}
    for ports in [p for p, r in _NET_RULESETS.items() if id(r) not in keep]:
        _NET_RULESETS.pop(ports).close()


def forget_prepared() -> None:
    """Close every prepared ruleset's fd (once enforced, or in a process that does not
    enforce them)."""
    for prepared in _PREPARED.values():
        prepared.close()
    _PREPARED.clear()
    for ruleset in _NET_RULESETS.values():
        ruleset.close()
    _NET_RULESETS.clear()


def confine(spec: Mapping[str, Any], limits: Mapping[str, int | None], keeper: Any) -> None:
    """Confine this process (the runner) before any plugin code runs; ``keeper`` is the
    socket to send seccomp's listener to (None: no keeper, or no user notification).
    Uses what the fork server prepared for ``spec``, else builds it now."""
    kernel = support()
    notify = keeper is not None
    prepared = _PREPARED.get(_key(spec, notify))
    try:
        not_dumpable()
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if kernel.root or os.geteuid() == 0:
            drop_capabilities()
        apply_limits(limits)
        if prepared is None:
            prepared = _build(spec, notify)
        prepared.restrict()
        if prepared.program is not None:
            listener = load_seccomp(prepared.program, notify)
            if listener is not None:
                socket.send_fds(keeper, [b"listener"], [listener])
                os.close(listener)
    finally:
        if prepared is not None:
            prepared.close()
        forget_prepared()
    if keeper is not None:
        keeper.close()
    if spec.get("data"):
        os.environ["TMPDIR"] = spec["data"]
    if spec["network"] != NetworkMode.NONE.value:
        os.environ["RES_OPTIONS"] = "use-vc"  # DNS over TCP: UDP is refused

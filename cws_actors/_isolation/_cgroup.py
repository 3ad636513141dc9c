"""A cgroup per plugin run: memory, CPU rate and processes limited for the plugin's
processes together, which rlimits (per process) cannot do.

Backends, first that works:

- **v2 delegated**: the daemon's own cgroup v2 (``0::/path`` in ``/proc/self/cgroup``)
  is writable and offers the ``memory``, ``cpu`` and ``pids`` controllers (systemd's
  ``Delegate=yes``). Because of cgroup v2's "no internal processes" rule the daemon
  first moves itself (and its children) into a leaf ``<its cgroup>/daemon``, as
  delegated services do, then enables the controllers below its cgroup.
- **v1**: the daemon can write its own cgroup in the ``memory``, ``cpu`` and ``pids``
  v1 hierarchies (a hybrid or legacy layout, as root).
- **none**: the report says so, and the per-process rlimits and the keeper's process
  count are what hold.

Layout, per controller hierarchy: ``<the daemon's cgroup>/cws-<home tag>/`` for one
daemon home (a daemon cleans up its own leftovers there at start: a killed daemon
never removed them), and in it ``cws-<plugin>-<keeper pid>`` per run: the keeper moves
itself in before it forks the plugin's init, so every process of the plugin is born
inside; its files say ``memory.max`` / ``memory.limit_in_bytes`` (``memory_mb``),
``cpu.max`` / ``cpu.cfs_quota_us`` (``cpu_percent``) and ``pids.max``
(``processes`` + the keeper and the init). The daemon removes it when the run is over
(``rmdir`` once it is empty).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

CONTROLLERS = ("memory", "cpu", "pids")
PERIOD_US = 100_000
"""The CPU bandwidth period: ``cpu_percent`` of one CPU is that share of each 100 ms."""
OVERHEAD_TASKS = 2
"""Tasks in a run's cgroup that are not the plugin's: its init, and its keeper for the
moment between forking the init and going back to the daemon's cgroup (the init may
fork the runner meanwhile). The keeper runs none of the plugin's code, and a dying
keeper inside its run's cgroup made restarts slower."""


@attrs.frozen
class Probe:
    """What this machine offers, found without changing anything."""

    kind: str | None
    """``v2`` or ``v1``; None: no usable cgroup (``problem`` says why)."""
    bases: Mapping[str, str]
    """Controller -> the daemon's own cgroup directory in that controller's hierarchy."""
    problem: str


@attrs.frozen
class Cgroups:
    """This daemon's cgroups for plugin runs, ready (see :func:`prepare`)."""

    kind: str
    parents: Mapping[str, str]
    """Controller -> the directory holding this daemon's run cgroups."""
    homes: Mapping[str, str] = attrs.field(factory=dict)
    """Controller -> the daemon's own directory (where a keeper goes back to)."""

    @property
    def description(self) -> str:
        return describe(self.kind, self.parents)

    def spec(self) -> dict[str, Any]:
        """What a keeper needs (JSON) to make its run's cgroup and leave it to the run."""
        return {"kind": self.kind, "parents": dict(self.parents), "homes": dict(self.homes)}

    def leaves(self, name: str, pid: int) -> list[Path]:
        """The directories of the run of ``name`` whose keeper is ``pid``."""
        return [Path(parent) / leaf_name(name, pid) for parent in _unique(self.parents)]

    def leaf(self, controller: str, name: str, pid: int) -> Path | None:
        parent = self.parents.get(controller)
        return Path(parent) / leaf_name(name, pid) if parent else None

    def remove(self, name: str, pid: int) -> bool:
        """Remove the run's cgroups; False while one still holds a dying process."""
        return all(_rmdir(leaf) for leaf in self.leaves(name, pid))

    def close(self) -> None:
        """At the daemon's exit: what is left of its runs, then its own directories."""
        for parent in _unique(self.parents):
            _clean(Path(parent))
            with contextlib.suppress(OSError):
                os.rmdir(parent)


def describe(kind: str, parents: Mapping[str, str]) -> str:
    """``cgroup v1`` or ``cgroup v2 delegated``: the report adds the controller."""
    return "cgroup v2 delegated" if kind == "v2" else "cgroup v1"


def leaf_name(name: str, pid: int) -> str:
    return f"cws-{name}-{pid}"


def _unique(parents: Mapping[str, str]) -> list[str]:
    return sorted(set(parents.values()))


# ---------------------------------------------------------------------- probing


def probe() -> Probe:
    """The backend this process could use (v2 first), without touching anything."""
    mounts = _mounts()
    own = _own_cgroups()
    v2_problem = _v2(mounts, own)
    if isinstance(v2_problem, Probe):
        return v2_problem
    bases: dict[str, str] = {}
    missing: list[str] = []
    for controller in CONTROLLERS:
        found = _v1_dir(controller, mounts, own)
        if found is not None and os.access(found, os.W_OK):
            bases[controller] = found
        else:
            missing.append(controller)
    if not missing:
        return Probe("v1", bases, v2_problem)
    why = f"{v2_problem}; no writable cgroup v1 hierarchy for {', '.join(missing)}"
    return Probe(None, {}, why)


_Mount = tuple[str, str, str, set[str]]


def _mounts() -> list[_Mount]:
    """(root inside the hierarchy, mount point, type, super options) of cgroup mounts."""
    found = []
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        kind = fields[sep + 1]
        if kind in ("cgroup", "cgroup2"):
            found.append((fields[3], fields[4], kind, set(fields[sep + 3].split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """Controller (``""`` for v2) -> this process's cgroup path."""
    own: dict[str, str] = {}
    for line in _read("/proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own[""] = parts[2]
        for controller in parts[1].split(","):
            if controller:
                own[controller] = parts[2]
    return own


def _join(mount: str, root: str, path: str) -> str:
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return os.path.normpath(mount + "/" + path.lstrip("/"))


def _v2(mounts: list[_Mount], own: dict[str, str]) -> Probe | str:
    """A v2 probe when usable, else why not."""
    unified = [m for m in mounts if m[2] == "cgroup2"]
    if not unified:
        return "no cgroup v2 is mounted"
    if "" not in own:
        return "this process is in no cgroup v2"
    root, mount, _, _ = unified[0]
    here = _join(mount, root, own[""])
    offered = set(_read(f"{here}/cgroup.controllers").split())
    missing = [c for c in CONTROLLERS if c not in offered]
    if missing:
        hybrid = (
            " (bound to cgroup v1 hierarchies)" if any(m[2] == "cgroup" for m in mounts) else ""
        )
        return f"the daemon's cgroup v2 {here} lacks the {', '.join(missing)} controllers{hybrid}"
    if not (os.access(here, os.W_OK) and os.access(f"{here}/cgroup.subtree_control", os.W_OK)):
        return f"the daemon's cgroup v2 {here} is not delegated to it (not writable)"
    return Probe("v2", {c: here for c in CONTROLLERS}, "")


def _v1_dir(
    controller: str, mounts: list[tuple[str, str, str, set[str]]], own: dict[str, str]
) -> str | None:
    for root, mount, kind, options in mounts:
        if kind == "cgroup" and controller in options and controller in own:
            found = _join(mount, root, own[controller])
            return found if os.path.isdir(found) else None
    return None


# ---------------------------------------------------------------------- the daemon's side


def home_tag(home: Path) -> str:
    return "cws-" + hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]


def prepare(home: Path, found: Probe | None = None) -> tuple[Cgroups | None, str]:
    """Make this daemon's directories (removing its leftovers); the backend, or None
    and why. Called once at start, before the fork server exists (v2: the daemon moves
    itself into a leaf first, with its children)."""
    found = found or probe()
    if found.kind is None:
        return None, found.problem
    tag = home_tag(home)
    try:
        if found.kind == "v2":
            here = found.bases["memory"]
            own = _delegate(here)
            parent = os.path.join(here, tag)
            os.makedirs(parent, exist_ok=True)
            _enable(parent)
            parents = {c: parent for c in CONTROLLERS}
            homes = {c: own for c in CONTROLLERS}
        else:
            parents = {c: os.path.join(base, tag) for c, base in found.bases.items()}
            homes = dict(found.bases)
            for parent in _unique(parents):
                os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        return None, f"cannot set up the {found.kind} cgroups: {exc}"
    for parent in _unique(parents):
        _clean(Path(parent))
    return Cgroups(found.kind, parents, homes), ""


def _delegate(here: str) -> str:
    """Enable the controllers below ``here``: it must hold no process (the daemon's
    cgroup v2 root excepted), so the daemon and its children move to ``here/daemon``.
    The daemon's directory."""
    enabled = set(_read(f"{here}/cgroup.subtree_control").split())
    if all(c in enabled for c in CONTROLLERS):
        return here  # the root: it may hold processes
    me = os.getpid()
    leaf = os.path.join(here, "daemon")
    os.makedirs(leaf, exist_ok=True)
    for line in _read(f"{here}/cgroup.procs").split():
        pid = int(line)
        if pid == me or _parent(pid) == me:
            with contextlib.suppress(ProcessLookupError):
                _write(f"{leaf}/cgroup.procs", str(pid))
    try:
        _enable(here)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise OSError(
                exc.errno,
                f"{here} holds processes other than the daemon's (give the daemon a"
                " cgroup of its own: systemd Delegate=yes)",
            ) from None
        raise
    return leaf


def _enable(here: str) -> None:
    _write(f"{here}/cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS))


def _parent(pid: int) -> int | None:
    try:
        return int(_read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return None


def _clean(parent: Path) -> None:
    """End what is left in the run cgroups under ``parent`` (a killed daemon's runs),
    then remove them."""
    try:
        leaves = [p for p in parent.iterdir() if p.is_dir() and p.name.startswith("cws-")]
    except OSError:
        return
    for leaf in leaves:
        for _ in range(100):
            if _rmdir(leaf):
                break
            if (leaf / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    _write(str(leaf / "cgroup.kill"), "1")
            for pid in _read(str(leaf / "cgroup.procs")).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.01)  # the kernel ends them in microseconds


def _rmdir(leaf: Path) -> bool:
    try:
        os.rmdir(leaf)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise
    return True


def usage(cgroups: Cgroups, name: str, pid: int) -> dict[str, Any]:
    """What the kernel counts for the run: memory, CPU throttling, OOM kills."""
    found: dict[str, Any] = {"cgroup": cgroups.description}
    memory = cgroups.leaf("memory", name, pid)
    cpu = cgroups.leaf("cpu", name, pid)
    if memory is not None:
        current = _read(
            str(memory / ("memory.current" if cgroups.kind == "v2" else "memory.usage_in_bytes"))
        )
        if current.isdigit():
            found["cgroup_memory_bytes"] = int(current)
        peak = _read(
            str(memory / ("memory.peak" if cgroups.kind == "v2" else "memory.max_usage_in_bytes"))
        )
        if peak.isdigit():
            found["cgroup_memory_peak_bytes"] = int(peak)
        events = _keyed(
            str(memory / ("memory.events" if cgroups.kind == "v2" else "memory.oom_control"))
        )
        if "oom_kill" in events:
            found["cgroup_oom_kills"] = events["oom_kill"]
    if cpu is not None:
        stat = _keyed(str(cpu / "cpu.stat"))
        if "nr_throttled" in stat:
            found["cgroup_cpu_throttled"] = stat["nr_throttled"]
    return found


def _keyed(path: str) -> dict[str, int]:
    found = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            found[key] = int(value)
    return found


# ---------------------------------------------------------------------- the keeper's side


def enter(spec: Mapping[str, Any], name: str, limits: Mapping[str, int | None]) -> list[str]:
    """Make the run's cgroup for this process (the keeper), write its limits and move
    this process in: what it forks next (the run's init) is born inside, and the keeper
    then goes back (:func:`leave`). The directories made."""
    pid = os.getpid()
    kind, parents = spec["kind"], spec["parents"]
    made = []
    for parent in _unique(parents):
        path = os.path.join(parent, leaf_name(name, pid))
        os.mkdir(path)
        made.append(path)
    for controller, file, value in limit_files(kind, limits):
        parent = parents.get(controller)
        if parent is None:
            continue
        path = os.path.join(parent, leaf_name(name, pid), file)
        if file == "memory.memsw.limit_in_bytes" and not os.path.exists(path):
            continue  # no swap accounting: nothing to close
        if file == "memory.swap.max" and not os.path.exists(path):
            continue
        _write(path, value)
    for path in made:
        _write(os.path.join(path, "cgroup.procs"), str(pid))
    return made


def leave(spec: Mapping[str, Any]) -> None:
    """Move this process (the keeper, once it forked the run's init) back to the
    daemon's cgroups: it runs none of the plugin's code, and its end (a SIGKILL, say)
    is then no slower than an unsandboxed plugin's."""
    pid = str(os.getpid())
    for home in _unique(spec.get("homes", {})):
        _write(os.path.join(home, "cgroup.procs"), pid)


def limit_files(kind: str, limits: Mapping[str, int | None]) -> list[tuple[str, str, str]]:
    """(controller, file, value) for ``limits`` in a ``kind`` cgroup."""
    files: list[tuple[str, str, str]] = []
    memory, cpu, processes = (
        limits.get("memory_mb"),
        limits.get("cpu_percent"),
        limits.get("processes"),
    )
    if memory:
        size = str(int(memory) * 1024 * 1024)
        if kind == "v2":
            files += [("memory", "memory.max", size), ("memory", "memory.swap.max", "0")]
        else:  # memsw after the limit: it may never be below it
            files += [("memory", "memory.limit_in_bytes", size),
                      ("memory", "memory.memsw.limit_in_bytes", size)]  # fmt: skip
    if cpu:
        quota = max(1000, int(cpu) * PERIOD_US // 100)
        if kind == "v2":
            files.append(("cpu", "cpu.max", f"{quota} {PERIOD_US}"))
        else:
            files += [("cpu", "cpu.cfs_period_us", str(PERIOD_US)),
                      ("cpu", "cpu.cfs_quota_us", str(quota))]  # fmt: skip
    if processes:
        files.append(("pids", "pids.max", str(int(processes) + OVERHEAD_TASKS)))
    return files


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return ""


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)

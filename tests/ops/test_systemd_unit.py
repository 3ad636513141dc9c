"""``examples/systemd/cws.service`` against systemd's own tools and the kernel: the
exposure score of ``systemd-analyze security`` (4.0 or better, as a system and as a user
unit), a clean ``systemd-analyze verify``, and a real daemon with a subprocess plugin
that works under the unit's MemoryDenyWriteExecute= and makes no system call its
SystemCallFilter= refuses.

No systemd runs here to start the unit, so its two restrictions that could break the
daemon are applied the way the kernel offers them: memory-deny-write-execute with
``prctl(PR_SET_MDWE)`` (tests/ops/_mdwe.py; systemd 256 uses the same prctl), and the
system-call filter by tracing every call the daemon and its plugin process make
(``strace -f``) and checking each against the filter's set as ``systemd-analyze
syscall-filter`` expands it. The same trace shows that the daemon writes nowhere but
CWS_HOME (ProtectSystem=strict, ReadWritePaths=) and opens no socket family that
RestrictAddressFamilies= leaves out."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from api._home_lock import LOCK_NAME

from ..cli._cws import CWS, TIMEOUT, Lines, close_pipes, cws, cws_env, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "examples" / "systemd" / "cws.service"
MDWE = Path(__file__).with_name("_mdwe.py")
THRESHOLD = 4.0
"""The worst exposure score the unit may have (Debian's prometheus.service has 4.0)."""


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"this test needs {name}: `apt-get install {package}`")
    return found


@pytest.fixture
def unit_env(tmp_path: Path) -> dict[str, str]:
    """A HOME where the unit's ExecStart= (%h/.local/bin/cws) is the real ``cws``, and a
    runtime folder for the user manager's view: verify checks that the program exists."""
    home = tmp_path / "user"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "cws").symlink_to(CWS)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    return {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}


def systemd_analyze(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("systemd-analyze", "systemd"), *args],
        capture_output=True, text=True, env=env, check=False, timeout=TIMEOUT,
    )  # fmt: skip


@pytest.mark.parametrize("manager", ["system", "user"])
def test_the_unit_scores_4_or_better(unit_env: dict[str, str], manager: str) -> None:
    scope = ["--user"] if manager == "user" else []
    threshold = f"--threshold={THRESHOLD * 10:.0f}"  # on systemd's scale of 0 to 100
    rated = systemd_analyze(*scope, "security", "--offline=true", threshold, str(UNIT),
                            env=unit_env)  # fmt: skip
    found = re.search(r"Overall exposure level for cws\.service: (\d+\.\d+) (\w+)", rated.stdout)
    assert found is not None, rated.stdout + rated.stderr
    assert float(found[1]) <= THRESHOLD, rated.stdout
    assert rated.returncode == 0, rated.stdout + rated.stderr  # under --threshold


@pytest.mark.parametrize("manager", ["system", "user"])
def test_the_unit_verifies_cleanly(unit_env: dict[str, str], manager: str) -> None:
    scope = ["--user"] if manager == "user" else []
    verified = systemd_analyze(*scope, "verify", str(UNIT), env=unit_env)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout + verified.stderr == ""


def unit_settings() -> dict[str, list[str]]:
    """The [Service] settings, each with every value it was given."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def syscall_groups() -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``'s groups: ``@name`` -> its members (system
    calls and other groups), as this systemd defines them."""
    listing = systemd_analyze("syscall-filter", env=dict(os.environ)).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and current is not None:
            member = line.strip()
            if member and not member.startswith("#"):
                current.append(member)
        else:
            current = None
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> Iterator[str]:
    if not name.startswith("@"):
        yield name
        return
    for member in groups[name]:
        yield from expand(member, groups)


def allowed_syscalls() -> set[str]:
    """What the unit's SystemCallFilter= lines let through: the first list allows, each
    ``~`` list then refuses (systemd's order of evaluation)."""
    groups = syscall_groups()
    allowed: set[str] | None = None
    for value in unit_settings()["SystemCallFilter"]:
        deny = value.startswith("~")
        names = {call for item in value.lstrip("~").split() for call in expand(item, groups)}
        if deny:
            assert allowed is not None, "a deny list first would allow everything else"
            allowed -= names
        else:
            allowed = names if allowed is None else allowed | names
    assert allowed is not None
    return allowed


PLUGIN = """
import ctypes
import mmap
import os

from cws_actors import (
    APIEndpointSpec, APIResult, Capabilities, CLICommandSpec, CommandResult, Plugin,
)

PR_GET_MDWE = 66


class ProbePlugin(Plugin):
    capabilities = Capabilities(
        cli_commands=[CLICommandSpec("probe", handler="probe", short="the process's limits")],
        api_endpoints=[APIEndpointSpec("/api/v1/probe", handler="http", protected=False)],
    )

    async def probe(self, args):
        mdwe = ctypes.CDLL(None, use_errno=True).prctl(PR_GET_MDWE, 0, 0, 0, 0)
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            wx = "allowed"
        except PermissionError:
            wx = "refused"
        return CommandResult(f"pid={os.getpid()} mdwe={mdwe} wx={wx}")

    async def http(self, request):
        return APIResult(200, {"pid": os.getpid()})
"""

MANIFEST = """
[plugin]
name = "probe"
version = "1.0.0"
api_version = "1.0"
isolation = "subprocess"
entry = "probe_plugin:ProbePlugin"

[limits]
memory_mb = 300
"""


def write_probe_plugin(folder: Path) -> None:
    plugin = folder / "probe"
    plugin.mkdir(parents=True)
    (plugin / "plugin.toml").write_text(textwrap.dedent(MANIFEST))
    (plugin / "probe_plugin.py").write_text(PLUGIN)


def traced_calls(trace: Path) -> set[str]:
    """Every system call name in an ``strace -f`` log (resumed calls are named at their start)."""
    calls = set()
    for line in trace.read_text(errors="replace").splitlines():
        found = re.match(r"\d+\s+([a-z0-9_]+)\(", line)
        if found:
            calls.add(found[1])
    return calls


WRITES = re.compile(
    r'\d+\s+(?:openat\(\w+, "(?P<opened>[^"]*)", [^)]*(?:O_WRONLY|O_RDWR|O_CREAT)'
    r"|(?:mkdir|mkdirat|rename|renameat2?|unlink|unlinkat|chmod|fchmodat|truncate)\("
    r'(?:\w+, )?"(?P<changed>[^"]*)")'
)


def written_paths(trace: Path) -> set[str]:
    """Every path the traced processes opened for writing, created, renamed, removed or
    changed the mode of."""
    paths = set()
    for line in trace.read_text(errors="replace").splitlines():
        found = WRITES.match(line)
        if found:
            paths.add(found["opened"] or found["changed"])
    return paths


def socket_families(trace: Path) -> set[str]:
    return set(re.findall(r"\d+\s+socket\((AF_\w+)", trace.read_text(errors="replace")))


def daemon_pid(home: Path) -> int:
    """The pid the daemon announces in its home's lock file (strace's child is the
    wrapper, exec'd into cws: the same process)."""
    return int(json.loads((home / LOCK_NAME).read_text())["pid"])


async def test_a_subprocess_plugin_works_under_the_units_restrictions(tmp_path: Path) -> None:
    settings = unit_settings()
    assert settings["MemoryDenyWriteExecute"] == ["yes"]
    home = tmp_path / "home"
    write_probe_plugin(home / "plugins")
    trace = tmp_path / "strace.log"
    log = tmp_path / "daemon.log"
    # The fork server on (the default), so that its forks are traced and held too.
    env = cws_env(home, CWS_FORK_SERVER="true")
    created = await cws("token", "create", "--scope", "admin", "--name", "ops", env=env)
    assert created.code == 0, created.err
    bearer = {"Authorization": f"Bearer {created.out.strip()}"}
    daemon = [CWS, "daemon", "--port", "0", "--home", str(home)]
    command = [tool("strace", "strace"), "-f", "-qq", "-o", str(trace), sys.executable,
               str(MDWE), *daemon]  # fmt: skip
    with log.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=log_file, env=env
        )
    try:
        assert process.stdout is not None
        with trio.fail_after(TIMEOUT * 2):  # strace slows every call
            url = await Lines(process.stdout).next()
            await wait_until_ready(url)
            pid = daemon_pid(home)
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, headers=bearer) as http:
                ran = await http.post("/api/v1/cli/execute", json={"args": ["probe"]})
                plugin_pid = (await http.get("/api/v1/probe")).json()["pid"]
                assert (await http.get("/metrics")).status_code == 200
            os.kill(pid, signal.SIGHUP)  # ExecReload=
            while "reloaded" not in log.read_text():  # noqa: ASYNC110 - another process
                await trio.sleep(0.05)
            os.kill(pid, signal.SIGTERM)  # KillSignal=
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        await close_pipes(process)
    assert code == 0, log.read_text()
    # The plugin ran in a process of its own, held to MDWE (inherited from the daemon),
    # which the kernel enforces there: a writable and executable mapping is refused.
    assert ran.json() == {"output": f"pid={plugin_pid} mdwe=1 wx=refused", "exit_code": 0}
    assert plugin_pid != pid

    # ProtectSystem=strict, ReadWritePaths=CWS_HOME, PrivateDevices=, PrivateTmp=:
    # nothing is written anywhere else but the plugin runs' cgroups (Delegate=,
    # ProtectControlGroups=no).
    writable = (str(home), "/dev/null", "/tmp/", "/sys/fs/cgroup/")
    outside = {path for path in written_paths(trace) if not path.startswith(writable)}
    assert not outside, f"the daemon writes outside CWS_HOME: {sorted(outside)}"
    (families,) = settings["RestrictAddressFamilies"]
    assert socket_families(trace) <= set(families.split()), socket_families(trace)

    calls = traced_calls(trace)
    assert {"execve", "clone", "socket", "bind", "epoll_wait"} & calls  # it did trace
    refused = calls - allowed_syscalls()
    if os.geteuid() == 0:
        # SQLite gives the journal and WAL files it creates its database's owner with
        # fchown, only when it runs as root (its robust_open checks geteuid() == 0), and
        # ignores the result. The unit runs the daemon as its user, where it never calls it.
        refused -= {"fchown"}
    assert not refused, f"SystemCallFilter= would refuse {sorted(refused)}"

"""The sandbox's honesty: what this machine enforces per control, shown in a plugin's
status, and a plugin needing a control the machine lacks refused unless the operator
allows weaker sandboxes."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio

from cws_actors import Isolation, PluginMetadata, PluginRefused, ResourceLimits
from cws_actors._isolation._kernel import KernelSupport, controls, weaker

from ._fixtures import code_for, write_plugin
from .test_host import TIMEOUT, opened

NOTHING = KernelSupport(
    landlock_abi=0, seccomp=False, user_notification=False, pid_namespace=None,
    pid_namespace_problem="this kernel has no PID namespaces", cgroup=None,
    cgroup_problem="/sys/fs/cgroup is not a cgroup v2 mount", root=False,
)  # fmt: skip


def test_a_kernel_without_sandboxing_says_not_available_and_why() -> None:
    metadata = PluginMetadata("x", "1", isolation=Isolation.SUBPROCESS)
    report = controls(metadata, NOTHING)
    assert report["filesystem"] == "not available (Landlock is off or missing: ABI 0)"
    assert report["network"].startswith("not available (seccomp")
    assert report["process_group"].startswith("partially enforced (no PID namespace")
    assert "filesystem: not available (Landlock is off or missing: ABI 0)" in weaker(report)


def test_limits_report_per_process_and_cpu_percent_without_a_cgroup() -> None:
    limits = ResourceLimits(memory_mb=64, cpu_percent=50, disk_mb=5)
    report = controls(PluginMetadata("x", "1", limits=limits), NOTHING)
    assert report["memory"] == (
        "partially enforced (RLIMIT_AS per process only: /sys/fs/cgroup is not a cgroup v2 mount)"
    )
    assert report["cpu_percent"] == (
        "not available (needs a cgroup: /sys/fs/cgroup is not a cgroup v2 mount)"
    )
    assert report["disk"].startswith("partially enforced (RLIMIT_FSIZE caps each file")
    assert "cpu_percent" not in controls(PluginMetadata("x", "1"), NOTHING)


def test_limits_report_the_cgroup_backend_that_holds_them() -> None:
    limits = ResourceLimits(memory_mb=64, cpu_percent=50, processes=8)
    v1 = attrs.evolve(NOTHING, cgroup="cgroup v1", cgroup_problem="")
    report = controls(PluginMetadata("x", "1", limits=limits), v1)
    assert report["memory"] == (
        "enforced (cgroup v1 memory controller: its processes together; RLIMIT_AS per process too)"
    )
    assert report["cpu_percent"] == "enforced (cgroup v1 cpu controller: a CPU bandwidth quota)"
    assert report["processes"] == "enforced (cgroup v1 pids controller)"  # no seccomp notify
    v2 = attrs.evolve(v1, cgroup="cgroup v2 delegated", cgroup_controllers=frozenset({"pids"}))
    report = controls(PluginMetadata("x", "1", limits=limits), v2)
    assert report["memory"].startswith("partially enforced (RLIMIT_AS per process only")
    assert report["cpu_percent"].startswith("not available (needs a cgroup")


async def test_a_plugin_needing_a_missing_control_is_refused_unless_allowed(
    tmp_path: Path,
) -> None:
    """cpu_percent without a cgroup (turned off here, so that every machine shows it)."""
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess",
                 limits="memory_mb = 200\ncpu_percent = 50")  # fmt: skip
    with trio.fail_after(TIMEOUT):
        async with opened(home, cgroups=False) as host:
            with pytest.raises(PluginRefused, match=r"cpu_percent: not available.*allow_weaker"):
                await host.load("echo")
        async with opened(home, cgroups=False, allow_weaker_sandbox=True) as host:
            status = await host.load("echo")
            assert status.state == "running"
            assert status.sandbox.controls is not None
            assert status.sandbox.controls["cpu_percent"] == (
                "not available (needs a cgroup: turned off in the host's configuration)"
            )
            assert (await host.execute_cli(["echo", "--text", "x"])).output == "hello x"
        async with opened(home) as host:  # where the machine has one, it is used
            if host.cgroups is None:
                with pytest.raises(PluginRefused, match=r"cpu_percent: not available"):
                    await host.load("echo")
            else:
                status = await host.load("echo")
                assert status.sandbox.controls is not None
                assert status.sandbox.controls["cpu_percent"].startswith("enforced (cgroup")


async def test_status_shows_the_report_and_the_plugins_usage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess",
                 limits="memory_mb = 200\ndisk_mb = 4\nprocesses = 16")  # fmt: skip
    # In the daemon's process (the tests' host allows it by name): no sandbox to report.
    write_plugin(home / "plugins", "good", code=code_for("good"))
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            status = await host.load("echo")
            assert status.sandbox.controls == controls(
                host._loaded["echo"].launch.metadata, host.kernel
            )
            assert (await host.load("good")).sandbox.controls is None
            usage = await host.plugin_status("echo")
            assert usage["processes"] >= 3  # keeper, init, runner
            assert usage["data_bytes"] >= 0
            assert usage["memory_rss_kb"] > 0

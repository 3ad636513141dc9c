"""What the plugin host logs: each management step at INFO (logger ``cws.plugins``, the
plugin in the record's fields), a plugin that cannot load at ERROR, and, for a plugin
process killed by SIGKILL, one WARNING for the crash (with its reason) and one for the
restart (with its backoff), from its supervisor."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest
import trio

from cws_actors import PluginRefused

from ._fixtures import write_plugin
from .test_host import TIMEOUT, opened, wait_until
from .test_subprocess import plugin_pid, restarted


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger]


async def test_each_management_step_is_one_info_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    home = tmp_path / "home"
    source = write_plugin(tmp_path / "src", "echo")
    newer = write_plugin(tmp_path / "newer", "echo", version="1.1.0")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.install(source)
            await host.load("echo")
            await host.update("echo", newer)
            await host.disable("echo")
            await host.enable("echo")
            await host.unload("echo", force=True)
            await host.remove("echo")
    assert lines(caplog, "cws.plugins") == [
        (logging.INFO, f"installed plugin echo 1.0.0 from {source}"),
        (logging.INFO, "loaded plugin echo 1.0.0 (in_process, from user)"),
        (logging.INFO, "updated plugin echo from 1.0.0 to 1.1.0"),
        (logging.INFO, "unloaded plugin echo"),
        (logging.INFO, "disabled plugin echo"),
        (logging.INFO, "enabled plugin echo"),
        (logging.INFO, "loaded plugin echo 1.1.0 (in_process, from user)"),
        (logging.INFO, "unloaded plugin echo (forced: its process was killed)"),
        (logging.INFO, "removed plugin echo"),
    ]
    plugin_records = [r for r in caplog.records if r.name == "cws.plugins"]
    assert {r.plugin for r in plugin_records} == {"echo"}  # type: ignore[attr-defined]
    assert plugin_records[2].previous == "1.0.0"  # type: ignore[attr-defined]
    # An in-process plugin that stops on request is not a crash.
    assert lines(caplog, "supervision") == []


async def test_a_plugin_that_cannot_load_is_an_error_and_a_disabled_one_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cws.plugins")
    home = tmp_path / "home"
    write_plugin(home / "plugins", "future", api_version="1.9")
    write_plugin(home / "plugins", "echo")
    with trio.fail_after(TIMEOUT):
        async with opened(home) as host:
            await host.disable("echo")
            caplog.clear()
            results = await host.load_all()
            with pytest.raises(PluginRefused):
                await host.load("echo")  # disabled: refused, and the operator's own doing
    assert results["echo"] == "disabled"
    logged = lines(caplog, "cws.plugins")
    assert logged[0] == (logging.INFO, "plugin echo is disabled: not loading it")
    (error,) = [message for level, message in logged if level >= logging.ERROR]
    assert error.startswith("plugin 'future' refused: ")
    assert error == results["future"]  # what load_all reports is what the log says
    assert len(logged) == 2  # one line each, however the load was asked for


async def test_a_plugin_process_killed_by_sigkill_logs_its_crash_and_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The bug that started issue 14: plugins SIGKILLed and restarted with no log line."""
    caplog.set_level(logging.WARNING)
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    with trio.fail_after(TIMEOUT):
        async with opened(home, fork_server=False) as host:
            await host.load("echo")
            pid = plugin_pid(host)
            os.kill(pid, signal.SIGKILL)  # our own child: the plugin's process
            await wait_until(lambda: restarted(host, pid))
            status = await host.status("echo")
    crashes = [r for r in caplog.records if r.name == "supervision"]
    assert [r.levelno for r in crashes] == [logging.WARNING, logging.WARNING]
    crash, restart = crashes
    assert crash.getMessage().startswith("/plugins/echo crashed: exception: PluginCrashed: ")
    assert "process was killed by SIGKILL" in crash.reason  # type: ignore[attr-defined]
    assert restart.getMessage().startswith("restarting /plugins/echo in ")
    assert restart.backoff >= 0  # type: ignore[attr-defined]
    assert restart.restarts == 1 == status.restarts  # type: ignore[attr-defined]
    assert status.last_restart_at is not None

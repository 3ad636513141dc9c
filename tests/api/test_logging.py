"""The daemon's log: the text and JSON formats, the hints only the daemon can give (the
route that clears a quarantine), its settings, and ``last_restart_at`` in the API."""

from __future__ import annotations

import datetime
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from api import load_config
from api._config import ConfigError
from api._logging import JSONFormatter, TextFormatter, daemon_logging

from ..plugins._fixtures import write_plugin
from ..plugins.test_host import wait_until
from ._daemon import TIMEOUT, client, running_daemon, token


def record(message: str, *args: Any, level: int = logging.WARNING, **fields: Any) -> Any:
    made = logging.LogRecord("supervision", level, __file__, 1, message, args, None)
    made.__dict__.update(fields)
    return made


def test_a_json_line_has_time_level_logger_event_and_fields() -> None:
    line = JSONFormatter().format(
        record("restarting %s in %.2f s", "/plugins/aws", 0.5, backoff=0.5, group=["aws"])
    )
    parsed = json.loads(line)
    assert parsed.keys() == {"time", "level", "logger", "event", "fields"}
    assert parsed["level"] == "WARNING"
    assert parsed["logger"] == "supervision"
    assert parsed["event"] == "restarting /plugins/aws in 0.50 s"
    assert parsed["fields"] == {"backoff": 0.5, "group": ["aws"]}
    stamp = datetime.datetime.fromisoformat(parsed["time"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert parsed["time"].endswith("Z")


def test_a_json_line_carries_the_traceback_and_survives_odd_values() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        made = logging.LogRecord("cws.http", logging.ERROR, __file__, 1, "boom", (), None)
        made.exc_info = sys.exc_info()
    made.path = Path("/tmp/x")
    parsed = json.loads(JSONFormatter().format(made))
    assert "ValueError: bad" in parsed["exception"]
    assert parsed["fields"] == {"path": "/tmp/x"}


def test_text_shows_the_fields_the_message_does_not_say() -> None:
    text = TextFormatter().format(
        record(
            "/plugins/aws crashed: %s",
            "exception: PluginCrashed: killed",
            supervisor="/plugins",
            child="aws",
            reason="exception: PluginCrashed: killed",
            restarts=3,
            clear_with="POST /x or cws y",
            nothing=None,
        )
    )
    assert text.endswith(
        " WARNING supervision: /plugins/aws crashed: exception: PluginCrashed: killed"
        ' restarts=3 clear_with="POST /x or cws y"'
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": "LOUD"}, "log level must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'"),
        ({"log_format": "xml"}, "log format must be one of text, json, got 'xml'"),
    ],
)
def test_daemon_logging_refuses_what_it_does_not_know(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message), daemon_logging(**kwargs):
        pass


def test_the_log_settings_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    assert (load_config(None, env={}).log_level, load_config(None, env={}).log_format) == (
        "INFO",
        "text",
    )
    assert load_config(None, env={}).access_log is False
    config_file = tmp_path / "cws.toml"
    config_file.write_text('[daemon]\nlog_level = "WARNING"\nlog_format = "json"\n')
    config = load_config(config_file, env={"CWS_ACCESS_LOG": "true"})
    assert (config.log_level, config.log_format, config.access_log) == ("WARNING", "json", True)
    assert load_config(config_file, env={}, log_level="debug").log_level == "DEBUG"  # a flag
    with pytest.raises(ConfigError, match='CWS_LOG_FORMAT must be one of text, json, got "xml"'):
        load_config(None, env={"CWS_LOG_FORMAT": "xml"})
    config_file.write_text('[daemon]\nlog_level = "chatty"\n')
    with pytest.raises(ConfigError, match="log_level must be one of"):
        load_config(config_file, env={})


def test_daemon_logging_filters_by_level_and_puts_things_back() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    with daemon_logging(level="WARNING", log_format="json", stream=stream):
        logging.getLogger("cws.plugins").info("loaded plugin x")
        logging.getLogger("cws.plugins").warning("the fork server exited", extra={"code": -9})
    logging.getLogger("cws.plugins").warning("after the block: not ours")
    assert (root.level, list(root.handlers)) == before
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["event"] == "the fork server exited"
    assert json.loads(line)["fields"] == {"code": -9}


async def test_a_quarantine_names_the_route_and_the_command_that_clear_it(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo")
    stream = io.StringIO()
    with trio.fail_after(TIMEOUT), daemon_logging(log_format="json", stream=stream):
        async with running_daemon(home, max_restarts=1, restart_period=60.0) as daemon:
            assert (await daemon.host.execute_cli(["echo", "crash"])).exit_code == 1

            async def back() -> bool:
                status = await daemon.host.status("echo")
                return status.ready and status.restarts == 1

            await wait_until(back)
            assert (await daemon.host.execute_cli(["echo", "crash"])).exit_code == 1

            async def quarantined() -> bool:
                return (await daemon.host.status("echo")).state == "quarantined"

            await wait_until(quarantined)
            reader = await token(daemon, "plugins:read")
            async with client(daemon, reader) as http:
                plugin = (await http.get("/api/v1/plugins/echo")).json()
                actor = (await http.get("/api/v1/actors/plugins/echo")).json()
                other = (await http.get("/api/v1/actors/plugins")).json()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ours = [line for line in lines if line["logger"] in ("supervision", "cws.plugins")]
    events = [(line["level"], line["event"].split(":")[0]) for line in ours]
    assert events[:5] == [
        ("INFO", "loaded plugin echo 1.0.0 (in_process, from user)"),
        ("WARNING", "/plugins/echo crashed"),
        ("WARNING", events[2][1]),  # restarting ... in <its backoff>
        ("WARNING", "/plugins/echo crashed"),
        ("WARNING", "/plugins/echo quarantined"),
    ]
    crash, restart, quarantine = ours[1], ours[2], ours[4]
    assert crash["fields"]["reason"] == "exception: RuntimeError: asked to crash"
    assert (crash["fields"]["plugin"], crash["fields"]["actor"]) == ("echo", "/plugins/echo")
    backoff = restart["fields"]["backoff"]
    # The message says the delay to 10 ms; the field keeps it to the millisecond.
    said = restart["event"].removeprefix("restarting /plugins/echo in ")
    assert said.endswith(" s (restart 1)"), restart["event"]
    assert abs(float(said.removesuffix(" s (restart 1)")) - backoff) <= 0.0051
    assert quarantine["fields"]["clear_with"] == (
        "POST /api/v1/actors/plugins/echo/clear-quarantine"
        " or cws actors clear-quarantine /plugins/echo"
    )
    # The restart time, in UTC, as the dashboard reads it; none for what never restarted.
    at = datetime.datetime.fromisoformat(plugin["last_restart_at"])
    now = datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(0) <= now - at < datetime.timedelta(seconds=TIMEOUT)
    assert plugin["last_restart_at"].endswith("Z")
    assert actor["last_restart_at"] == plugin["last_restart_at"]
    assert other["last_restart_at"] is None

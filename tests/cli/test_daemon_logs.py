"""``cws daemon --log-format json --log-level warning --access-log`` as an operator runs
it: every stderr line is a JSON object; INFO is hidden but the access log is not; and a
plugin process killed by SIGKILL shows as a crash with its reason and a restart with its
backoff (the silence that started issue 14)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import trio

from ..plugins._fixtures import write_plugin
from ._cws import CWS, TIMEOUT, Lines, close_pipes, cws_env, wait_until_ready


async def next_json(lines: Lines, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """The next stderr line, which must be one JSON object."""
    line = await lines.next()
    parsed = json.loads(line)  # fails the test on any line that is not JSON
    assert isinstance(parsed, dict), line
    seen.append(parsed)
    return parsed


async def test_json_lines_at_warning_with_the_access_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_plugin(home / "plugins", "echo", isolation="subprocess")
    args = ["daemon", "--port", "0", "--home", str(home)]
    flags = ["--log-format", "json", "--log-level", "warning", "--access-log"]
    process = await trio.lowlevel.open_process(
        [CWS, *args, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cws_env(home),
    )
    seen: list[dict[str, Any]] = []
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        stderr = Lines(process.stderr)
        with trio.fail_after(TIMEOUT):
            url = await Lines(process.stdout).next()
            await wait_until_ready(url)  # its /readyz requests are in the access log too
            async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
                answer = await http.get("/api/v1/echo")  # an open endpoint of the plugin
                assert answer.status_code == 200, answer.text
                while (line := await next_json(stderr, seen))["fields"].get("path") != (
                    "/api/v1/echo"
                ):
                    pass
                assert line["logger"] == "cws.http.access"
                assert line["level"] == "INFO"  # shown although the level is WARNING
                assert line["fields"]["method"] == "GET"
                assert line["fields"]["path"] == "/api/v1/echo"
                assert line["fields"]["status"] == 200
                assert "GET /api/v1/echo" in line["event"]

                os.kill(answer.json()["pid"], signal.SIGKILL)  # the daemon's own child
                while (line := await next_json(stderr, seen))["logger"] != "supervision":
                    pass
                crash = line
                restart = await next_json(stderr, seen)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            async for chunk in process.stderr:  # the rest of the log, to its end
                for rest in chunk.decode().splitlines():
                    seen.append(json.loads(rest))
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        await close_pipes(process)
    assert crash["level"] == "WARNING"
    assert crash["event"].startswith("/plugins/echo crashed: exception: PluginCrashed: ")
    assert "process was killed by SIGKILL" in crash["fields"]["reason"]
    assert crash["fields"]["plugin"] == "echo"
    assert restart["level"] == "WARNING"
    assert restart["event"].startswith("restarting /plugins/echo in ")
    assert isinstance(restart["fields"]["backoff"], float | int)
    assert restart["fields"]["restarts"] == 1
    # --log-level warning: no INFO line but the access log's (no "loaded plugin echo").
    assert {line["logger"] for line in seen if line["level"] == "INFO"} == {"cws.http.access"}
    assert all(line.keys() >= {"time", "level", "logger", "event", "fields"} for line in seen)

"""schemathesis 4 (the real ``st`` executable) against a real daemon: every check
(``--checks all``), an admin token, the daemon's default access rules (reads need a
token; health is open on loopback), a plugin with endpoints, commands and an event
handler loaded. Zero failures and zero errors of any kind.

What the run may not do, and why, is in ``tests/api/schemathesis.toml`` and the hooks
it names (README, "OpenAPI"). The run is bounded: a few examples per operation and a
fixed seed (the same document gives the same requests), well under the 5 minutes CI
allows on a loaded machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import trio

from tests.api._daemon import client, running_daemon, token
from tests.resilience.test_suite_api_fuzz import write_fuzz_plugin

ST = str(Path(sys.executable).parent / "st")
"""schemathesis' command, installed beside this interpreter (the test extras)."""
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "api" / "schemathesis.toml"
EXAMPLES = 10
SEED = 18
TIMEOUT = 300


async def test_schemathesis_finds_nothing_wrong(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_fuzz_plugin(home / "plugins")
    with trio.fail_after(TIMEOUT):
        async with running_daemon(home, open_reads=False) as daemon:
            admin = await token(daemon, "admin")
            async with client(daemon, admin) as http:
                loaded = await http.post("/api/v1/plugins/fuzz/load")
                assert loaded.status_code == 200, loaded.text
            assert daemon.url is not None
            run = await trio.run_process(
                [
                    ST, "--config-file", str(CONFIG), "--no-color",
                    "run", f"{daemon.url}/openapi.json",
                    "--checks", "all",
                    "--header", f"Authorization: Bearer {admin}",
                    "--max-examples", str(EXAMPLES),
                    "--seed", str(SEED),
                    "--workers", "1",
                    "--report", "junit", "--report-dir", str(tmp_path / "report"),
                ],
                cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False,
                env={**os.environ, "PYTHONPATH": str(ROOT)},  # for the hooks module
            )  # fmt: skip
            async with client(daemon) as http:
                alive = await http.get("/healthz")  # the daemon outlived all of it
    output = run.stdout.decode() + run.stderr.decode()
    assert run.returncode == 0, output
    assert "Network Error" not in output, output
    assert alive.status_code == 200
    reached = [r.target for r in daemon.runtime.faults.list(include_finished=True)]
    assert all(target.startswith("/sandbox") for target in reached), reached

"""The ``cws`` console script, run as a user runs it: in a subprocess."""

from __future__ import annotations

import subprocess
import sys

import trio

CWS = [sys.executable, "-c", "from api.cli import main; main()"]


async def run_cws(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process([*CWS, *args], capture_stdout=True, capture_stderr=True,
                                      check=False)  # fmt: skip


async def test_demo_runs_a_supervision_tree_and_exits_zero() -> None:
    result = await run_cws("demo", "--duration", "1.5", "--seed", "3")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[-1].startswith("final: ")
    for child in ("pipeline=", "flaky=", "hanger="):
        assert child in lines[-1]


async def test_bad_duration_is_a_usage_error() -> None:
    result = await run_cws("demo", "--duration", "0")
    assert result.returncode == 2
    assert "--duration" in result.stderr.decode()
    assert "must be > 0, got 0.0" in result.stderr.decode()


async def test_version() -> None:
    result = await run_cws("--version")
    assert result.returncode == 0
    assert result.stdout.decode().startswith("cws, version ")

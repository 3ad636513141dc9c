"""Start-up: from ``exec`` of ``cws daemon`` (embedded defaults, a fresh home, the
default plugins) to its first ``/healthz`` 200 and its first ``/readyz`` 200, beside
``python -c "import trio"`` measured in the same run; and ``cws --version`` and
``cws plugin list`` beside ``python -c "import httpx"``.

Each figure is the median of ``rounds`` runs: ``python -m benchmarks.bench_startup
[--rounds N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

CWS = str(Path(sys.executable).parent / "cws")


def _clean_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CWS_")}
    return env | {"CWS_HOME": str(home)}


def command_seconds(argv: list[str], env: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    subprocess.run(argv, env=env, check=False, capture_output=True)
    return time.perf_counter() - began


def daemon_start(home: Path) -> tuple[float, float, subprocess.Popen[bytes], str]:
    """Seconds from exec to /healthz 200 and to /readyz 200; the process and its URL."""
    began = time.perf_counter()
    process = subprocess.Popen(
        [CWS, "daemon", "--port", "0"],
        env=_clean_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    if not url.startswith("http"):
        process.kill()
        raise RuntimeError(f"cws daemon did not print its URL (exit {process.wait()})")
    healthy = ready = None
    with httpx.Client(base_url=url, timeout=5) as client:
        while ready is None:
            if time.perf_counter() - began > 60:
                process.kill()
                raise RuntimeError("the daemon was not ready within 60 s")
            if healthy is None and client.get("/healthz").status_code == 200:
                healthy = time.perf_counter() - began
            if healthy is not None and client.get("/readyz").status_code == 200:
                ready = time.perf_counter() - began
            else:
                time.sleep(0.005)
    assert healthy is not None
    return healthy, ready, process, url


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(rounds: int = 5) -> dict[str, Any]:
    trio_import, httpx_import, version, healthz, readyz, plugin_list = [], [], [], [], [], []
    for _ in range(rounds):
        trio_import.append(command_seconds([sys.executable, "-c", "import trio"]))
        httpx_import.append(command_seconds([sys.executable, "-c", "import httpx"]))
        version.append(command_seconds([CWS, "--version"]))
        with tempfile.TemporaryDirectory(prefix="cws-bench-start-") as folder:
            home = Path(folder)
            healthy, ready, process, url = daemon_start(home)
            try:
                env = _clean_env(home) | {"CWS_URL": url}
                plugin_list.append(command_seconds([CWS, "plugin", "list"], env))
            finally:
                stop(process)
            healthz.append(healthy)
            readyz.append(ready)
    median = statistics.median
    return {
        "rounds": rounds,
        "python_import_trio_s": median(trio_import),
        "python_import_httpx_s": median(httpx_import),
        "daemon_healthz_s": median(healthz),
        "daemon_readyz_s": median(readyz),
        "cli_version_s": median(version),
        "cli_plugin_list_s": median(plugin_list),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each (the median)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    arguments = parser.parse_args()
    figures = main(arguments.rounds)
    if arguments.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, value in figures.items():
            print(f"{name:24} {value:.3f}" if isinstance(value, float) else f"{name:24} {value}")

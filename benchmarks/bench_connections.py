"""Idle connections (issue 16, item 11): ``/healthz`` latency while 1,000 idle connections
are held open against a daemon with systemd's default 1,024 descriptors, beside the same
daemon's ``/healthz`` with no other connection, in the same run.

The daemon (``cws daemon``, a fresh home, no entry-point plugins, keep-alive 60 s so that
only the connection cap closes anything) runs with RLIMIT_NOFILE 1,024: its cap is 896, so
about 900 of the 1,000 stay open and the rest are closed, the idle-longest first. Each
probe is a fresh connection (connect, ``GET /healthz`` with ``Connection: close``, read
to the daemon's close), one after another, as a monitor's would be.

Run: ``python -m benchmarks.bench_connections [--probes 300] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

CWS = str(Path(sys.executable).parent / "cws")
ATTACK = 1000
OPEN_FILES = 1024  # systemd's default soft limit


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


async def start_daemon(home: Path) -> tuple[trio.Process, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CWS_")}
    env |= {"CWS_HOME": str(home), "CWS_ENTRY_POINTS": "false",
            "CWS_SYSTEM_DIR": str(home / "system"), "CWS_KEEP_ALIVE_SECONDS": "60"}  # fmt: skip
    process = await trio.lowlevel.open_process(
        [CWS, "daemon", "--port", "0"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, preexec_fn=_limit_open_files,
    )  # fmt: skip
    assert process.stdout is not None
    line = b""
    with trio.fail_after(60):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise RuntimeError(f"cws daemon printed no URL (exit {await process.wait()})")
            line += chunk
    return process, line.decode().strip()


async def probe(address: tuple[str, int]) -> float:
    """Seconds for one ``/healthz`` on a fresh connection."""
    began = trio.current_time()
    async with await trio.open_tcp_stream(*address) as stream:
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        await stream.send_all(request)
        answer = b""
        while chunk := await stream.receive_some():  # to the daemon's close
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/healthz answered {answer[:40]!r}")
    return trio.current_time() - began


async def latencies(address: tuple[str, int], probes: int) -> dict[str, float]:
    for _ in range(50):  # warm up
        await probe(address)
    ordered = sorted([await probe(address) for _ in range(probes)])
    return {
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


class _Attack:
    def __init__(self) -> None:
        self.opened = self.closed = 0
        self.all_open = trio.Event()
        self.limiter = trio.CapacityLimiter(50)
        """At most 50 connect at once: more overflow the listen queue, and the kernel
        leaves the extra ones half-open for seconds (the client's end thinks it is
        connected)."""

    async def hold(self, address: tuple[str, int]) -> None:
        """One idle connection, held until the daemon closes it."""
        async with self.limiter:
            stream = await trio.open_tcp_stream(*address)
        async with stream:
            self.opened += 1
            if self.opened == ATTACK:
                self.all_open.set()
            try:
                while await stream.receive_some():
                    pass
            except trio.BrokenResourceError:
                pass
        self.closed += 1  # by the daemon


async def attacked(address: tuple[str, int], probes: int) -> dict[str, Any]:
    attack = _Attack()
    async with trio.open_nursery() as nursery:
        for _ in range(ATTACK):
            nursery.start_soon(attack.hold, address)
        await attack.all_open.wait()
        await probe(address)  # the daemon has accepted the backlog
        figures: dict[str, Any] = await latencies(address, probes)
        figures["attack_opened"], figures["attack_closed"] = attack.opened, attack.closed
        nursery.cancel_scope.cancel()
    return figures


async def main(probes: int = 300) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * ATTACK:  # this process holds the attack's connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * ATTACK), hard))
    with tempfile.TemporaryDirectory(prefix="cws-bench-conn-") as folder:
        process, url = await start_daemon(Path(folder))
        try:
            host, _, port = url.removeprefix("http://").rpartition(":")
            address = (host, int(port))
            idle = await latencies(address, probes)
            held = await attacked(address, probes)
            idle_after = await probe(address)
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
    return {
        "probes": probes,
        "attack_connections": ATTACK,
        "open_files": OPEN_FILES,
        "idle": idle,
        "held": held,
        "healthz_after_ms": idle_after * 1000,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = trio.run(main, args.probes)
    print(json.dumps(result, indent=2))

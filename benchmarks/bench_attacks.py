"""The attacks of issue 16 against a real daemon, and how healthy it stays meanwhile.

``cws daemon --port 0`` runs in a subprocess with a fresh home and its default plugins
(plus a folder plugin with an open POST route), its descriptors held to systemd's
default soft limit of 1,024. A prober, in a process of its own, asks ``/healthz`` over a
new connection every 10 ms: first while nothing else happens (idle), then while each
attack runs from this process. Each attack's figure is the ratio of the two
p99s (issue 16 asks for at most 2x for items 1-4 and 11), beside the answers the hostile
requests got and the daemon's RSS (``/proc/PID/status``) before and after.

1. fault targets: ``"/" + "*" * 35`` and one of 50,000 stars, POSTed again and again
   with an admin token (each accepted fault cleared at once);
2. an event stream with a 1,500-segment ``#.#.…`` pattern (anonymous, then with a
   token), and one with the worst pattern allowed held open, while events are POSTed;
3. a chunked multipart upload of ``upload_mib`` MiB (streamed from one reused buffer),
   with 8 concurrent anonymous 99 MiB JSON bodies to ``/api/v1/cli/execute``;
4. bad input again and again: JSON nested 1,000 deep, a 5,000-digit number,
   ``timeout_seconds: NaN``, an upload named ``..``;
11. ``connections`` idle keep-alive connections opened and held (1,000: issue 16's 994
    made accept fail at 1,024 descriptors; 900 leave the daemon short of its limit);
    then 20 requests refused before their body arrived, each followed on its connection
    by its body and a second request.

Run: ``python -m benchmarks --only attacks [--quick]``, or alone:
``python -m benchmarks.bench_attacks [--quick] [--json] [--only bodies,...]
[--idle-seconds N] [--attack-seconds N] [--upload-mib N]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

CWS = str(Path(sys.executable).parent / "cws")
KIB = 1024
MIB = 1024 * KIB
NOFILE = 1024
"""The daemon's soft descriptor limit: systemd's default, under which issue 16's 994
idle connections made accept fail."""
PATIENCE = 60.0
"""Seconds a big body's sender waits for an answer before it counts a timeout."""
REUSED = 20
"""Connections on which a request refused before its body was read is followed by a
second request (item 11's second half)."""
PAUSE = 0.05
"""Seconds between two rounds of an attack: hostile requests again and again, not a
flood of any request (which would measure the flood, whatever the request)."""
INBOX = """
from cws_actors import APIEndpointSpec, APIResult, Capabilities, Plugin

class Inbox(Plugin):
    capabilities = Capabilities(api_endpoints=[
        APIEndpointSpec("/api/v1/inbox/post", handler="post", method="POST", protected=False),
    ])

    async def post(self, request):
        return APIResult(200, {"received": True})
"""
INBOX_MANIFEST = """
[plugin]
name = "inbox"
version = "1.0.0"
api_version = "1.0"
entry = "inbox_plugin:Inbox"
"""

# The prober, in its own process: GET /healthz over a new connection (as a service
# manager's or a balancer's check does), one every `interval` seconds, until its stdin
# closes; then each probe's start (time.monotonic, one clock for every process), its
# seconds and its answer, as JSON. A probe not answered within `timeout` counts at the
# time it gave up.
PROBE = r"""
import json, select, socket, sys, time

host, port = sys.argv[1], int(sys.argv[2])
interval, timeout = float(sys.argv[3]), float(sys.argv[4])
request = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()

def probe():
    began = time.perf_counter()
    deadline = began + timeout
    def left():
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError
        return remaining
    try:
        with socket.create_connection((host, port), timeout=left()) as sock:
            sock.settimeout(left())
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                sock.settimeout(left())
                chunk = sock.recv(65536)
                if not chunk:
                    return "closed", time.perf_counter() - began
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                sock.settimeout(left())
                chunk = sock.recv(65536)
                if not chunk:
                    return "closed", time.perf_counter() - began
                body += chunk
            return head.split(b" ", 2)[1].decode(), time.perf_counter() - began
    except (TimeoutError, socket.timeout):
        return "timeout", time.perf_counter() - began
    except OSError as exc:
        return type(exc).__name__, time.perf_counter() - began

probes = []
print("probing", flush=True)
while True:
    began = time.monotonic()
    answer, seconds = probe()
    probes.append((began, seconds, answer))
    if select.select([sys.stdin], [], [], interval)[0]:
        break
print(json.dumps(probes))
"""
PROBE_INTERVAL = 0.01


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


def summary(probes: list[tuple[float, float, str]]) -> dict[str, Any]:
    latencies = [seconds for _, seconds, _ in probes]
    return {
        "probes": len(latencies),
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "answers": dict(collections.Counter(answer for _, _, answer in probes)),
    }


@attrs.frozen
class Daemon:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    home: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (the peak RSS so far) of ``pid``, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / KIB
    return {"rss_mib": fields["VmRSS"], "hwm_mib": fields["VmHWM"]}


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def write_inbox(plugins: Path) -> None:
    folder = plugins / "inbox"
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(textwrap.dedent(INBOX_MANIFEST))
    (folder / "inbox_plugin.py").write_text(INBOX)


def environment(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CWS_")}
    return env | {"CWS_HOME": str(home)}


def _cpus() -> tuple[set[int], set[int]]:
    """The daemon's and the prober's CPUs, and the attacker's. The attack stands for
    clients on other machines: on a machine with two CPUs or more the attacker (this
    process) runs on CPUs of its own, so that what it spends to send its bytes is not
    counted against the daemon; the idle reference is measured with the same split."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(usable) < 2:
        return set(usable), set(usable)
    half = len(usable) // 2
    return set(usable[:half]), set(usable[half:])


DAEMON_CPUS, ATTACKER_CPUS = _cpus()


def pin(cpus: set[int]) -> Callable[[], None] | None:
    """A ``preexec_fn`` that keeps a child (and the threads and processes it starts) on
    ``cpus``; None where there is nothing to split."""
    if not cpus or DAEMON_CPUS == ATTACKER_CPUS:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def start_daemon(home: Path, log: Path) -> Daemon:
    """``cws daemon --port 0`` with ``NOFILE`` descriptors (soft), ready."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(NOFILE, hard), hard))  # inherited
    try:
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [CWS, "daemon", "--port", "0", "--home", str(home)],
                env=environment(home), stdout=subprocess.PIPE, stderr=log_file,
                preexec_fn=pin(DAEMON_CPUS),
            )  # fmt: skip
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert process.stdout is not None
    url = httpx.URL(process.stdout.readline().decode().strip())
    if url.port is None:
        process.kill()
        raise RuntimeError(f"cws daemon did not print its URL (exit {process.wait()})")
    daemon = Daemon(process, url.host, url.port, home)
    began = time.perf_counter()
    with httpx.Client(base_url=daemon.url, timeout=10) as client:
        while client.get("/readyz").status_code != 200:
            if time.perf_counter() - began > 60:
                stop_daemon(daemon)
                raise RuntimeError("the daemon was not ready within 60 s")
            time.sleep(0.05)
    return daemon


def stop_daemon(daemon: Daemon) -> None:
    daemon.process.send_signal(signal.SIGTERM)
    try:
        daemon.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        daemon.process.wait()
    if daemon.process.stdout is not None:
        daemon.process.stdout.close()


def create_token(home: Path, scope: str) -> str:
    done = subprocess.run(
        [CWS, "token", "create", "--scope", scope, "--name", "bench-attacks"],
        env=environment(home), capture_output=True, check=True,
    )  # fmt: skip
    return done.stdout.decode().strip()


def probe_while(
    daemon: Daemon, timeout: float, work: Callable[[], tuple[float, float] | None]
) -> dict[str, Any]:
    """The prober's figures over the time ``work()`` takes, or over the window of
    ``time.monotonic()`` it returns (the probes that began within it)."""
    prober = subprocess.Popen(
        [sys.executable, "-c", PROBE, daemon.host, str(daemon.port), str(PROBE_INTERVAL),
         str(timeout)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=pin(DAEMON_CPUS),
    )  # fmt: skip
    assert prober.stdin is not None and prober.stdout is not None
    try:
        assert prober.stdout.readline() == b"probing\n"
        window = work()
    finally:
        prober.stdin.close()
        output = prober.stdout.read()
        prober.wait()
        prober.stdout.close()
    probes = json.loads(output)
    if window is not None:
        probes = [probe for probe in probes if window[0] <= probe[0] <= window[1]]
    return summary(probes)


# ---------------------------------------------------------------------- the attacks


@attrs.define
class Attack:
    """What an attack needs, and what it saw: ``answers[label][status] = count``."""

    daemon: Daemon
    admin: str
    params: dict[str, Any]
    answers: dict[str, collections.Counter[str]] = attrs.field(
        factory=lambda: collections.defaultdict(collections.Counter)
    )
    figures: dict[str, Any] = attrs.field(factory=dict)
    seconds: dict[str, list[float]] = attrs.field(factory=lambda: collections.defaultdict(list))
    """How long each of the ``call``s took, by label."""
    window: tuple[float, float] | None = None
    """When the attack proper ran (``time.monotonic()``), if not all the time it took."""
    leaks: int = 0
    """Answers that carried the daemon's home (a filesystem path) or a traceback."""

    def record(self, label: str, answer: httpx.Response | int | str) -> None:
        if isinstance(answer, httpx.Response):
            if str(self.daemon.home) in answer.text or "Traceback" in answer.text:
                self.leaks += 1
            answer = answer.status_code
        self.answers[label][str(answer)] += 1

    async def call(self, label: str, request: Awaitable[httpx.Response]) -> httpx.Response | None:
        """Record the answer to ``request``, or the error in its place (a request left
        unanswered for ``probe_timeout`` is a ``ReadTimeout``)."""
        began = time.perf_counter()
        try:
            answer = await request
        except httpx.HTTPError as exc:
            self.record(label, type(exc).__name__)
            return None
        finally:
            self.seconds[label].append(time.perf_counter() - began)
        self.record(label, answer)
        return answer

    def client(self, bearer: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        timeout = self.params["probe_timeout"]
        return httpx.AsyncClient(base_url=self.daemon.url, headers=headers, timeout=timeout)

    async def rounds(self, one_round: Callable[[], Awaitable[None]], *, least: int = 1) -> None:
        """``one_round()`` again and again, at least ``least`` times and for at least
        ``attack_seconds``."""
        end = trio.current_time() + self.params["attack_seconds"]
        done = 0
        while done < least or trio.current_time() < end:
            await one_round()
            done += 1
            await trio.sleep(PAUSE)
        self.figures["rounds"] = done

    async def open_stream(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(self.daemon.host, self.daemon.port)

    def head(self, method: str, path: str, *lines: str, bearer: str | None = None) -> bytes:
        auth = [f"Authorization: Bearer {bearer}"] if bearer else []
        host = f"Host: {self.daemon.host}:{self.daemon.port}"
        return (
            "\r\n".join([f"{method} {path} HTTP/1.1", host, *auth, *lines]) + "\r\n\r\n"
        ).encode()


async def read_head(stream: trio.SocketStream) -> tuple[str, bytes]:
    """The status of an HTTP/1.1 answer ("closed" if the connection closed first) and
    what came after its head."""
    received = b""
    while b"\r\n\r\n" not in received:
        try:
            data = await stream.receive_some(64 * KIB)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            return "closed", b""
        received += data
    head, _, rest = received.partition(b"\r\n\r\n")
    return head.split(b" ", 2)[1].decode(), rest


async def read_answer(stream: trio.SocketStream) -> str:
    """The status of a whole answer (its head and ``Content-Length`` bytes)."""
    received = b""
    while b"\r\n\r\n" not in received:
        data = await stream.receive_some(64 * KIB)
        if not data:
            return "closed"
        received += data
    head, _, body = received.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        data = await stream.receive_some(64 * KIB)
        if not data:
            return "closed"
        body += data
    return head.split(b" ", 2)[1].decode()


async def exchange(stream: trio.SocketStream, data: bytes, patience: float) -> str:
    """Send ``data`` and read the whole answer: its status, "timeout" when none came
    within ``patience`` seconds, "closed", or the error's name."""
    with trio.move_on_after(patience):
        try:
            await stream.send_all(data)
            return await read_answer(stream)
        except (trio.BrokenResourceError, OSError) as exc:
            return type(exc).__name__
    return "timeout"


async def send_until_answered(
    stream: trio.SocketStream, head: bytes, first: bytes, total: int, *, chunked: bool
) -> tuple[str, int]:
    """Send ``head``, ``first`` and then zeros up to ``total`` bytes of body (from one
    reused buffer) while reading the answer; the answer's status ("timeout" after
    ``PATIENCE``) and how many body bytes had been sent when it came (the daemon may
    close the connection on us meanwhile)."""
    block = b"\0" * MIB
    answered = trio.Event()
    sent = 0

    def framed(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data

    async def send() -> None:
        nonlocal sent
        try:
            await stream.send_all(head + framed(first))
            sent = len(first)
            while sent < total and not answered.is_set():
                data = block[: total - sent]
                await stream.send_all(framed(data))
                sent += len(data)
            if chunked and not answered.is_set():
                await stream.send_all(b"0\r\n\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # answered and closed: the refusal this is after

    status = "timeout"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        with trio.move_on_after(PATIENCE):
            status, _ = await read_head(stream)
        at_answer = sent
        answered.set()
        nursery.cancel_scope.cancel()
    return status, at_answer


async def fault_targets(attack: Attack) -> None:
    """Item 1: a 35-star target (accepted, then cleared) and a 50,000-star one."""
    async with attack.client(attack.admin) as http:

        async def one_round() -> None:
            body = {"target": "/" + "*" * 35, "spec": "latency:1ms"}
            stars = await attack.call("35 stars", http.post("/api/v1/faults", json=body))
            if stars is not None and stars.status_code == 201:
                for fault in stars.json()["faults"]:
                    await attack.call("clear", http.delete(f"/api/v1/faults/{fault['id']}"))
            body = {"target": "/" + "*" * 50_000, "spec": "latency:1ms"}
            await attack.call("50,000 stars", http.post("/api/v1/faults", json=body))

        await attack.rounds(one_round)


async def bus_patterns(attack: Attack) -> None:
    """Item 2: a 1,500-segment stream pattern, anonymous and with a token, again and
    again; the worst pattern allowed held open; events published meanwhile."""
    hashes = {"topics": ".".join(["#"] * 1500)}
    worst = ".".join(["#"] * 31 + ["z"])
    topic = ".".join(["a"] * 31 + ["z"])
    published = delivered = 0
    publishing = True
    caught_up = trio.Event()
    admin = attack.admin
    stream_path = "/api/v1/events/stream"
    async with attack.client() as anonymous, attack.client(admin) as http:
        stream = await attack.open_stream()
        async with stream, trio.open_nursery() as nursery:
            await stream.send_all(attack.head("GET", f"{stream_path}?topics={worst}", bearer=admin))
            status, buffer = await read_head(stream)
            attack.record("worst allowed pattern, held open", status)

            async def follow() -> None:
                nonlocal buffer, delivered
                while data := await stream.receive_some(64 * KIB):
                    buffer += data
                    *lines, buffer = buffer.split(b"\n")
                    delivered += sum(line.startswith(b"data: ") for line in lines)
                    if not publishing and delivered >= published:
                        caught_up.set()

            nursery.start_soon(follow)

            async def one_round() -> None:
                nonlocal published
                await attack.call("1,500 '#', anonymous", anonymous.get(stream_path, params=hashes))
                await attack.call("1,500 '#', token", http.get(stream_path, params=hashes))
                for n in range(5):
                    event = {"topic": topic, "payload": n}
                    answer = await attack.call("POST /api/v1/events",
                                               http.post("/api/v1/events", json=event))  # fmt: skip
                    published += answer is not None and answer.status_code == 202

            await attack.rounds(one_round)
            publishing = False
            if delivered >= published:
                caught_up.set()
            with trio.move_on_after(10):  # the stream catches up, or says how far it got
                await caught_up.wait()
            nursery.cancel_scope.cancel()
    attack.figures |= {"published": published, "delivered": delivered}


async def big_bodies(attack: Attack) -> None:
    """Item 3: a chunked multipart upload of ``upload_mib`` MiB with an admin token,
    beside 8 anonymous 99 MiB JSON bodies to /api/v1/cli/execute."""
    sent: dict[str, list[float]] = collections.defaultdict(list)

    async def upload() -> None:
        boundary = "attack-boundary"
        head = attack.head(
            "POST", "/api/v1/plugins/install", "Transfer-Encoding: chunked",
            f"Content-Type: multipart/form-data; boundary={boundary}", bearer=attack.admin,
        )  # fmt: skip
        part = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=archive;"
            ' filename="big.cwsplugin"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        async with await attack.open_stream() as stream:
            status, at = await send_until_answered(
                stream, head, part, attack.params["upload_mib"] * MIB, chunked=True
            )
        label = f"chunked upload of {attack.params['upload_mib']:,} MiB"
        attack.record(label, status)
        sent[label].append(at / MIB)

    async def anonymous_body() -> None:
        size = 99 * MIB
        head = attack.head("POST", "/api/v1/cli/execute", f"Content-Length: {size}",
                           "Content-Type: application/json")  # fmt: skip
        async with await attack.open_stream() as stream:
            status, at = await send_until_answered(
                stream, head, b'{"args": ["', size, chunked=False
            )
        attack.record("8 x 99 MiB anonymous /api/v1/cli/execute", status)
        sent["99 MiB bodies"].append(at / MIB)

    async def one_round() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            for _ in range(8):
                nursery.start_soon(anonymous_body)

    await attack.rounds(one_round, least=attack.params["upload_rounds"])
    attack.figures["mib_sent_when_answered_max"] = {k: max(v) for k, v in sent.items()}


DEEP = b"[" * 1000 + b"]" * 1000
LONG_NUMBER = b'{"args": ' + b"9" * 5000 + b"}"
EMPTY_ZIP = b"PK\x05\x06" + bytes(18)


async def bad_input(attack: Attack) -> None:
    """Item 4: each bad body of the issue, to the routes it broke, with and without a
    token."""
    execute, inbox = "/api/v1/cli/execute", "/api/v1/inbox/post"
    nan = b'{"plugin_name": "inbox", "timeout_seconds": NaN}'
    files = {"archive": ("..", EMPTY_ZIP, "application/zip")}
    # Anonymous requests close their connection: a keep-alive connection on which a
    # request was refused before its body was read is item 11's, measured there.
    anonymous = attack.client()
    anonymous.headers["Connection"] = "close"
    async with anonymous, attack.client(attack.admin) as http:

        async def one_round() -> None:
            call = attack.call
            await call("1,000 deep, anonymous, cli/execute", anonymous.post(execute, content=DEEP))
            await call(
                "1,000 deep, anonymous, open plugin route", anonymous.post(inbox, content=DEEP)
            )
            await call("1,000 deep, cli/execute", http.post(execute, content=DEEP))
            await call("1,000 deep, open plugin route", http.post(inbox, content=DEEP))
            await call("5,000 digits, cli/execute", http.post(execute, content=LONG_NUMBER))
            await call("5,000 digits, open plugin route", http.post(inbox, content=LONG_NUMBER))
            await call("timeout_seconds NaN", http.post("/api/plugins/load", content=nan))
            await call("upload named '..'", http.post("/api/v1/plugins/install", files=files))

        await attack.rounds(one_round)


async def idle_connections(attack: Attack) -> None:
    """Item 11: ``connections`` keep-alive connections, each answered once, then held
    idle for ``attack_seconds`` (the probes of that time are the attack's); then, once
    they are closed, requests refused before their body was read, each followed by a
    second request on the same connection."""
    count = attack.params["connections"]
    patience = attack.params["probe_timeout"]
    streams: list[trio.SocketStream] = []
    request = attack.head("GET", "/healthz")
    limit = trio.CapacityLimiter(100)

    async def open_one() -> None:
        async with limit:
            try:
                stream = await trio.open_tcp_stream(attack.daemon.host, attack.daemon.port)
            except OSError as exc:
                attack.record(f"{count:,} keep-alive GET /healthz", type(exc).__name__)
                return
            streams.append(stream)
            status = await exchange(stream, request, patience)
            attack.record(f"{count:,} keep-alive GET /healthz", status)

    pid = attack.daemon.process.pid
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(open_one)
        attack.figures["daemon_descriptors_held"] = descriptors(pid)
        began = time.monotonic()
        await trio.sleep(attack.params["attack_seconds"])
        attack.window = (began, time.monotonic())
        attack.figures["daemon_descriptors_after_hold"] = descriptors(pid)
        attack.figures["closed_by_daemon"] = sum(map(closed_by_peer, streams))
    finally:
        for stream in streams:
            await stream.aclose()

    async def refused_then_reused() -> None:
        # A 401 on the head alone, then the body it did not wait for and a second
        # request: the daemon reads past the body and answers, or closes the connection.
        head = attack.head("POST", "/api/v1/cli/execute", f"Content-Length: {len(DEEP)}",
                           "Content-Type: application/json")  # fmt: skip
        async with await attack.open_stream() as stream:
            status = await exchange(stream, head, patience)
            attack.record("anonymous POST, answered before its body", status)
            status = await exchange(stream, DEEP + request, patience)
            attack.record("then its body and GET /healthz on that connection", status)

    async with trio.open_nursery() as nursery:
        for _ in range(REUSED):
            nursery.start_soon(refused_then_reused)


def closed_by_peer(stream: trio.SocketStream) -> bool:
    """Whether the daemon has closed this connection (a read would see its end)."""
    with socket.socket(fileno=os.dup(stream.socket.fileno())) as sock:
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


ATTACKS: dict[str, tuple[str, Callable[[Attack], Awaitable[None]]]] = {
    "faults": ("1", fault_targets),
    "patterns": ("2", bus_patterns),
    "bodies": ("3", big_bodies),
    "bad_input": ("4", bad_input),
    "connections": ("11", idle_connections),
}


def run_attack(daemon: Daemon, admin: str, params: dict[str, Any],
               attack_function: Callable[[Attack], Awaitable[None]]) -> dict[str, Any]:  # fmt: skip
    timeout = params["probe_timeout"]

    def idle() -> None:
        time.sleep(params["idle_seconds"])

    quiet = probe_while(daemon, timeout, idle)
    before = memory(daemon.process.pid)
    attack = Attack(daemon, admin, params)
    began = time.perf_counter()

    def work() -> tuple[float, float] | None:
        trio.run(attack_function, attack)
        return attack.window

    during = probe_while(daemon, timeout, work)
    seconds = time.perf_counter() - began
    after = memory(daemon.process.pid)
    # Afterwards: still answering, and still doing its work (an event is published).
    with httpx.Client(base_url=daemon.url, timeout=timeout * 4) as client:
        try:
            healthz_after: int | str = client.get("/healthz").status_code
            publish_after: int | str = client.post(
                "/api/v1/events", json={"topic": "bench.after"},
                headers={"Authorization": f"Bearer {admin}"},
            ).status_code  # fmt: skip
        except httpx.HTTPError as exc:
            healthz_after = publish_after = type(exc).__name__
    return {
        "idle": quiet,
        "attack": during,
        "p99_ratio": during["p99_ms"] / quiet["p99_ms"],
        "seconds": seconds,
        "answers": {label: dict(counts) for label, counts in attack.answers.items()},
        "answer_ms": {
            label: {"p50": percentile(values, 0.5) * 1000, "max": max(values) * 1000}
            for label, values in attack.seconds.items()
        },
        "leaks": attack.leaks,
        "memory_before": before,
        "memory_after": after,
        "healthz_after": healthz_after,
        "publish_after": publish_after,
        **attack.figures,
    }


def main(idle_seconds: float = 10.0, attack_seconds: float = 10.0, upload_mib: int = 1000,
         upload_rounds: int = 3, connections: int = 1000,
         probe_timeout: float = 5.0,
         only: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Every attack of :data:`ATTACKS` (or those named in ``only``) against one daemon."""
    params = dict(idle_seconds=idle_seconds, attack_seconds=attack_seconds,
                  upload_mib=upload_mib, upload_rounds=upload_rounds, connections=connections,
                  probe_timeout=probe_timeout)  # fmt: skip
    # This process holds `connections` sockets at once.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < connections + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, connections + 256), hard))
    figures: dict[str, Any] = {"nofile": NOFILE}
    figures["cpus"] = {"daemon_and_prober": sorted(DAEMON_CPUS),
                       "attacker": sorted(ATTACKER_CPUS)}  # fmt: skip
    split = DAEMON_CPUS != ATTACKER_CPUS
    original = os.sched_getaffinity(0) if split else set()
    if split:  # the attacker: this process, until the attacks end
        os.sched_setaffinity(0, ATTACKER_CPUS)
    try:
        return _attacks(params, figures, only or list(ATTACKS))
    finally:
        if split:
            os.sched_setaffinity(0, original)


def _attacks(params: dict[str, Any], figures: dict[str, Any], only: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cws-bench-attacks-") as folder:
        home = Path(folder) / "home"
        write_inbox(home / "plugins")
        daemon = start_daemon(home, Path(folder) / "daemon.log")
        try:
            admin = create_token(home, "admin")
            figures["memory_at_start"] = memory(daemon.process.pid)
            figures["descriptors_at_start"] = descriptors(daemon.process.pid)
            for name, (_item, attack_function) in ATTACKS.items():
                if name not in only:
                    continue
                print(f"  attack {name}...", file=sys.stderr, flush=True)
                figures[name] = run_attack(daemon, admin, params, attack_function)
        finally:
            stop_daemon(daemon)
            figures["daemon_exit"] = daemon.process.returncode
    return figures


if __name__ == "__main__":
    from ._harness import text_table
    from ._suites import SUITES, attacks_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--only", type=lambda text: text.split(","), metavar="NAME[,NAME]",
        help=f"run only these attacks: {', '.join(ATTACKS)} (a JSON report: --json)",
    )  # fmt: skip
    for name in ("idle_seconds", "attack_seconds", "upload_mib"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, metavar="N",
                            help="instead of the suite's figure")  # fmt: skip
    arguments = parser.parse_args()
    if arguments.only and not set(arguments.only) <= ATTACKS.keys():
        parser.error(f"--only: expected names from {', '.join(ATTACKS)}")
    suite = SUITES["attacks"]
    params = dict(suite.quick if arguments.quick else suite.full)
    for name in ("idle_seconds", "attack_seconds", "upload_mib"):
        if (value := getattr(arguments, name)) is not None:
            params[name] = int(value) if name == "upload_mib" else value
    figures = main(**params, only=arguments.only)
    if arguments.json or arguments.only:
        print(json.dumps(figures, indent=2))
    else:
        print(text_table(attacks_rows(figures)))

"""Hostile bodies sent to a real daemon (issue 16, items 3 and 4): size limits hold while
a body streams in whatever its framing, the caller is checked before any body is read,
and bad input is a 400 that says what is wrong, never a 500 naming the daemon's files.

Each test also checks that the daemon keeps serving (``/healthz``, a publish) during and
after; how fast, beside idle, is measured by benchmarks/bench_attacks.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from api._daemon import Daemon
from api._http._bodies import MAX_JSON_DEPTH, MAX_NUMBER_CHARS
from tests.api._daemon import TIMEOUT, client, running_daemon, token
from tests.api._plugin import CODE, write_web_plugin

PROBLEM = "application/problem+json"
KIB = 1024
MIB = 1024 * KIB

# The web plugin of tests/api/_plugin.py, with an open POST route (a body from anyone)
# and a route whose answer cannot be sent (its header's value fails to convert).
HOSTILE_CODE = CODE.replace(
    "        ],\n        cli_commands=[",
    '            APIEndpointSpec("/api/v1/web/inbox", handler="hello", method="POST",\n'
    "                            protected=False),\n"
    '            APIEndpointSpec("/api/v1/web/crash", handler="crash", protected=False),\n'
    "        ],\n        cli_commands=[",
).replace(
    "    async def broken(self, request):",
    "    async def crash(self, request):\n"
    "        class Unprintable:\n"
    "            def __str__(self):\n"
    "                raise OSError(f'cannot read {SECRET}')\n"
    '        return APIResult(200, {}, {"X-Crash": Unprintable()})\n\n'
    "    async def broken(self, request):",
)
SECRET = "/var/lib/cws-secret/keys.txt"
HOSTILE_CODE = f"SECRET = {SECRET!r}\n" + HOSTILE_CODE
assert "/api/v1/web/inbox" in HOSTILE_CODE
assert "async def crash" in HOSTILE_CODE


@contextlib.asynccontextmanager
async def _daemon(home: Path, **settings: Any) -> AsyncIterator[tuple[Daemon, str]]:
    write_web_plugin(home / "plugins", code=HOSTILE_CODE)
    async with running_daemon(home, **settings) as daemon:
        admin = await token(daemon, "admin")
        async with client(daemon, admin) as http:
            loaded = await http.post("/api/v1/plugins/web/load")
            assert loaded.status_code == 200, loaded.text
        yield daemon, admin


def address(daemon: Daemon) -> tuple[str, int]:
    assert daemon.url is not None
    host, port = httpx.URL(daemon.url).host, httpx.URL(daemon.url).port
    assert port is not None
    return host, port


async def healthy(daemon: Daemon) -> None:
    """``/healthz`` answers 200 and the daemon still does its work (an event is
    published)."""
    async with client(daemon) as http:
        answer = await http.get("/healthz")
        assert answer.status_code == 200, answer.text
    async with client(daemon, await token(daemon, "events:publish")) as publisher:
        published = await publisher.post("/api/v1/events", json={"topic": "still.working"})
        assert published.status_code == 202, published.text


async def read_answer(stream: trio.SocketStream) -> tuple[int, bytes]:
    """The status and the whole of the response (its head and ``Content-Length``)."""
    received = b""
    while b"\r\n\r\n" not in received:
        data = await stream.receive_some(64 * KIB)
        assert data, f"the connection closed after {received!r}"
        received += data
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        data = await stream.receive_some(64 * KIB)
        assert data, f"the connection closed after {received + body!r}"
        body += data
    return int(head.split(b" ", 2)[1]), head + b"\r\n\r\n" + body


def request_head(path: str, framing: str, *, bearer: str | None = None, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", framing]
    if bearer is not None:
        lines.append(f"Authorization: Bearer {bearer}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send_chunked_until_answered(
    daemon: Daemon, head: bytes, first: bytes, *, total: int
) -> tuple[int, bytes, int]:
    """Send ``head`` and then a chunked body (``first``, then zeros up to ``total``
    bytes) while reading the answer; returns the status, the answer's head and how many
    body bytes had been sent when it arrived (the daemon may close the connection on us
    meanwhile: that ends the sending)."""
    stream = await trio.open_tcp_stream(*address(daemon))
    sent = 0
    block = b"\0" * (64 * KIB)
    answered = trio.Event()

    async def send() -> None:
        nonlocal sent
        try:
            await stream.send_all(head + b"%x\r\n%s\r\n" % (len(first), first))
            sent = len(first)
            while sent < total and not answered.is_set():
                await stream.send_all(b"%x\r\n%s\r\n" % (len(block), block))
                sent += len(block)
            if not answered.is_set():
                await stream.send_all(b"0\r\n\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the daemon answered and closed: what the test wants to see

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        status, answer = await read_answer(stream)
        at_answer = sent
        answered.set()
        nursery.cancel_scope.cancel()
    return status, answer, at_answer


# ---------------------------------------------------------------------- item 3: size


async def test_a_chunked_upload_is_refused_as_soon_as_it_passes_the_limit(
    tmp_path: Path,
) -> None:
    """Sent with ``Transfer-Encoding: chunked``, a 256 MiB upload was read in full
    (1,000 MiB took the daemon's RSS up by 1 GB). Now the count of what arrives is held
    to ``max_upload_bytes`` (1 MiB here): a 413 well before the sender is done, nothing
    staged, and the daemon serving throughout."""
    limit = MIB
    total = 256 * MIB
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with _daemon(home, max_upload_bytes=limit) as (daemon, admin):
            boundary = "hostile-boundary"
            head = request_head(
                "/api/v1/plugins/install",
                "Transfer-Encoding: chunked",
                bearer=admin,
                Content_Type=f"multipart/form-data; boundary={boundary}",
            )
            part = (
                f"--{boundary}\r\nContent-Disposition: form-data; name=archive;"
                f' filename="big.cwsplugin"\r\nContent-Type: application/zip\r\n\r\n'
            ).encode()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(healthy, daemon)  # answered while the upload streams
                status, answer, sent = await send_chunked_until_answered(
                    daemon, head, part, total=total
                )
            assert status == 413, answer
            assert f"over the limit of {limit} bytes".encode() in answer, answer
            # Refused once the limit was passed, not once the body was all read (what
            # was sent meanwhile sits in the sockets' buffers, a few MiB at most).
            assert sent < total // 4, f"the answer came after {sent} of {total} bytes"
            assert nothing_staged(home)
            async with client(daemon, admin) as http:
                names = [p["name"] for p in (await http.get("/api/v1/plugins")).json()["plugins"]]
                assert names == ["web"]
            await healthy(daemon)


async def test_a_chunked_json_body_is_refused_as_soon_as_it_passes_the_limit(
    tmp_path: Path,
) -> None:
    """An open plugin route takes a body from anyone: a chunked one is held to
    ``max_body_bytes`` as it arrives, not read in full first."""
    limit = 64 * KIB
    total = 128 * MIB
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with _daemon(home, max_body_bytes=limit) as (daemon, _admin):
            head = request_head(
                "/api/v1/web/inbox", "Transfer-Encoding: chunked", Content_Type="application/json"
            )
            status, answer, sent = await send_chunked_until_answered(
                daemon, head, b'{"padding": "', total=total
            )
            assert status == 413, answer
            assert f"at most {limit} bytes, got more than that".encode() in answer, answer
            assert sent < total // 4, f"the answer came after {sent} of {total} bytes"
            await healthy(daemon)


PROTECTED_BODIES = [
    "/api/v1/cli/execute",
    "/api/v1/events",
    "/api/plugins/load",
    "/api/v1/plugins/install",
    "/api/v1/plugins/web/update",
    "/api/v1/web/sick",  # a protected plugin route
]


async def test_anonymous_bodies_are_refused_before_a_byte_of_them_is_read(
    tmp_path: Path,
) -> None:
    """Eight anonymous 99 MiB bodies to ``/api/v1/cli/execute`` were each read in full
    before a 413. Now every route that needs a token answers 401 on the request's head
    alone: the bodies below are declared (99 MiB) and never sent."""
    declared = 99 * MIB
    home = tmp_path / "home"
    answers: dict[tuple[str, int], tuple[int, bytes]] = {}

    async def anonymous(daemon: Daemon, path: str, copy: int) -> None:
        head = request_head(path, f"Content-Length: {declared}", Content_Type="application/json")
        async with await trio.open_tcp_stream(*address(daemon)) as stream:
            await stream.send_all(head)  # and not one byte of the body
            answers[path, copy] = await read_answer(stream)

    with trio.fail_after(TIMEOUT):
        async with _daemon(home) as (daemon, _admin):
            async with trio.open_nursery() as nursery:
                for path in PROTECTED_BODIES:
                    for copy in range(8):
                        nursery.start_soon(anonymous, daemon, path, copy)
                nursery.start_soon(healthy, daemon)
            for (path, _copy), (status, answer) in answers.items():
                assert status == 401, (path, answer)
                assert b"needs a token" in answer, (path, answer)
            assert len(answers) == 8 * len(PROTECTED_BODIES)
            await healthy(daemon)


# ---------------------------------------------------------------------- item 4: 400s


DEEP = b"[" * 1000 + b"]" * 1000
LONG_NUMBER = b'{"args": ' + b"9" * 5000 + b"}"
BAD_JSON = [
    ("deep", DEEP, f"nest deeper than {MAX_JSON_DEPTH} levels"),
    # One level past the limit, refused from its leading brackets; and a deep body
    # whose brackets are spread over lines, which the parser sees first.
    ("just-too-deep", b"[ " * 65 + b"]" * 65, f"nest deeper than {MAX_JSON_DEPTH} levels"),
    ("deep-lines", b"[\n" * 1000 + b"]\n" * 1000, f"nest deeper than {MAX_JSON_DEPTH} levels"),
    ("deep-object", b'{"a":' * 200 + b"1" + b"}" * 200, f"at most {MAX_JSON_DEPTH}"),
    ("long-number", LONG_NUMBER, f"5000 characters; at most {MAX_NUMBER_CHARS}"),
    ("long-float", b'{"x": 0.' + b"1" * 5000 + b"}", f"at most {MAX_NUMBER_CHARS}"),
    ("nan", b'{"x": NaN}', "NaN is not valid JSON; numbers must be finite"),
    ("infinity", b'{"x": -Infinity}', "-Infinity is not valid JSON"),
    ("overflow", b'{"x": 1e999}', "out of range; numbers must be finite"),
]


@pytest.mark.parametrize(("name", "raw", "says"), BAD_JSON, ids=[b[0] for b in BAD_JSON])
async def test_json_out_of_bounds_is_a_400_that_says_what_is_wrong(
    tmp_path: Path, name: str, raw: bytes, says: str
) -> None:
    """Nesting 1,000 deep (RecursionError) and a 5,000-digit number (Python's
    int-conversion limit) were 500s, reachable without a token on an open plugin route.
    Every JSON body goes through one parser with bounds."""
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with _daemon(home) as (daemon, admin):
            async with client(daemon) as anonymous, client(daemon, admin) as http:
                for caller, path in [
                    (anonymous, "/api/v1/web/inbox"),
                    (http, "/api/v1/cli/execute"),
                    (http, "/api/v1/events"),
                    (http, "/api/plugins/load"),
                ]:
                    answer = await caller.post(path, content=raw)
                    assert_bad_request(answer, says)
                # Within the bounds is still accepted.
                fine = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
                answer = await anonymous.post("/api/v1/web/inbox", content=fine)
                assert answer.status_code == 200, answer.text
            await healthy(daemon)


async def test_a_timeout_that_is_not_a_finite_number_is_a_400(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with _daemon(home) as (daemon, admin), client(daemon, admin) as http:
            for raw in (b"NaN", b"Infinity", b"1e400"):
                body = b'{"plugin_name": "web", "timeout_seconds": %s}' % raw
                answer = await http.post("/api/plugins/load", content=body)
                assert_bad_request(answer, "finite")
            await healthy(daemon)


@pytest.mark.parametrize("filename", ["..", ".", "a/..", "..\\\\..", "é" * 200])
async def test_an_upload_filename_that_is_no_file_name_is_a_400(
    tmp_path: Path, filename: str
) -> None:
    """``..`` as the archive's filename staged it as the uploads folder itself: a 500
    (IsADirectoryError) naming the daemon's home."""
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with _daemon(home) as (daemon, admin), client(daemon, admin) as http:
            files = {"archive": (filename, b"PK\x05\x06" + bytes(18), "application/zip")}
            answer = await http.post("/api/v1/plugins/install", files=files)
            assert_bad_request(answer, "is not a file name; send a name such as NAME.cwsplugin")
            assert nothing_staged(home)
            await healthy(daemon)


async def test_a_crash_answers_internal_error_with_a_correlation_id_and_no_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception's text (here naming a file) goes to the daemon's log
    under a correlation id; the client gets the id and nothing else."""
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with _daemon(home) as (daemon, _admin), client(daemon) as anonymous:
            with caplog.at_level(logging.ERROR, logger="cws.http"):
                answer = await anonymous.get("/api/v1/web/crash")
            assert answer.status_code == 500, answer.text
            problem = answer.json()
            correlation_id = problem["correlation_id"]
            assert problem["detail"] == (
                "internal error; the daemon's log has the details under correlation id"
                f" {correlation_id}"
            )
            assert SECRET not in answer.text
            assert "OSError" not in answer.text
            logged = [r for r in caplog.records if correlation_id in r.getMessage()]
            assert len(logged) == 1, [r.getMessage() for r in caplog.records]
            assert logged[0].exc_info is not None
            assert SECRET in str(logged[0].exc_info[1])
            await healthy(daemon)


def nothing_staged(home: Path) -> bool:
    uploads = home / "uploads"
    return not uploads.exists() or list(uploads.iterdir()) == []


def assert_bad_request(answer: httpx.Response, says: str) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert says in answer.json()["detail"], answer.json()["detail"]
    assert "/tmp" not in answer.text, answer.text  # the daemon's home is under /tmp
    assert "Traceback" not in answer.text, answer.text

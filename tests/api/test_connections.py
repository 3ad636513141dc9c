"""Connections (issue 16, item 11), with raw sockets against a real daemon: an idle
keep-alive connection is closed after ``keep_alive_seconds``, ``Connection: close`` and a
request refused before its body arrived close the connection after the answer, and at
``max_connections`` the connection idle the longest is closed so that a new client (and
``/healthz``) is answered. hypercorn 0.18 with quart-trio closes none of these by itself
(README, "Known issues"); ``api/_connections.py`` works around it."""

from __future__ import annotations

import contextlib
import resource
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from api._connections import OpenConnections, check_hypercorn, default_max_connections

from ..cli._cws import cws_daemon
from ._daemon import running_daemon, token

LONG = 60.0
"""A keep-alive longer than any test: a close seen sooner is not the idle timer's."""
BOUND = 5.0
"""How long a test waits for the daemon to close a connection it must close."""


def address(url: str | None) -> tuple[str, int]:
    assert url is not None
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


def head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def answer(stream: trio.SocketStream) -> tuple[int, bytes]:
    """The status and the whole answer (its head and ``Content-Length`` bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    top = data.partition(b"\r\n\r\n")[0]
    length = next(
        (int(line.split(b":")[1]) for line in top.split(b"\r\n")
         if line.lower().startswith(b"content-length:")), 0,
    )  # fmt: skip
    while len(data) < len(top) + 4 + length:
        chunk = await stream.receive_some()
        assert chunk, f"closed within the answer: {data!r}"
        data += chunk
    return int(top.split()[1]), data


async def closed_by_daemon(stream: trio.SocketStream) -> float:
    """Wait (at most :data:`BOUND`) for the daemon to close ``stream``; the seconds it took."""
    began = trio.current_time()
    with trio.fail_after(BOUND):
        while True:
            try:
                chunk = await stream.receive_some()
            except trio.BrokenResourceError:  # a reset: closed too
                break
            assert not chunk, f"unexpected bytes after the answer: {chunk!r}"
            break
    return trio.current_time() - began


def still_open(stream: trio.SocketStream) -> bool:
    """No end of stream and no reset has arrived (bytes waiting to be read are fine)."""
    fd = stream.socket.fileno()
    with socket.fromfd(fd, stream.socket.family, socket.SOCK_STREAM) as peek:
        try:
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False


def test_the_default_cap_leaves_descriptors_for_the_daemon() -> None:
    assert default_max_connections(1024) == 896  # systemd's default LimitNOFILE
    assert default_max_connections(65536) == 57344
    assert default_max_connections(256) == 192
    assert default_max_connections(resource.RLIM_INFINITY) == 57344
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections() == default_max_connections(soft) < soft
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        OpenConnections(0)


def test_a_newer_hypercorn_is_pointed_out() -> None:
    assert check_hypercorn("0.18.0") is None
    assert check_hypercorn("0.17.2") is None
    warning = check_hypercorn("0.19.0")
    assert warning is not None
    assert "hypercorn 0.19.0 is newer than 0.18" in warning
    assert "README" in warning


async def test_an_idle_connection_is_closed_after_the_keep_alive(tmp_path: Path) -> None:
    async with running_daemon(tmp_path / "home", keep_alive_seconds=0.5) as daemon:
        async with await trio.open_tcp_stream(*address(daemon.url)) as used:
            await used.send_all(head("GET", "/healthz"))
            status, _ = await answer(used)
            assert status == 200
            waited = await closed_by_daemon(used)
            assert waited >= 0.45  # the idle timer's, not an early close
        async with await trio.open_tcp_stream(*address(daemon.url)) as silent:
            assert await closed_by_daemon(silent) >= 0.45  # never sent a request


async def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async with running_daemon(tmp_path / "home", keep_alive_seconds=LONG) as daemon:
        for path in ("/healthz", "/api/v1/plugins", "/no/such/route"):
            async with await trio.open_tcp_stream(*address(daemon.url)) as stream:
                await stream.send_all(head("GET", path, "Connection: close"))
                status, data = await answer(stream)
                assert status in (200, 404), data
                assert b"connection: close" in data.lower()
                assert await closed_by_daemon(stream) < BOUND


async def test_a_request_refused_before_its_body_arrived_is_closed(tmp_path: Path) -> None:
    async with running_daemon(
        tmp_path / "home", keep_alive_seconds=LONG, open_reads=False
    ) as daemon:
        reader = await token(daemon, "events:publish")
        admin = await token(daemon, "admin")
        refusals = [
            (401, "POST", "/api/v1/events", ()),
            (403, "POST", "/api/v1/faults", (f"Authorization: Bearer {reader}",)),
            (404, "POST", "/api/v1/no/such/route", (f"Authorization: Bearer {admin}",)),
            (405, "PUT", "/healthz", (f"Authorization: Bearer {admin}",)),
        ]
        for expected, method, path, headers in refusals:
            async with await trio.open_tcp_stream(*address(daemon.url)) as stream:
                request = head(method, path, *headers, "Content-Type: application/json",
                               "Content-Length: 1000")  # fmt: skip
                await stream.send_all(request)  # and not one byte of the body
                status, data = await answer(stream)
                assert status == expected, data
                assert await closed_by_daemon(stream) < BOUND, (method, path)


async def test_at_the_cap_the_connection_idle_longest_is_closed(tmp_path: Path) -> None:
    async with (
        running_daemon(
            tmp_path / "home", keep_alive_seconds=LONG, max_connections=6, open_events=True
        ) as daemon,
        contextlib.AsyncExitStack() as streams,
    ):
        assert daemon.connections is not None
        assert daemon.connections.statistics().limit == 6

        async def connect() -> trio.SocketStream:
            stream = await trio.open_tcp_stream(*address(daemon.url))
            return await streams.enter_async_context(stream)

        streaming = await connect()  # the oldest, and busy
        await streaming.send_all(head("GET", "/api/v1/events/stream?topics=%23"))
        with trio.fail_after(BOUND):
            while b"200" not in await streaming.receive_some():
                pass
        idle = [await connect() for _ in range(5)]
        await idle[0].send_all(head("GET", "/healthz"))  # idle again after: the newest
        assert (await answer(idle[0]))[0] == 200
        await trio.testing.wait_all_tasks_blocked()
        stats = daemon.connections.statistics()
        assert (stats.open, stats.idle, stats.evicted) == (6, 5, 0)

        newcomer = await connect()
        await newcomer.send_all(head("GET", "/healthz"))
        assert (await answer(newcomer))[0] == 200
        await closed_by_daemon(idle[1])  # idle the longest: opened first, never used
        assert [still_open(stream) for stream in (streaming, *idle[2:], idle[0])] == [True] * 5
        assert daemon.connections.statistics().evicted == 1


async def test_a_thousand_idle_connections_leave_healthz_answering(tmp_path: Path) -> None:
    """The attack as reported: systemd's 1,024 descriptors and 1,000 idle connections."""
    async with cws_daemon(
        tmp_path / "home", open_files=1024, CWS_KEEP_ALIVE_SECONDS=str(LONG)
    ) as daemon:
        streams: list[trio.SocketStream] = []
        try:
            with trio.fail_after(60):
                for _ in range(1000):
                    streams.append(await trio.open_tcp_stream(*address(daemon.url)))
                async with await trio.open_tcp_stream(*address(daemon.url)) as probe:
                    await probe.send_all(head("GET", "/healthz", "Connection: close"))
                    status, data = await answer(probe)
                    assert status == 200, data
                # The first ones, idle the longest, were closed to make room.
                await closed_by_daemon(streams[0])
                assert still_open(streams[-1])
            log = daemon.log.read_text()
            assert "896 connections open, the most allowed" in log
            assert "Too many open files" not in log
        finally:
            for stream in streams:
                await stream.aclose()

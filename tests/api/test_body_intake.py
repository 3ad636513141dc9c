"""Request bodies under load (issue 16, item 3), with raw sockets against a real daemon:
a body the app does not ask for stays in the socket (an anonymous 401 reads the head,
not the megabytes sent after it); the bodies it reads go through ``[daemon]
max_body_rate`` (api/_connections.py, ``BodyIntake``), which shares its rate between
connections in turns; an archive uploaded through the bound still installs, and an
oversized one is still a 413 at the limit, chunked or declared."""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

import pytest
import trio

from api._connections import BodyIntake
from cws_actors._packaging._archive import make_archive

from ..plugins._fixtures import write_plugin
from ._daemon import TIMEOUT, running_daemon, token
from .test_connections import address, answer, closed_by_daemon, head

KIB = 1024
MIB = 1024 * KIB


async def test_a_body_the_app_does_not_ask_for_stays_in_the_socket(tmp_path: Path) -> None:
    """An anonymous POST declaring 64 MiB, sent as fast as the socket takes it: the 401
    comes, the connection is closed after it, and the daemon read the head and at most
    two reads (of 64 KiB: the head's, and one more before the request reached the app),
    not the megabytes the client had sent meanwhile."""
    async with running_daemon(tmp_path / "home", open_reads=False) as daemon:
        assert daemon.connections is not None
        before = daemon.connections.statistics().received
        sent = 0
        with trio.fail_after(TIMEOUT):
            async with await trio.open_tcp_stream(*address(daemon.url)) as stream:

                async def send() -> None:
                    nonlocal sent
                    declared = f"Content-Length: {64 * MIB}"
                    json_type = "Content-Type: application/json"
                    await stream.send_all(head("POST", "/api/v1/cli/execute", declared, json_type))
                    block = b"\0" * (64 * KIB)
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        while sent < 64 * MIB:
                            await stream.send_all(block)
                            sent += len(block)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    status, whole = await answer(stream)
                    assert status == 401, whole
                    assert b"connection: close" in whole.lower()
                    await closed_by_daemon(stream)
                    nursery.cancel_scope.cancel()
        read = daemon.connections.statistics().received - before
        assert read <= 2 * 64 * KIB, (read, sent)


async def test_the_intake_shares_its_rate_between_connections_in_turns(autojump_clock) -> None:
    """Two connections with a body each of 1 MiB waiting, at 1 MiB/s, with turns of 64 KiB
    and a bucket of 256 KiB: the 2 MiB take (2 MiB - 256 KiB) / 1 MiB/s, the turns
    alternate, each turn is a whole turn (or what the socket holds, if less)."""
    intake = BodyIntake(MIB, turn=64 * KIB, burst=256 * KIB)
    turns: list[tuple[str, int]] = []
    finished: dict[str, float] = {}

    async def connection(name: str) -> None:
        left = MIB
        while left:
            granted = await intake.take(left)
            granted = min(granted, left)  # the socket had no more
            intake.give_back(0)
            turns.append((name, granted))
            left -= granted
        finished[name] = trio.current_time()

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection, "a")
        nursery.start_soon(connection, "b")
    took = max(finished.values()) - began
    assert took == pytest.approx((2 * MIB - 256 * KIB) / MIB, rel=0.02)
    # The first turn takes the full bucket; after it, neither waits for the other's end.
    assert abs(finished["a"] - finished["b"]) <= (256 + 64) * KIB / MIB
    after_the_burst = turns[1:-4]  # then the one left takes the last turns alone
    assert all(granted == 64 * KIB for _, granted in after_the_burst)
    assert all(x[0] != y[0] for x, y in itertools.pairwise(after_the_burst))

    # A read of what is there (less than a turn) does not wait for a turn's worth.
    intake = BodyIntake(MIB, turn=64 * KIB, burst=256 * KIB)
    await intake.take(256 * KIB)  # the bucket is empty now
    now = trio.current_time()
    assert await intake.take(1000) == 1000
    assert trio.current_time() - now == pytest.approx(1000 / MIB, rel=0.02)
    with pytest.raises(ValueError, match="rate must be > 0"):
        BodyIntake(0)
    with pytest.raises(ValueError, match=r"turn must be in 1\.\.burst"):
        BodyIntake(MIB, turn=2 * MIB, burst=MIB)


async def test_an_upload_read_within_the_bound_installs_and_413s_at_the_limit(
    tmp_path: Path,
) -> None:
    """With a low ``max_body_rate`` (4 MiB/s), a real archive of about 1 MiB sent chunked
    installs, read through the bound; 3 MiB against a 2 MiB limit is a
    413 once the count passes the limit when chunked (the daemon stops reading there), and
    from its head alone with a Content-Length."""
    limit = 2 * MIB
    source = write_plugin(tmp_path / "src", "paced")
    (source / "blob.bin").write_bytes(os.urandom(MIB))  # incompressible
    archive = make_archive(source, tmp_path / "paced.cwsplugin").read_bytes()
    boundary = "paced-boundary"
    part = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=archive;"
        ' filename="paced.cwsplugin"\r\nContent-Type: application/zip\r\n\r\n'
    ).encode()
    closing = f"\r\n--{boundary}--\r\n".encode()
    async with running_daemon(
        tmp_path / "home", max_body_rate=4 * MIB, max_upload_bytes=limit
    ) as daemon:
        assert daemon.body_intake is not None
        admin = await token(daemon, "admin")

        async def upload(body: bytes, *, chunked: bool) -> tuple[int, bytes]:
            framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}"
            request = head(
                "POST", "/api/v1/plugins/install", f"Authorization: Bearer {admin}",
                f"Content-Type: multipart/form-data; boundary={boundary}", framing,
            )  # fmt: skip
            if chunked:  # in pieces of 256 KiB, as a streaming client sends them
                pieces = [body[at : at + 256 * KIB] for at in range(0, len(body), 256 * KIB)]
                body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
            async with await trio.open_tcp_stream(*address(daemon.url)) as stream:

                async def send() -> None:
                    with contextlib.suppress(trio.BrokenResourceError):
                        await stream.send_all(request + body)  # a 413 may close it first

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    result = await answer(stream)
                    nursery.cancel_scope.cancel()
                return result

        with trio.fail_after(TIMEOUT):
            before = daemon.body_intake.taken
            status, whole = await upload(part + archive + closing, chunked=True)
            assert status == 201, whole
            assert b'"name":"paced"' in whole
            # All but what came in the reads of the head (before the route asked for the
            # body: 64 KiB each, at most two) went through the bound.
            assert daemon.body_intake.taken - before >= len(archive) - 2 * 64 * KIB
            assert (tmp_path / "home/plugins/paced/blob.bin").stat().st_size == MIB

            for chunked in (True, False):
                before = daemon.body_intake.taken
                status, whole = await upload(part + bytes(3 * MIB), chunked=chunked)
                assert status == 413, whole
                assert f"over the limit of {limit} bytes".encode() in whole
                read = daemon.body_intake.taken - before
                if chunked:  # read up to the limit, and at most a read (1 MiB) past it
                    assert limit < read <= limit + 1024 * KIB + 4096
                else:  # refused from its head: nothing of it was read
                    assert read == 0

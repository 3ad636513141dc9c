"""Request bodies held to their limits while they stream in, and JSON parsed with bounds.

Quart checks ``MAX_CONTENT_LENGTH`` against a declared ``Content-Length`` and against
what is *buffered*; a body sent with ``Transfer-Encoding: chunked`` and read in parts (as
the multipart parser does) is buffered a part at a time, so nothing held it to the limit.
:class:`BoundedBody` counts every byte that arrives and stops taking them (a 413 to the
reader) as soon as the count passes the limit, whatever the framing. The limit is chosen
per request as it is created, before any byte of the body arrives: the archive uploads
get ``max_upload_bytes``, every other route ``max_body_bytes``.

:func:`parse_json` refuses what :func:`json.loads` would turn into a crash further on:
nesting deeper than :data:`MAX_JSON_DEPTH`, numbers longer than :data:`MAX_NUMBER_CHARS`
(Python refuses to convert integers of more than 4,300 digits), ``NaN`` and infinities.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Generator
from os import PathLike
from pathlib import Path
from tempfile import SpooledTemporaryFile
from typing import IO, Any, ClassVar

import attrs
import trio
from quart.wrappers.request import Body
from quart_trio.datastructures import TrioFileStorage
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.datastructures import Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    NeedData,
    State,
)

from .._connections import WANT_BODY

MAX_JSON_DEPTH = 64
"""How deep arrays and objects may nest in a JSON body."""
MAX_NUMBER_CHARS = 100
"""How many characters a number in a JSON body may have."""

_UPLOAD_PATH = re.compile(r"/api/v1/plugins/(install|[^/]+/update)")
"""The routes that take an archive (``_plugins.py``): they get the upload limit."""
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


class BodyTooLarge(RequestEntityTooLarge):
    """The body passed its limit (declared or counted while it streamed in)."""

    def __init__(self, limit: int, declared: int | None) -> None:
        got = f"got {declared}" if declared is not None else "got more than that"
        super().__init__(f"the body may be at most {limit} bytes, {got}")
        self.limit = limit
        self.declared = declared


class BoundedBody(TrioBody):
    """A request body that counts what arrives and refuses the rest past its limit."""

    limit: int | None = None
    received: int = 0
    _declared: int | None = None
    _want: Callable[[], None] | None = None
    """Tells the connection that the app reads this body (until then it stays in the
    socket: ``api._connections``)."""

    def wanted_by(self, want: Callable[[], None] | None) -> None:
        self._want = want

    def _wanted(self) -> None:
        if self._want is not None:
            self._want()
            self._want = None

    def hold_to(self, limit: int, declared: int | None) -> None:
        """Hold the body to ``limit`` bytes; ``declared`` is its ``Content-Length``.

        Called as the request is created, before any of the body has arrived.
        """
        self.limit = self._max_content_length = limit
        self._declared = declared
        too_large = declared is not None and declared > limit
        self._must_raise = BodyTooLarge(limit, declared) if too_large else None

    @property
    def complete(self) -> bool:
        """Has the whole body arrived (or been cut off at its limit)?"""
        return bool(self._complete.is_set())

    def append(self, data: bytes) -> None:
        if not data or self._must_raise is not None:
            return  # past the limit: the rest is drained and dropped, never kept
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            self._must_raise = BodyTooLarge(self.limit, self._declared)
            self._data.clear()
            self.set_complete()
            return
        super().append(data)

    def __await__(self) -> Generator[Any, None, Any]:
        self._wanted()
        return super().__await__()

    async def __anext__(self) -> bytes:
        self._wanted()
        # Quart's iterator ends (StopAsyncIteration) when the body is completed while it
        # waits, which is also how a refusal completes it: the multipart parser would
        # then see a truncated form instead of the refusal.
        try:
            return await super().__anext__()
        except StopAsyncIteration:
            if self._must_raise is not None:
                raise self._must_raise from None
            raise


class BoundedRequest(TrioRequest):
    """A request whose body is held to its route's limit from its first byte; the app
    uses a subclass with the configured limits (:func:`bounded_request_class`).

    A multipart body (an archive upload, up to ``upload_limit``) is not parsed in the
    event loop, as quart's parser would: its bytes are counted there as they arrive and
    written to an anonymous temporary file by a worker thread, then a worker thread
    parses that file (:func:`_decode_multipart`). What the loop does per chunk is a
    hand-off, so that ``/healthz`` and every other request keep their turn while a 100
    MiB upload streams in.
    """

    body_class = BoundedBody
    body_limit: ClassVar[int] = 1024 * 1024
    upload_limit: ClassVar[int] = 100 * 1024 * 1024
    spool_dir: ClassVar[Path | None] = None
    """Where uploads are spooled (anonymous files, never seen in the folder): the
    daemon's ``uploads`` folder, on disk beside the staging, rather than a ``/tmp``
    that may be memory."""
    _spooled: list[IO[bytes]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        upload = self.method == "POST" and _UPLOAD_PATH.fullmatch(self.path) is not None
        limit = self.upload_limit if upload else self.body_limit
        self.max_content_length = limit  # the multipart parser's limit too
        body = self.body
        assert isinstance(body, BoundedBody)  # the body_class above
        body.hold_to(limit, self.content_length)
        want = self.scope.get(WANT_BODY)  # set by api._connections.ConnectionGuard
        body.wanted_by(want if callable(want) else None)
        self._spooled = []

    async def _load_form_data(self) -> None:
        if self.mimetype != "multipart/form-data":
            await super()._load_form_data()  # url-encoded: a small body, in memory
            return
        async with self._parsing_lock:
            if self._form is not None:
                return
            timeout = math.inf if self.body_timeout is None else self.body_timeout
            with trio.move_on_after(timeout) as scope:
                self._form, self._files = await self._parse_multipart()
            if scope.cancelled_caught:
                raise RequestTimeout()

    async def _parse_multipart(self) -> tuple[MultiDict[str, str], MultiDict[str, Any]]:
        boundary = self.mimetype_params.get("boundary", "")
        if not boundary or not boundary.isascii():
            # As quart's parser (silent): no form at all, which the route refuses
            # saying what it expects. The body is not read.
            return MultiDict(), MultiDict()
        limits = _FormLimits(
            boundary.encode("ascii"),
            self.max_content_length,
            self.max_form_memory_size,
            self.max_form_parts,
            None if self.spool_dir is None else str(self.spool_dir),
        )
        if self.spool_dir is not None:
            self.spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        raw = tempfile.TemporaryFile(dir=self.spool_dir)  # noqa: SIM115 (closed below)
        try:
            await _spool_body(self.body, raw)
            return await trio.to_thread.run_sync(_decode_multipart, raw, limits, self._spooled)
        except ValueError:
            # Malformed (quart's parser is silent too): no form, which the route
            # refuses saying what it expects.
            self.close_spooled()
            return MultiDict(), MultiDict()
        except BaseException:
            self.close_spooled()  # refused or cancelled: nothing kept
            raise
        finally:
            with trio.CancelScope(shield=True):
                # Freeing a big file's blocks is the file system's work, not the loop's.
                await trio.to_thread.run_sync(raw.close)

    def close_spooled(self) -> None:
        """Close the files the form's parts were spooled to (anonymous files: closing
        them gives their space back). Called once the request is answered, and at once
        for a refused or cancelled upload."""
        for spooled in self._spooled:
            spooled.close()
        self._spooled.clear()


SPOOL_BATCH = 1024 * 1024
"""Bytes of an upload collected in the event loop before a worker thread writes them."""
DECODE_BLOCK = 256 * 1024
"""Bytes of a spooled upload the worker decodes at a time (each block's boundary search
and copies hold the GIL: small blocks keep the event loop's waits for it short)."""


async def _spool_body(body: Body, raw: IO[bytes]) -> None:
    """Every byte of ``body`` (held to its limit as it arrives: a
    :class:`BodyTooLarge` stops it) written to ``raw`` by a worker thread, in batches of
    about :data:`SPOOL_BATCH` bytes."""
    batch: list[bytes] = []
    size = 0
    async for chunk in body:
        batch.append(chunk)
        size += len(chunk)
        if size >= SPOOL_BATCH:
            await trio.to_thread.run_sync(raw.writelines, batch)
            batch, size = [], 0
    if batch:
        await trio.to_thread.run_sync(raw.writelines, batch)


@attrs.frozen
class _FormLimits:
    """What :func:`_decode_multipart` needs from the request (read in the event loop:
    the request's limits come from the app's config, which a worker thread cannot
    reach)."""

    boundary: bytes
    max_content_length: int | None
    max_form_memory_size: int | None
    max_form_parts: int | None
    spool_dir: str | None


def _decode_multipart(
    raw: IO[bytes], limits: _FormLimits, spooled: list[IO[bytes]]
) -> tuple[MultiDict[str, str], MultiDict[str, Any]]:
    """The fields and files of the multipart body spooled in ``raw``, in a worker
    thread: the loop of quart's ``MultiPartParser.parse``, with the same limits and
    errors (ValueError when malformed, RequestEntityTooLarge past a limit), reading
    ``raw`` a block at a time. Each file goes to a file spooled to disk past 500 KiB,
    appended to ``spooled`` as it is opened (the caller closes them)."""
    raw.seek(0)
    decoder = MultipartDecoder(
        limits.boundary, limits.max_content_length, max_parts=limits.max_form_parts
    )
    fields: list[tuple[str, str]] = []
    files: list[tuple[str, SpooledUpload]] = []
    part: Field | File | None = None
    value: list[bytes] = []  # the current field's data
    container: IO[bytes] | None = None  # the current file's
    value_size = 0
    while True:
        block = raw.read(DECODE_BLOCK)
        decoder.receive_data(block or None)  # None: the end (a truncated form is refused)
        event = decoder.next_event()
        while not isinstance(event, (Epilogue, NeedData)):
            if isinstance(event, Field):
                part, value, value_size, container = event, [], 0, None
            elif isinstance(event, File):
                part = event
                container = SpooledTemporaryFile(  # noqa: SIM115 (closed by the caller)
                    max_size=_IN_MEMORY, mode="rb+", dir=limits.spool_dir
                )
                spooled.append(container)
            elif isinstance(event, Data) and part is not None:
                if container is None:
                    value_size += len(event.data)
                    if limits.max_form_memory_size is not None and (
                        value_size > limits.max_form_memory_size
                    ):
                        raise RequestEntityTooLarge()
                    value.append(event.data)
                else:
                    container.write(event.data)
                if not event.more_data:
                    if isinstance(part, File) and container is not None:
                        container.seek(0)
                        upload = SpooledUpload(container, part.filename, part.name,
                                               headers=part.headers)  # fmt: skip
                        files.append((part.name, upload))
                    else:
                        text = b"".join(value).decode(_part_charset(part.headers), "replace")
                        fields.append((part.name, text))
            event = decoder.next_event()
        if decoder.state in (State.EPILOGUE, State.COMPLETE) or not block:
            # What follows the closing boundary is ignored: it is not read.
            return MultiDict(fields), MultiDict(files)


_IN_MEMORY = 500 * 1024
"""A file part up to this size stays in memory (werkzeug's default)."""


def _part_charset(headers: Headers) -> str:
    """A part's charset, from the safe list quart's and werkzeug's parsers accept."""
    content_type = headers.get("content-type")
    if content_type:
        charset = parse_options_header(content_type)[1].get("charset", "").lower()
        if charset in {"ascii", "us-ascii", "utf-8", "iso-8859-1"}:
            return charset
    return "utf-8"


class SpooledUpload(TrioFileStorage):
    """An uploaded file, saved by a worker thread in one go (quart-trio's ``save``
    reads 16 KiB at a time in the event loop and hands each write to a thread)."""

    async def save(self, destination: PathLike[str], buffer_size: int = 1024 * 1024) -> None:  # type: ignore[override]
        def copy() -> None:
            with open(destination, "wb") as target:
                shutil.copyfileobj(self.stream, target, buffer_size)

        await trio.to_thread.run_sync(copy)


def bounded_request_class(
    *, body_limit: int, upload_limit: int, spool_dir: Path | None = None
) -> type[BoundedRequest]:
    """The request class for an app with these limits (``max_body_bytes`` for JSON
    bodies, ``max_upload_bytes`` for archive uploads); uploads are spooled in
    ``spool_dir`` (the system's temporary folder if None)."""
    limits = {"body_limit": body_limit, "upload_limit": upload_limit, "spool_dir": spool_dir}
    return type("DaemonRequest", (BoundedRequest,), limits)


class JSONRefused(ValueError):
    """A body that is JSON but outside the bounds (too deep, a number too long, not
    finite); its message says which and what is allowed."""


def parse_json(raw: bytes) -> Any:
    """``raw`` parsed as JSON, within :data:`MAX_JSON_DEPTH` and :data:`MAX_NUMBER_CHARS`.

    Raises:
        JSONRefused: nesting too deep, a number too long, ``NaN`` or an infinity.
        json.JSONDecodeError, UnicodeDecodeError: it is not JSON.
    """
    if _opens_deeper_than(raw, MAX_JSON_DEPTH):
        raise _too_deep()  # before the recursive parser goes down every level
    try:
        value = json.loads(
            raw,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
        )
    except RecursionError:
        raise _too_deep() from None
    if _nests_deeper_than(raw, MAX_JSON_DEPTH):
        raise _too_deep()
    return value


def _too_deep() -> JSONRefused:
    return JSONRefused(
        f"arrays and objects nest deeper than {MAX_JSON_DEPTH} levels; at most"
        f" {MAX_JSON_DEPTH} are allowed"
    )


def _opens_deeper_than(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` opens more than ``limit`` arrays or objects before anything else
    (``[[[[...``, the usual shape of a body meant to exhaust a recursive parser):
    only that leading run is looked at, in C, so that such a body is refused without
    the parser descending a thousand levels. Any other too-deep body is caught by
    :func:`_nests_deeper_than` once it has parsed."""
    opened = raw[: 4 * (limit + 1)].translate(None, b" \t\r\n")
    head = len(opened) - len(opened.lstrip(b"[{"))
    return head > limit


def _nests_deeper_than(raw: bytes, limit: int) -> bool:
    """Whether valid JSON ``raw`` nests deeper than ``limit`` (brackets inside strings
    do not count); linear in the size of ``raw``."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # the common case: too few brackets to nest that deep
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b"", raw)):
        if bracket.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _check_length(text: str) -> None:
    if len(text) > MAX_NUMBER_CHARS:
        raise JSONRefused(
            f"a number has {len(text)} characters; at most {MAX_NUMBER_CHARS} are allowed"
        )


def _parse_int(text: str) -> int:
    _check_length(text)
    return int(text)


def _parse_float(text: str) -> float:
    _check_length(text)
    value = float(text)
    if not math.isfinite(value):
        raise JSONRefused(f"the number {text} is out of range; numbers must be finite")
    return value


def _refuse_constant(name: str) -> Any:
    raise JSONRefused(f"{name} is not valid JSON; numbers must be finite")

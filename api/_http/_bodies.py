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
from typing import IO, Any, ClassVar

from quart.formparser import FormDataParser
from quart_trio.wrappers.request import TrioBody, TrioRequest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import default_stream_factory

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

    async def __anext__(self) -> bytes:
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
    uses a subclass with the configured limits (:func:`bounded_request_class`)."""

    body_class = BoundedBody
    body_limit: ClassVar[int] = 1024 * 1024
    upload_limit: ClassVar[int] = 100 * 1024 * 1024
    _spooled: list[IO[bytes]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        upload = self.method == "POST" and _UPLOAD_PATH.fullmatch(self.path) is not None
        limit = self.upload_limit if upload else self.body_limit
        self.max_content_length = limit  # the multipart parser's limit too
        body = self.body
        assert isinstance(body, BoundedBody)  # the body_class above
        body.hold_to(limit, self.content_length)
        self._spooled = []

    def make_form_data_parser(self) -> FormDataParser:
        parser = super().make_form_data_parser()
        parser.stream_factory = self._spool
        return parser

    def _spool(self, *args: Any, **kwargs: Any) -> IO[bytes]:
        """Where the multipart parser writes an uploaded file (spooled to disk past
        500 KiB), remembered so that a refused upload's files are closed at once."""
        spooled = default_stream_factory(*args, **kwargs)
        self._spooled.append(spooled)
        return spooled

    async def _load_form_data(self) -> None:
        try:
            await super()._load_form_data()
        except BaseException:
            for spooled in self._spooled:
                spooled.close()  # quart's parser leaves them to the garbage collector
            raise


def bounded_request_class(*, body_limit: int, upload_limit: int) -> type[BoundedRequest]:
    """The request class for an app with these limits (``max_body_bytes`` for JSON
    bodies, ``max_upload_bytes`` for archive uploads)."""
    limits = {"body_limit": body_limit, "upload_limit": upload_limit}
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

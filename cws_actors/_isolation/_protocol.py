"""The subprocess plugin protocol: length-prefixed JSON frames over pipes, and how the
plugin model's values travel in them.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON (written and
read with msgspec). The runner speaks first: ``{"type": "hello", "protocol": 3,
"api_version": ..., "name": ...}``; a host refuses a runner that speaks another
version. Then the host sends requests
(``init``, ``call``, ``health``, ``ready``, ``status``, ``stop``), each with an ``id``
and answered by ``{"type": "result", "id": ..., "value": ...}`` or
``{"type": "error", "id": ..., "error_type": ..., "message": ...}``. Requests are
multiplexed (protocol 2): init, calls, health, readiness and status run side by side in
the runner, each in a worker task (one that stays for the next request), and their
answers come in the order they finish;
``memory_hog`` is handled in line. ``init`` carries ``api_token``: the plugin's token for
the daemon's API (``{"token", "expires_at", "url", "scopes"}``), or null.

Protocol 3 adds requests the other way: the runner asks ``{"type": "secret", "id": R,
"name": ...}`` (``ctx.secret``) or ``{"type": "api_token", "id": R}`` (a fresh token for
``ctx.api``), and the host answers ``{"type": "answer", "id": R, "value": ...}`` or
``{"type": "answer", "id": R, "error_type": "PermissionError" | "LookupError" | ...,
"message": ...}``. Their ids are the runner's own, apart from the host's.

``{"type": "cancel", "id": ...}`` cancels that request's handler (the plugin sees Trio's
cancellation; the answer is an error of type ``Cancelled``, which nobody waits for). How
many run at once is the host's to bound (the plugin's ``[concurrency]``). The runner may
send ``{"type": "publish", "topic": ..., "payload": ...}`` at any time. One more request
is a fault injected on purpose (:mod:`cws_actors.faults`): ``{"type": "memory_hog"}``,
on which the runner allocates until its memory limit ends the process (exit code 3); it
is refused with an error when no memory limit is set.

The runner's describe mode (``--describe SPEC``) writes one JSON object to stdout and
exits: the plugin class's :class:`Capabilities` (:func:`encode_capabilities`), read in
a process of its own so that a subprocess plugin's code never runs in the daemon.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from typing import Any

import attrs
import msgspec
import trio

from .._core._bus import Event
from .._core._ratelimit import RateLimit
from .._plugins._model import (
    APIEndpointSpec,
    APIRequest,
    APIResult,
    Capabilities,
    CLICommandSpec,
    CLIFlagSpec,
    CommandResult,
    EventHandlerSpec,
    Health,
    HealthStatus,
)

PROTOCOL_VERSION = 3
RUNNER_REQUESTS = frozenset({"secret", "api_token"})
"""What a runner may ask the host (protocol 3); the host answers with ``answer``."""
MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The other side broke the framing or the protocol."""


def encode_frame(message: dict[str, Any]) -> bytes:
    """The frame of ``message``: its length, then its JSON.

    Raises:
        ProtocolError: it is larger than MAX_FRAME.
        TypeError: a value in it cannot travel (not JSON).
    """
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"a frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


async def send_frame(stream: trio.abc.SendStream, message: dict[str, Any]) -> None:
    await stream.send_all(encode_frame(message))


@attrs.define(eq=False)
class FrameWriter:
    """Writes whole frames to a pipe; writers in several tasks take turns, so frames
    never interleave.

    A frame goes out in one ``write`` when the pipe has room for it, with no scheduling
    round before it (``FdStream.send_all`` starts with a checkpoint, and a free lock
    is taken without one): on a round trip of two processes every round counts. A
    frame the pipe does not take at once is finished by ``send_all``.
    """

    stream: trio.abc.SendStream
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    async def send(self, message: dict[str, Any]) -> None:
        data = encode_frame(message)
        lock = self._lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            stream = self.stream
            written = 0
            if isinstance(stream, trio.lowlevel.FdStream):
                try:
                    written = os.write(stream.fileno(), data)
                except BlockingIOError:
                    pass
                except BrokenPipeError as exc:
                    raise trio.BrokenResourceError("the pipe's reader is gone") from exc
                except OSError as exc:
                    if exc.errno == errno.EBADF:  # FdStream.aclose() closed it
                        raise trio.ClosedResourceError("the pipe was closed") from exc
                    raise
            if written < len(data):
                await stream.send_all(data[written:])
        finally:
            lock.release()


@attrs.define(eq=False)
class FrameReader:
    """Reads whole frames from a byte stream."""

    stream: trio.abc.ReceiveStream
    _buffer: bytearray = attrs.field(factory=bytearray)

    async def receive(self) -> dict[str, Any] | None:
        """The next frame, or None at a clean end of stream."""
        header = await self._exactly(_HEADER.size)
        if header is None:
            return None
        (length,) = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ProtocolError(f"announced frame of {length} bytes exceeds {MAX_FRAME}")
        body = await self._exactly(length)
        if body is None:
            raise ProtocolError("the stream ended inside a frame")
        try:
            message = _decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"a frame that is not JSON: {exc}") from None
        if not isinstance(message, dict) or "type" not in message:
            raise ProtocolError(f"a frame must be a JSON object with a 'type', got {message!r}")
        return message

    async def _exactly(self, count: int) -> bytes | None:
        while len(self._buffer) < count:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                if self._buffer:
                    raise ProtocolError("the stream ended inside a frame")
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data


def _unsupported(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} cannot travel to a subprocess plugin (not JSON)")


# msgspec's JSON: a frame's encode and decode cost a tenth of the json module's, which
# shows on a round trip of a few hundred microseconds. It writes attrs instances,
# tuples and sets as JSON objects and arrays itself (the json module needed
# `_fallback`); what JSON has no form for is refused the same way.
_encoder = msgspec.json.Encoder(enc_hook=_unsupported)
_decoder = msgspec.json.Decoder()


def _fallback(value: Any) -> Any:
    if attrs.has(type(value)):
        return attrs.asdict(value, recurse=True)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} cannot travel to a subprocess plugin (not JSON)")


def encode_event(event: Event) -> dict[str, Any]:
    return attrs.asdict(event)


def decode_event(data: dict[str, Any]) -> Event:
    return Event(**data)


def encode_request(request: APIRequest) -> dict[str, Any]:
    return {**attrs.asdict(request), "scopes": list(request.scopes)}


def decode_request(data: dict[str, Any]) -> APIRequest:
    return APIRequest(**{**data, "scopes": tuple(data.get("scopes", ()))})


def encode_result(value: Any) -> Any:
    # The fields by hand, not attrs.asdict: every answer of a plugin comes this way.
    if isinstance(value, CommandResult):
        return {"__type__": "CommandResult", **_fields(value, _COMMAND_RESULT)}
    if isinstance(value, APIResult):
        return {"__type__": "APIResult", **_fields(value, _API_RESULT)}
    if isinstance(value, Health):
        return {"__type__": "Health", "status": value.status.value, "message": value.message}
    return value


_COMMAND_RESULT = tuple(field.name for field in attrs.fields(CommandResult))
_API_RESULT = tuple(field.name for field in attrs.fields(APIResult))


def _fields(value: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(value, name) for name in names}


def decode_result(value: Any) -> Any:
    if isinstance(value, dict):
        kind = value.get("__type__")
        fields = {k: v for k, v in value.items() if k != "__type__"}
        if kind == "CommandResult":
            return CommandResult(**fields)
        if kind == "APIResult":
            return APIResult(**fields)
        if kind == "Health":
            return Health(HealthStatus(fields["status"]), fields["message"])
    return value


def encode_capabilities(capabilities: Capabilities) -> dict[str, Any]:
    """Capabilities as JSON-ready data (specs as objects, tuples as lists).

    Raises:
        TypeError: a value in a spec (a flag's default) is not JSON.
    """
    data: dict[str, Any] = json.loads(
        json.dumps(attrs.asdict(capabilities, recurse=True), default=_fallback)
    )
    return data


def decode_capabilities(data: Any) -> Capabilities:
    """The inverse of :func:`encode_capabilities`, checked as the specs check themselves.

    Raises:
        ProtocolError: ``data`` does not describe capabilities.
    """
    try:
        return Capabilities(
            cli_commands=[_command(item) for item in data.get("cli_commands", ())],
            api_endpoints=[_endpoint(item) for item in data.get("api_endpoints", ())],
            event_handlers=[EventHandlerSpec(**item) for item in data.get("event_handlers", ())],
            **{
                field: tuple(data.get(field, ()))
                for field in (
                    "template_types",
                    "service_types",
                    "auth_providers",
                    "storage_providers",
                )
            },
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise ProtocolError(f"not a description of capabilities: {exc}") from None


def _command(data: dict[str, Any]) -> CLICommandSpec:
    flags = [CLIFlagSpec(**flag) for flag in data.get("flags", ())]
    return CLICommandSpec(**{**data, "flags": flags})


def _endpoint(data: dict[str, Any]) -> APIEndpointSpec:
    limit = data.get("rate_limit")
    return APIEndpointSpec(**{**data, "rate_limit": RateLimit(**limit) if limit else None})

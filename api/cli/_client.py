"""The ``cws`` command line's client of the daemon's HTTP API (httpx, under Trio).

Where it connects: ``--url``, else ``$CWS_URL``, else ``http://127.0.0.1:8947``. Which
token it sends: ``--token``, else ``$CWS_TOKEN``, else the file ``$CWS_HOME/token``
(``~/.cws/token``) when it exists, refused (as ssh refuses a key) when others may read
it. Every failure becomes one of the CLI's errors (:mod:`api.cli._errors`): httpx's
exceptions never reach the user.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from .._home import DEFAULT_PORT, default_home
from ._errors import APIProblem, CLIError, DaemonUnreachable, NotAuthorized, UsageProblem

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
TOKEN_FILE = "token"
"""The token file's name inside the home folder (``~/.cws/token``)."""

TIMEOUT = 30.0
"""Seconds for an ordinary request."""
SLOW_TIMEOUT = 120.0
"""Seconds for operations that start plugins (install, update, load, reload)."""


@attrs.frozen
class Connection:
    """Where the daemon is and the token to show it (None: no token)."""

    url: str
    token: str | None
    home: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def resolve_connection(
    *,
    url: str | None = None,
    token: str | None = None,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Connection:
    """The connection from the options given (None: not given), then the environment,
    then the token file and the defaults.

    Raises:
        CLIError: the token file exists but cannot be read, or others may read it.
    """
    env = os.environ if env is None else env
    home = Path(home).expanduser() if home is not None else default_home(env)
    url = (url or env.get("CWS_URL") or DEFAULT_URL).rstrip("/")
    token = token or env.get("CWS_TOKEN") or _token_from_file(home / TOKEN_FILE)
    return Connection(url, token.strip() if token else None, home)


def _token_from_file(path: Path) -> str | None:
    """The token in ``path``, or None when there is no such file.

    Raises:
        CLIError: the file cannot be read, or others may read it (as ssh refuses a
            private key that is not 0600: a token readable by others is leaked).
    """
    try:
        with path.open(encoding="utf-8") as file:
            mode = os.fstat(file.fileno()).st_mode
            if mode & 0o077:
                raise CLIError(
                    f"the token file {path} is readable or writable by others"
                    f" (mode {stat.S_IMODE(mode):04o}); it must be private to you:"
                    f" `chmod 600 {path}`, then revoke the token if others could read it"
                )
            return file.read().strip() or None
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read the token file {path}: {exc}") from None


# ---------------------------------------------------------------------- responses


def _unreachable(url: str, exc: httpx.HTTPError | httpx.InvalidURL) -> CLIError:
    """The CLI error for a transport failure: nothing answering is exit code 3."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return DaemonUnreachable(url, str(exc) or type(exc).__name__)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return UsageProblem(f"the daemon's URL must look like {DEFAULT_URL}, got {url!r}")
    if isinstance(exc, httpx.TimeoutException):
        return CLIError(f"the daemon at {url} did not answer in time ({type(exc).__name__})")
    return CLIError(f"the connection to the daemon at {url} failed: {exc}")


def problem_of(response: httpx.Response) -> APIProblem:
    """The CLI error for an error response (a problem document, or anything else)."""
    title, detail = response.reason_phrase or f"HTTP {response.status_code}", ""
    extra: dict[str, Any] = {}
    try:
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        detail = response.text.strip()[:200]
    else:
        if isinstance(body, dict):
            title = str(body.get("title") or title)
            detail = str(body.get("detail") or "")
            extra = body
    kind = NotAuthorized if response.status_code in (401, 403) else APIProblem
    return kind(response.status_code, title, detail, extra)


def _json_of(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise problem_of(response)
    if not response.content:
        return None
    try:
        return json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CLIError(
            f"the daemon answered {response.request.method} {response.request.url.path}"
            f" with something that is not JSON: {response.text[:100]!r}"
        ) from None


def _event_of(data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except json.JSONDecodeError:
        event = None
    if not isinstance(event, dict):
        raise CLIError(f"the event stream sent something that is not an event: {data[:100]!r}")
    return event


class _CountingBytes(io.BytesIO):
    """An upload's bytes; reports how many httpx has read (so, sent) as it sends them."""

    def __init__(self, data: bytes, on_read: Callable[[int], None]) -> None:
        super().__init__(data)
        self._on_read = on_read

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self._on_read(len(chunk))
        return chunk


# ---------------------------------------------------------------------- the client


@attrs.define(eq=False)
class DaemonClient:
    """Open with :func:`open_client`. Every method raises a :class:`CLIError`."""

    connection: Connection
    _http: httpx.AsyncClient

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        files: Mapping[str, tuple[str, io.BytesIO, str]] | None = None,
        data: Mapping[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> Any:
        """The JSON of the daemon's answer (None for an empty one). ``data`` are form
        fields sent beside ``files``."""
        try:
            response = await self._http.request(
                method, path, json=json_body, params=params, files=files, data=data,
                timeout=timeout,
            )  # fmt: skip
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _unreachable(self.connection.url, exc) from None
        return _json_of(response)

    async def get(self, path: str, **params: str) -> Any:
        return await self.request("GET", path, params=params or None)

    async def post(self, path: str, body: Any = None, *, timeout: float = TIMEOUT) -> Any:
        return await self.request("POST", path, json_body=body, timeout=timeout)

    async def upload(
        self,
        path: str,
        archive: Path,
        *,
        signature: Path | None = None,
        on_progress: Callable[[int], None] | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> Any:
        """POST ``archive`` (and its signature) as multipart ``archive`` and ``signature``
        files, with the form ``fields``; ``on_progress`` gets the bytes of the archive
        sent since the last call."""
        try:
            data = await trio.Path(archive).read_bytes()
            sig = await trio.Path(signature).read_bytes() if signature is not None else None
        except OSError as exc:
            raise CLIError(f"cannot read {exc.filename}: {exc.strerror}") from None
        files: dict[str, tuple[str, io.BytesIO, str]] = {
            "archive": (
                archive.name,
                _CountingBytes(data, on_progress or (lambda sent: None)),
                "application/zip",
            )
        }
        if sig is not None and signature is not None:
            files["signature"] = (signature.name, io.BytesIO(sig), "application/octet-stream")
        return await self.request(
            "POST", path, files=files, data=fields or None, timeout=SLOW_TIMEOUT
        )

    async def follow_events(
        self,
        topics: list[str],
        on_event: Callable[[dict[str, Any]], None],
        *,
        on_connected: Callable[[], None] = lambda: None,
    ) -> None:
        """Follow the event stream (server-sent events) until cancelled or the daemon
        closes it; ``on_connected`` runs once the subscription is in place."""
        params = {"topics": ",".join(topics) or "#"}
        timeout = httpx.Timeout(TIMEOUT, read=None)  # a quiet stream is not a dead one
        try:
            async with self._http.stream(
                "GET", "/api/v1/events/stream", params=params, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise problem_of(response)
                data: list[str] = []
                async for line in response.aiter_lines():
                    if line.startswith(": connected"):
                        on_connected()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif not line and data:
                        on_event(_event_of("\n".join(data)))
                        data.clear()
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _unreachable(self.connection.url, exc) from None
        raise CLIError(f"the daemon at {self.connection.url} closed the event stream")


@contextlib.asynccontextmanager
async def open_client(connection: Connection) -> AsyncIterator[DaemonClient]:
    """A client of the daemon at ``connection.url``, closed when the block ends."""
    async with httpx.AsyncClient(
        base_url=connection.url, headers=connection.headers(), timeout=TIMEOUT
    ) as http:
        yield DaemonClient(connection, http)


def fetch_cli_specs(connection: Connection, *, timeout: float = 3.0) -> list[dict[str, Any]]:
    """The plugin CLI commands the daemon offers (``GET /api/v1/cli/commands``).

    Synchronous: click looks commands up in plain functions (``Group.get_command``), so
    this blocks for at most ``timeout``; nothing else runs in the CLI meanwhile.

    Raises:
        DaemonUnreachable: nothing answers.
        CLIError: the daemon answered with an error or an unexpected shape.
    """
    try:
        with httpx.Client(headers=connection.headers(), timeout=timeout) as http:
            response = http.get(f"{connection.url}/api/v1/cli/commands")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _unreachable(connection.url, exc) from None
    body = _json_of(response)
    commands = body.get("commands") if isinstance(body, dict) else None
    if not isinstance(commands, list) or not all(isinstance(c, dict) for c in commands):
        raise CLIError(f"{connection.url}/api/v1/cli/commands did not list commands")
    return commands

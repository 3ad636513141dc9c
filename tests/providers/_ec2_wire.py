"""A fake at the wire, in front of a real moto server: an HTTP server on 127.0.0.1 that
answers chosen EC2 requests with EC2's own error XML and forwards the rest to moto.

It stands in for what moto cannot do (throttle, refuse hibernation, fail with 5xx) while
the client under test speaks real HTTP through botocore.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import attrs

ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    "</Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
)


@attrs.frozen
class Fault:
    """An EC2 error answer: HTTP status, EC2 error code and message."""

    status: int
    code: str
    message: str = "injected by the test"


@attrs.frozen
class Reply:
    """A canned 200 answer (EC2 response XML)."""

    body: str


Script = Callable[[dict[str, str]], Fault | Reply | None]
"""Given one request's form parameters, the answer to give, or None to forward."""


@attrs.define(eq=False)
class EC2Front:
    """What the front server saw, and how to reach it."""

    url: str
    script: Script
    requests: list[dict[str, str]] = attrs.field(factory=list)

    @property
    def actions(self) -> list[str]:
        return [request.get("Action", "") for request in self.requests]


@contextmanager
def serve_ec2_front(upstream: str | None, script: Script) -> Iterator[EC2Front]:
    """Serve a front for ``upstream`` (a moto URL; None answers every forward with 502)."""
    front = EC2Front("", script)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            params = dict(urllib.parse.parse_qsl(body.decode()))
            with lock:
                front.requests.append(params)
                answer = front.script(params)
            if isinstance(answer, Fault):
                error = ERROR_XML.format(code=answer.code, message=answer.message)
                self._answer(answer.status, error.encode(), "text/xml")
            elif isinstance(answer, Reply):
                self._answer(200, answer.body.encode(), "text/xml")
            elif upstream is None:
                self._answer(502, b"no upstream", "text/plain")
            else:
                self._forward(upstream, body)

        def _forward(self, upstream: str, body: bytes) -> None:
            target = urllib.parse.urlsplit(upstream)
            connection = http.client.HTTPConnection(target.netloc, timeout=10)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                connection.request("POST", self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self._answer(response.status, data, response.getheader("Content-Type", "text/xml"))
            finally:
                connection.close()

        def _answer(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet; front.requests is the record

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    front.url = f"http://{host!s}:{port}"
    try:
        yield front
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def serve_silence() -> Iterator[str]:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    host, port = listener.getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        listener.close()

"""An HTTP fake of the Compute Engine v1 REST API: only the wire is faked.

It serves the paths google-cloud-compute's REST transport calls (checked by logging
them, see ``FakeCompute.requests``)::

    GET  /compute/v1/projects/{p}/zones/{z}/instances/{name}
    GET  /compute/v1/projects/{p}/zones/{z}/instances             maxResults, pageToken
    GET  /compute/v1/projects/{p}/aggregated/instances            maxResults, pageToken
    POST /compute/v1/projects/{p}/zones/{z}/instances/{name}/stop|start|suspend
    GET  /compute/v1/projects/{p}/zones/{z}/operations/{op}
    POST /compute/v1/projects/{p}/zones/{z}/operations/{op}/wait

Every poll of an operation moves it one step, PENDING -> RUNNING -> DONE, and moves its
instance along with it (RUNNING -> STOPPING -> TERMINATED for stop, TERMINATED ->
STAGING -> RUNNING for start, RUNNING -> SUSPENDING -> SUSPENDED for suspend). The fake
can fail the next N requests (503, 429), and go down and come back on the same port.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BASE = "https://www.googleapis.com/compute/v1"

# operation type -> instance status while PENDING, RUNNING, DONE
_TRANSITIONS = {
    "stop": ("RUNNING", "STOPPING", "TERMINATED"),
    "start": ("TERMINATED", "STAGING", "RUNNING"),
    "suspend": ("RUNNING", "SUSPENDING", "SUSPENDED"),
}
_OP_STEPS = ("PENDING", "RUNNING", "DONE")
_ERROR_STATUS = {404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}

_INSTANCE = re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)$")
_ACTION = re.compile(
    r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)/(stop|start|suspend)$"
)
_ZONE_LIST = re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/instances$")
_AGGREGATED = re.compile(r"^/compute/v1/projects/([^/]+)/aggregated/instances$")
_OPERATION = re.compile(r"^/compute/v1/projects/([^/]+)/zones/([^/]+)/operations/([^/]+?)(/wait)?$")


def make_instance(
    name: str,
    *,
    zone: str = "us-central1-a",
    project: str = "proj",
    status: str = "RUNNING",
    machine_type: str = "e2-medium",
    labels: dict[str, str] | None = None,
    created: str = "2024-05-01T10:00:00.000-07:00",
    last_start: str | None = None,
) -> dict[str, Any]:
    """An instance resource as the API returns it."""
    zone_url = f"{BASE}/projects/{project}/zones/{zone}"
    instance: dict[str, Any] = {
        "kind": "compute#instance",
        "id": str(zlib.crc32(f"{zone}/{name}".encode())),
        "name": name,
        "zone": zone_url,
        "machineType": f"{zone_url}/machineTypes/{machine_type}",
        "status": status,
        "creationTimestamp": created,
        "labels": dict(labels or {}),
        "selfLink": f"{zone_url}/instances/{name}",
    }
    if last_start is not None:
        instance["lastStartTimestamp"] = last_start
    return instance


class FakeCompute:
    """The fake's state and its server. ``start()`` binds 127.0.0.1 port 0 the first
    time and the same port after ``go_down()``."""

    def __init__(self, *, project: str = "proj", zones: tuple[str, ...] = ()) -> None:
        self.project = project
        self.zones = list(zones)
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}
        self.operations: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        """(method, path) of every request, in order."""
        self.queries: list[dict[str, str]] = []
        """The query parameters of every request, in the order of ``requests``."""
        self.transitions: list[tuple[str, str, str]] = []
        """(operation, its status, its instance's status) at creation and at each poll."""
        self._failures: list[int | None] = []
        self._lock = threading.Lock()
        self.operations_open = threading.Event()
        """Cleared by ``hold_operations``: polls of an operation wait (up to 60 s) until
        ``release_operations``, as a long cloud operation would keep them waiting."""
        self.operations_open.set()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, instance: dict[str, Any]) -> None:
        zone = instance["zone"].rsplit("/", 1)[-1]
        if zone not in self.zones:
            self.zones.append(zone)
        self.instances[zone, instance["name"]] = instance

    def status(self, zone: str, name: str) -> str:
        return str(self.instances[zone, name]["status"])

    def fail_next(self, count: int, *, status: int = 503, after: int = 0) -> None:
        """Answer the next ``count`` requests with ``status`` instead, once ``after``
        requests have been answered as usual (``after=1``: fail a listing's second page)."""
        with self._lock:
            self._failures.extend([None] * after + [status] * count)

    def hold_operations(self) -> None:
        self.operations_open.clear()

    def release_operations(self) -> None:
        self.operations_open.set()

    def start(self) -> None:
        fake = self

        class Handler(_Handler):
            compute = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # a short poll interval: go_down() (shutdown) waits for one
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def go_down(self) -> None:
        """Stop serving and close the listening socket: connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
            self._server = self._thread = None

    # -- request handling, called from the server's threads --

    def handle(self, method: str, url: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(url)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        if _OPERATION.match(parts.path):
            self.operations_open.wait(timeout=60)  # outside the lock: others go on
        with self._lock:
            self.requests.append((method, parts.path))
            self.queries.append(query)
            failure = self._failures.pop(0) if self._failures else None
            if failure is not None:
                return _error(failure, "injected failure")
            return self._route(method, parts.path, query)

    def _route(self, method: str, path: str, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if method == "GET" and (match := _INSTANCE.match(path)):
            return self._get_instance(*match.groups())
        if method == "GET" and (match := _ZONE_LIST.match(path)):
            project, zone = match.groups()
            if project != self.project:
                return _error(404, f"The resource 'projects/{project}' was not found")
            items = [i for (z, _), i in self.instances.items() if z == zone]
            page, token = _page(items, query)
            body: dict[str, Any] = {"kind": "compute#instanceList", "items": page}
            return 200, _with_token(body, token)
        if method == "GET" and (match := _AGGREGATED.match(path)):
            if match.group(1) != self.project:
                return _error(404, f"The resource 'projects/{match.group(1)}' was not found")
            return self._aggregated(query)
        if method == "POST" and (match := _ACTION.match(path)):
            return self._act(*match.groups())
        if match := _OPERATION.match(path):
            _project, zone, name, wait = match.groups()
            if (method == "GET" and not wait) or (method == "POST" and wait):
                return self._poll(zone, name)
        return _error(404, f"no route for {method} {path}")

    def _get_instance(self, project: str, zone: str, name: str) -> tuple[int, dict[str, Any]]:
        instance = self.instances.get((zone, name))
        if instance is None or project != self.project:
            return _error(
                404,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
            )
        return 200, instance

    def _aggregated(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        everything = sorted(self.instances.items())
        page, token = _page([instance for _, instance in everything], query)
        items: dict[str, Any] = {}
        for zone in self.zones:
            in_zone = [i for i in page if i["zone"].endswith(f"/zones/{zone}")]
            if in_zone:
                items[f"zones/{zone}"] = {"instances": in_zone}
            else:
                items[f"zones/{zone}"] = {
                    "warning": {"code": "NO_RESULTS_ON_PAGE", "message": "no results"}
                }
        return 200, _with_token({"kind": "compute#instanceAggregatedList", "items": items}, token)

    def _act(self, project: str, zone: str, name: str, action: str) -> tuple[int, dict[str, Any]]:
        status, instance = self._get_instance(project, zone, name)
        if status != 200:
            return status, instance
        op_name = f"operation-{next(self._ids)}-{action}"
        zone_url = f"{BASE}/projects/{project}/zones/{zone}"
        operation = {
            "kind": "compute#operation",
            "id": str(next(self._ids)),
            "name": op_name,
            "status": "PENDING",
            "zone": zone_url,
            "targetLink": instance["selfLink"],
            "operationType": action,
            "selfLink": f"{zone_url}/operations/{op_name}",
        }
        self.operations[zone, op_name] = operation
        instance["status"] = _TRANSITIONS[action][0]
        self.transitions.append((op_name, "PENDING", instance["status"]))
        return 200, dict(operation)

    def _poll(self, zone: str, name: str) -> tuple[int, dict[str, Any]]:
        operation = self.operations.get((zone, name))
        if operation is None:
            return _error(404, f"The resource 'operations/{name}' was not found")
        step = min(_OP_STEPS.index(operation["status"]) + 1, len(_OP_STEPS) - 1)
        operation["status"] = _OP_STEPS[step]
        instance = self.instances[zone, operation["targetLink"].rsplit("/", 1)[-1]]
        instance["status"] = _TRANSITIONS[operation["operationType"]][step]
        if operation["operationType"] == "start" and step == len(_OP_STEPS) - 1:
            instance["lastStartTimestamp"] = "2024-06-01T12:00:00.000+00:00"
        self.transitions.append((name, operation["status"], instance["status"]))
        return 200, dict(operation)


def _page(items: list[dict[str, Any]], query: dict[str, str]) -> tuple[list[Any], str | None]:
    size = int(query.get("maxResults", "500"))
    start = int(query.get("pageToken", "0"))
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def _with_token(body: dict[str, Any], token: str | None) -> dict[str, Any]:
    if token is not None:
        body["nextPageToken"] = token
    return body


def _error(code: int, message: str) -> tuple[int, dict[str, Any]]:
    """Google's error JSON shape."""
    reason = {404: "notFound", 429: "rateLimitExceeded", 503: "backendError"}.get(code, "error")
    return code, {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": _ERROR_STATUS.get(code, "UNKNOWN"),
        }
    }


class _Handler(BaseHTTPRequestHandler):
    compute: FakeCompute

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._answer("POST")

    def _answer(self, method: str) -> None:
        status, body = self.compute.handle(method, self.path)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the fake records requests in FakeCompute.requests instead of on stderr

"""The resilience suite, API fuzzing: requests generated from the daemon's own OpenAPI
document (schemathesis over Hypothesis), valid ones and deliberately invalid ones, sent to
a real daemon on 127.0.0.1 with a token that holds every scope, so that the mutating
routes are reached too. No request may get a 5xx, and every error is a problem document
that says what was wrong.

The examples are derandomized (the same document gives the same requests on every run)
and bounded per operation, so that the suite runs in well under a minute."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import hypothesis
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from tests.api._daemon import client, running_daemon, token

# Generating, sending and checking ~1,500 requests; the bound is for a loaded machine.
TIMEOUT = 90
# Every route answers in milliseconds here; a request still open after this is a handler
# that does not end (and holds its connection meanwhile).
ANSWER_WITHIN = 5
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 20}
# The event stream never ends by design: a request to it would wait forever.
EXCLUDED = {("GET", "/api/v1/events/stream")}
# Injecting faults and starting chaos runs break actors on purpose (a fuzzed "hang" on
# "/**" would make every later plugin call a 504, rightly): they are fuzzed with their
# targets moved under /sandbox, where no actor lives. A target that is not a string, or
# not a path, is left as generated, for the daemon to refuse.
SANDBOXED = {("POST", "/api/v1/faults"), ("POST", "/api/v1/chaos")}
SANDBOX = "/sandbox"


def sandbox(case: Any) -> None:
    body = case.body
    if (case.method.upper(), case.path) not in SANDBOXED or not isinstance(body, dict):
        return
    target = body.get("target")
    if isinstance(target, str) and target.startswith("/"):
        case.body = {**body, "target": SANDBOX + target}
    elif "target" not in body and case.path == "/api/v1/chaos":  # the default: /plugins/*
        case.body = {**body, "target": SANDBOX + "/*"}


# A plugin whose commands and endpoints are all harmless whatever the arguments (the
# tests' echo plugin has commands that hang, spin or SIGKILL their process: in process,
# that would be the daemon, which is not what this suite is about).
PLUGIN = """
from cws_actors import (
    APIEndpointSpec, APIResult, Capabilities, CLICommandSpec, CLIFlagSpec, CommandResult,
    EventHandlerSpec, Plugin,
)


class FuzzPlugin(Plugin):
    capabilities = Capabilities(
        cli_commands=[
            CLICommandSpec("fuzz", handler="repeat", flags=[
                CLIFlagSpec("text", required=True), CLIFlagSpec("times", type="int", default=1),
            ]),
        ],
        api_endpoints=[
            APIEndpointSpec("/api/v1/fuzz/open", handler="answer", protected=False),
            APIEndpointSpec("/api/v1/fuzz/items/{item}", handler="answer", method="PUT"),
            APIEndpointSpec("/api/v1/fuzz/scoped", handler="answer", permissions=["fuzz.read"]),
        ],
        event_handlers=[EventHandlerSpec("fuzz.*", handler="on_event")],
    )

    async def repeat(self, args):
        return CommandResult(" ".join([args["text"]] * min(args["times"], 10)))

    async def answer(self, request):
        return APIResult(200, {"query": dict(request.query)})

    async def on_event(self, event):
        pass
"""

MANIFEST = """
[plugin]
name = "fuzz"
version = "1.0.0"
api_version = "1.0"
entry = "fuzz_plugin:FuzzPlugin"
"""


def write_fuzz_plugin(plugins: Path) -> None:
    folder = plugins / "fuzz"
    folder.mkdir(parents=True)
    (folder / "plugin.toml").write_text(textwrap.dedent(MANIFEST))
    (folder / "fuzz_plugin.py").write_text(PLUGIN)


def problems_in(response: schemathesis.Response) -> str | None:
    """What is wrong with this answer, or None."""
    status = response.status_code
    if status >= 500:
        return f"a {status}"
    if status >= 400:
        # schemathesis keeps each header as a list of its values.
        if response.headers.get("content-type") != ["application/problem+json"]:
            return f"a {status} that is not a problem document"
        try:
            body = response.json()
        except ValueError:
            return f"a {status} whose body is not JSON"
        if body.get("status") != status or not body.get("detail"):
            return f"a {status} problem without its status or a detail"
    return None


def fuzz_operation(
    operation: Any, base_url: str, bearer: str, mode: GenerationMode, found: list[str]
) -> int:
    """Send ``operation``'s generated cases; append what went wrong to ``found``."""
    sent = 0
    hung = False

    @hypothesis.settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        derandomize=True,
        # No shrinking: a failure is reported as found, and the run stays bounded.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Any) -> None:
        nonlocal sent, hung
        if hung:
            return  # one hung request says it; more would only cost their timeouts
        sent += 1
        sandbox(case)
        try:
            response = case.call(
                base_url=base_url,
                headers={"Authorization": f"Bearer {bearer}"},
                timeout=ANSWER_WITHIN,
            )
        except requests.Timeout:
            found.append(f"no answer in {ANSWER_WITHIN} s to {case.as_curl_command()}")
            hung = True
            return
        problem = problems_in(response)
        if problem is not None:
            found.append(
                f"{problem} for {case.as_curl_command()} ({mode.value}): {response.text[:300]}"
            )

    try:
        send()
    except hypothesis.errors.Unsatisfiable:
        # Nothing can be made invalid: no parameters and no body, or only free-form
        # strings (a path segment that any text fits).
        if mode is not GenerationMode.NEGATIVE:
            raise
    return sent


async def test_generated_requests_never_get_a_5xx(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_fuzz_plugin(home / "plugins")
    with trio.fail_after(TIMEOUT):
        async with running_daemon(home) as daemon:
            admin = await token(daemon, "admin")
            async with client(daemon) as http:
                loaded = await http.post(
                    "/api/v1/plugins/fuzz/load", headers={"Authorization": f"Bearer {admin}"}
                )
                assert loaded.status_code == 200, loaded.text
                document = (await http.get("/openapi.json")).json()
            schema = schemathesis.openapi.from_dict(document)
            operations = []
            for result in schema.get_all_operations():
                # The daemon's own document must be one that a client can read whole.
                assert isinstance(result, Ok), result.err()
                operation = result.ok()
                if (operation.method.upper(), operation.path) not in EXCLUDED:
                    operations.append(operation)
            # Every route in the document, the plugin's included, is fuzzed.
            assert {op.path for op in operations} >= {
                "/api/v1/plugins/{name}/{operation}",
                "/api/v1/events",
                "/api/v1/cli/execute",
                "/api/v1/fuzz/items/{item}",
                "/api/v1/faults",
                "/api/v1/chaos",
            }
            assert daemon.url is not None
            found: list[str] = []
            sent = dict.fromkeys(EXAMPLES, 0)
            for operation in operations:
                for mode in EXAMPLES:
                    # requests is blocking: send from a worker thread while this Trio
                    # run serves the daemon.
                    sent[mode] += await trio.to_thread.run_sync(
                        fuzz_operation, operation, daemon.url, admin, mode, found
                    )
            async with client(daemon) as http:
                alive = await http.get("/healthz")  # the daemon outlived all of it
                fuzz = await http.get("/api/v1/fuzz/open")  # and the plugin was not hit
            reached = [r.target for r in daemon.runtime.faults.list(include_finished=True)]
    assert alive.status_code == 200
    assert fuzz.status_code == 200
    assert reached, "no generated fault was accepted: the sandboxed routes were not reached"
    assert all(target.startswith(SANDBOX) for target in reached), reached
    # The generators did produce requests, invalid ones included.
    assert sent[GenerationMode.POSITIVE] >= len(operations) * 10
    assert sent[GenerationMode.NEGATIVE] >= 100
    assert found == [], json.dumps(found, indent=1)

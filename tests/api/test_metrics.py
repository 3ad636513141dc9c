"""``/metrics`` under hostile traffic, against a real daemon: whatever methods, paths and
command words clients send, every label keeps a bounded set of values (methods from a
fixed list or ``other``, routes as templates, plugins by their registered name); the
``process_*`` and ``python_*`` collectors are on; and Prometheus' own ``promtool check
metrics`` (Debian's ``prometheus`` package) finds nothing to say about a scrape."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from quart_trio import QuartTrio

from api._daemon import Daemon
from api._http._app import BLUEPRINTS
from api._metrics import METHODS, UNMATCHED

from ._daemon import TIMEOUT, client, running_daemon, token
from ._plugin import write_web_plugin

PROMTOOL = "promtool"
HOSTILE = 40
"""How many distinct made-up methods, paths and command words each kind of abuse sends."""


@pytest.fixture
async def daemon(tmp_path: Path) -> Daemon:  # type: ignore[misc]
    home = tmp_path / "home"
    # Registered as "webby"; its command's word is "web": the label must be the former.
    write_web_plugin(home / "plugins", name="webby")
    async with running_daemon(home) as running:
        yield running


async def hostile_traffic(daemon: Daemon) -> str:
    """Odd methods (no token), bogus commands, many distinct paths; then a scrape."""
    bearer = await token(daemon, "admin")
    with trio.fail_after(TIMEOUT):
        async with client(daemon) as anonymous, client(daemon, bearer) as http:
            for i in range(HOSTILE):
                await anonymous.request(f"BAZ{i:05d}", "/healthz")
                await anonymous.request(f"X-ODD-{i}", f"/nowhere/{i}")
                await anonymous.get(f"/nowhere/{i}/deeper")
                await http.get(f"/api/v1/plugins/nosuch{i}")
                await http.put(f"/api/v1/web/items/{i}", json={"n": i})
                bogus = await http.post("/api/v1/cli/execute", json={"args": [f"bogus-{i}"]})
                assert bogus.json()["exit_code"] == 2, bogus.text
            ran = await http.post("/api/v1/cli/execute", json={"args": ["web", "--name", "x"]})
            assert ran.json() == {"output": "hello x", "exit_code": 0}
            await http.get("/api/v1/web/open")
            response = await anonymous.get("/metrics")
    assert response.status_code == 200
    return response.text


def label_values(scrape: str) -> dict[tuple[str, str], set[str]]:
    """(family, label) -> the values that label took in ``scrape``."""
    values: dict[tuple[str, str], set[str]] = defaultdict(set)
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            for label, value in sample.labels.items():
                values[family.name, label].add(value)
    return values


def series(scrape: str, family_name: str) -> int:
    """How many distinct label sets the family has (a histogram's buckets counted once)."""
    return len(
        {
            frozenset((k, v) for k, v in sample.labels.items() if k != "le")
            for family in text_string_to_metric_families(scrape)
            if family.name == family_name
            for sample in family.samples
        }
    )


async def test_labels_stay_bounded_under_hostile_traffic(daemon: Daemon) -> None:
    scrape = await hostile_traffic(daemon)
    values = label_values(scrape)
    core = core_routes()
    plugin_routes = {spec.path for _, spec in daemon.host.api_endpoints()}

    methods = values["cws_http_requests", "method"]
    assert methods <= METHODS | {"other"}, methods
    assert {"GET", "PUT", "POST", "other"} <= methods
    routes = values["cws_http_requests", "route"]
    assert routes <= core | plugin_routes | {UNMATCHED}, routes - core
    assert {"/api/v1/plugins/<name>", "/api/v1/web/items/{item}", UNMATCHED} <= routes
    assert "/<path:subpath>" not in routes  # the catch-all is no template

    # The plugin label is the registered name, for CLI and API calls alike; bogus
    # command words never appear.
    assert values["cws_plugin_handler_seconds", "plugin"] == {"webby"}
    assert values["cws_plugin_handler_seconds", "kind"] == {"cli", "api"}

    # 5 kinds of request x 40 distinct values each: the series stay a handful.
    assert series(scrape, "cws_http_requests") <= 12, series(scrape, "cws_http_requests")
    assert series(scrape, "cws_plugin_handler_seconds") == 2

    names = {family.name for family in text_string_to_metric_families(scrape)}
    assert {"process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds",
            "process_start_time_seconds", "python_info",
            "python_gc_objects_collected"} <= names  # fmt: skip


def core_routes() -> set[str]:
    """The daemon's own route templates: the rules of an app with its blueprints."""
    app = QuartTrio("routes")
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return {rule.rule for rule in app.url_map.iter_rules()}


def promtool() -> str:
    found = shutil.which(PROMTOOL)
    if found is None:
        pytest.fail(
            "the metrics lint needs promtool: `apt-get install prometheus` (Debian's package"
            " provides /usr/bin/promtool)"
        )
    return found


async def test_promtool_finds_nothing_to_say_about_a_scrape_after_traffic(
    daemon: Daemon,
) -> None:
    scrape = await hostile_traffic(daemon)
    checked = await trio.run_process(
        [promtool(), "check", "metrics"],
        stdin=scrape.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    said = (checked.stdout + checked.stderr).decode()
    assert checked.returncode == 0, said
    assert not said.strip(), said


async def test_an_unmatched_request_is_counted_under_fixed_labels(daemon: Daemon) -> None:
    with trio.fail_after(TIMEOUT):
        async with client(daemon) as http:
            assert (await http.request("BAZ27862", "/healthz")).status_code == 405
            scrape = (await http.get("/metrics")).text
    assert 'cws_http_requests_total{method="other",route="<unmatched>",status="405"} 1.0' in scrape
    assert "BAZ27862" not in scrape

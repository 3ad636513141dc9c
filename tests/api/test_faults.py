"""``/api/v1/faults`` and ``/api/v1/chaos`` on a real daemon (hypercorn on 127.0.0.1),
and ``cws chaos run`` against it through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from ..cli._cws import create_token, cws, cws_daemon
from ..plugins.test_host import wait_until
from ._daemon import TIMEOUT, client, running_daemon, token
from .test_instances import write_provider


async def test_inject_list_fire_and_clear_faults_over_http(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_provider(home / "plugins")
    with trio.fail_after(TIMEOUT):
        async with running_daemon(home) as daemon:
            injector = await token(daemon, "faults:inject")
            other = await token(daemon, "instances:manage")
            async with client(daemon, injector) as http, client(daemon, other) as weak:
                refused = await weak.post(
                    "/api/v1/faults", json={"target": "/plugins/memory", "spec": "crash"}
                )
                assert refused.status_code == 403
                bad = await http.post(
                    "/api/v1/faults", json={"target": "/plugins/memory", "spec": "crash,jitter:2"}
                )
                assert bad.status_code == 400
                assert "jitter" in bad.json()["detail"]
                in_process = await http.post(
                    "/api/v1/faults", json={"target": "/plugins/memory", "spec": "kill"}
                )
                assert in_process.status_code == 400  # no process of its own to kill
                assert (await http.get("/api/v1/faults")).json()["faults"] == []  # nothing kept

                made = await http.post(
                    "/api/v1/faults",
                    json={"target": "/plugins/memory", "spec": "error_rate:1 times 2"},
                )
                assert made.status_code == 201
                assert made.json()["matches"] == ["/plugins/memory"]
                (fault,) = made.json()["faults"]
                assert (fault["kind"], fault["state"]) == ("error_rate", "active")
                for _ in range(2):
                    answer = await http.get("/api/v1/instances/memory/i-1")
                    assert answer.status_code >= 500 or answer.status_code == 502
                assert (await http.get("/api/v1/instances/memory/i-1")).status_code == 200
                spent = (await http.get(f"/api/v1/faults/{fault['id']}")).json()
                assert (spent["state"], spent["fired"]) == ("spent", 2)
                fired = (await http.get("/api/v1/faults/firings")).json()["firings"]
                assert [f["fault_id"] for f in fired] == [fault["id"]] * 2

                await http.post(
                    "/api/v1/faults", json={"target": "/plugins/*", "spec": "latency:1ms"}
                )
                listed = (await http.get("/api/v1/faults")).json()["faults"]
                assert [f["text"] for f in listed] == ["latency:1ms"]
                gone = await http.delete(f"/api/v1/faults/{fault['id']}")
                assert gone.status_code == 404  # already spent
                cleared = (await http.delete("/api/v1/faults?target=/plugins/*")).json()
                assert [f["text"] for f in cleared["cleared"]] == ["latency:1ms"]
                assert (await http.get("/api/v1/faults")).json()["faults"] == []


async def test_a_chaos_run_over_http_reports_and_leaves_no_fault(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_provider(home / "plugins")
    with trio.fail_after(TIMEOUT):
        async with running_daemon(home) as daemon:
            injector = await token(daemon, "faults:inject")
            async with client(daemon, injector) as http:
                bad = await http.post(
                    "/api/v1/chaos", json={"faults": "crash", "target": "/nowhere"}
                )
                assert bad.status_code == 400
                assert "no actor matches" in bad.json()["detail"]
                unreachable = await http.post("/api/v1/chaos", json={"faults": "kill:every 1s"})
                assert unreachable.status_code == 400  # /plugins/memory runs in the daemon
                assert "needs a subprocess plugin" in unreachable.json()["detail"]
                unknown = await http.post("/api/v1/chaos", json={"faults": "crash", "speed": 2})
                assert unknown.status_code == 400
                assert "speed" in unknown.json()["detail"]

                # Seed 27: the plugin's first four messages meet drop, drop, crash, crash
                # (decisions follow each actor's own message sequence), so both fire
                # however many asks the backoff refuses afterwards.
                plan = {
                    "faults": "crash:0.2,drop:0.1", "target": "/plugins/*", "seed": 27,
                    "duration": "1s", "rate": 50, "ask_timeout": "200ms", "settle": "5s",
                }  # fmt: skip
                started = await http.post("/api/v1/chaos", json=plan)
                assert started.status_code == 202, started.text
                run_id = started.json()["id"]
                busy = await http.post("/api/v1/chaos", json=plan)
                assert busy.status_code == 409

                async def finished() -> bool:
                    view = (await http.get(f"/api/v1/chaos/{run_id}")).json()
                    return view["state"] in ("done", "failed")

                await wait_until(finished)
                view = (await http.get(f"/api/v1/chaos/{run_id}")).json()
                assert view["state"] == "done", view
                report = view["report"]
                asks = report["asks"]
                assert report["targets"] == ["/plugins/memory"]
                assert asks["sent"] == 50
                assert (
                    asks["ok"] + asks["failed"] + asks["timed_out"] + sum(asks["refused"].values())
                    == asks["sent"]
                )
                firings = report["faults"]["firings_by_kind"]
                assert firings["crash"] >= 1
                assert firings["drop"] >= 1
                assert report["restarts"]["total"] >= firings["crash"] - 1
                assert report["dead_letters"].get("fault", 0) >= firings["drop"]
                assert report["messages"]["dead_lettered"] == firings["drop"]
                assert report["not_ready_at_end"] == []
                assert report["recovery"]["count"] >= 1
                assert "| restarts |" in view["markdown"]
                assert (await http.get("/api/v1/faults")).json()["faults"] == []


async def test_cws_faults_and_cws_chaos_run_through_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_provider(home / "plugins")
    async with cws_daemon(home) as daemon:
        with trio.fail_after(60):
            env = daemon.env | {"CWS_TOKEN": await create_token(daemon, "faults:inject")}
            injected = await cws("faults", "inject", "/plugins/memory", "latency:5ms", env=env)
            assert injected.code == 0, injected.err
            assert "latency:5ms on /plugins/memory" in injected.out
            assert injected.err == ""
            waiting = await cws("faults", "inject", "/plugins/later", "crash", env=env)
            assert waiting.code == 0, waiting.err
            assert "warning: no actor matches '/plugins/later' now" in waiting.err
            empty = await cws("faults", "inject", "", "crash", env=env)
            assert empty.code == 2
            assert "TARGET" in empty.err
            assert "empty" in empty.err
            zero = await cws("chaos", "run", "--duration", "0s", "--faults", "crash", env=env)
            assert zero.code == 2
            assert "more than 0 seconds" in zero.err
            listed = await cws("faults", "list", env=env)
            assert "latency:5ms" in listed.out
            bad = await cws("faults", "inject", "/plugins/memory", "crash:2", env=env)
            assert bad.code == 1
            assert "crash" in bad.err
            cleared = await cws("faults", "clear", env=env)
            assert "cleared 2 fault(s)" in cleared.out

            reports = tmp_path / "reports"
            run = await cws(
                "chaos", "run", "--seed", "3", "--duration", "1s", "--faults", "crash:0.1",
                "--rate", "40", "--ask-timeout", "300ms", "--report", str(reports), env=env,
            )  # fmt: skip
            assert run.code == 0, (run.err, daemon.log.read_text()[-2000:])
            assert run.out.startswith("# Chaos run, seed 3")
            assert "HTTP /healthz" in run.out
            report = json.loads((reports / "chaos-3.json").read_text())
            assert report["asks"]["sent"] == 40
            assert report["health_probe_latency"]["count"] >= 1
            assert report["health_probe_latency"]["via"] == "HTTP /healthz"
            assert (reports / "chaos-3.md").read_text() == run.out

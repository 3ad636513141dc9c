"""A plugin in a crash loop, over real HTTP (hypercorn on 127.0.0.1 port 0): it backs off,
exhausts its restart budget and is quarantined, visible in the API and cleared by hand,
while the plugin beside it answers every request and the daemon stays healthy."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from api import load_config
from api._config import ConfigError

from ..api._daemon import client, running_daemon, token
from ..cli._cws import cws, cws_env
from ..plugins.test_host import wait_until
from .test_suite_ratelimit import write_ping_plugin

BUDGET = 3  # [plugins] max_restarts: the fourth crash within the period quarantines
PACE = 0.02  # seconds between requests to each plugin


async def test_a_crash_looping_plugin_is_quarantined_while_the_others_serve(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    write_ping_plugin(home / "plugins", "loop")
    write_ping_plugin(home / "plugins", "calm")
    calm_statuses: list[int] = []
    loop_statuses: list[int] = []
    with trio.fail_after(60):
        async with running_daemon(home, max_restarts=BUDGET, restart_period=60.0) as daemon:
            admin = await token(daemon, "admin", "faults:inject")
            async with client(daemon, admin) as http:
                made = await http.post(
                    "/api/v1/faults", json={"target": "/plugins/loop", "spec": "crash:1.0"}
                )  # every message it gets crashes it
                assert made.status_code == 201, made.text

                async def loop_actor() -> dict[str, object]:
                    answer = await http.get("/api/v1/actors/plugins/loop")
                    return answer.json()  # type: ignore[no-any-return]

                async def keep_calling(path: str, statuses: list[int]) -> None:
                    while True:
                        statuses.append((await http.get(path)).status_code)
                        await trio.sleep(PACE)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keep_calling, "/api/v1/calm/ping", calm_statuses)
                    nursery.start_soon(keep_calling, "/api/v1/loop/ping", loop_statuses)

                    async def quarantined() -> bool:  # polls the API, as a dashboard would
                        # ... and the neighbour was called throughout, ten times at least.
                        state = (await loop_actor())["state"]
                        return state == "quarantined" and len(calm_statuses) >= 10

                    await wait_until(quarantined)
                    for _ in range(10):  # and the quarantined plugin answers at once
                        refused = await http.get("/api/v1/loop/ping")
                        assert refused.status_code == 503, refused.text
                    nursery.cancel_scope.cancel()

                loop = await loop_actor()
                assert loop["restarts"] == BUDGET
                assert loop["ready"] is False
                assert "InjectedFault" in str(loop["last_exit"])
                plugins = (await http.get("/api/v1/actors/plugins")).json()
                assert (plugins["state"], plugins["restarts"]) == ("running", 0)
                calm = (await http.get("/api/v1/actors/plugins/calm")).json()
                assert (calm["state"], calm["ready"], calm["restarts"]) == ("running", True, 0)
                assert (await http.get("/healthz")).json()["status"] == "ok"
                problem = refused.json()
                assert problem["title"] == "Quarantined"
                assert (
                    "plugin 'loop' is quarantined after exhausting its restart budget"
                    in (problem["detail"])
                )
                assert "POST /api/v1/actors/plugins/loop/clear-quarantine" in problem["detail"]

                # Cleared by hand (after the fault) with the CLI, it serves again.
                assert (await http.delete("/api/v1/faults")).status_code == 200
                assert daemon.url is not None
                env = cws_env(home, CWS_URL=daemon.url, CWS_TOKEN=admin)
                listed = await cws("actors", env=env)
                assert "quarantined" in listed.out, listed
                cleared = await cws("actors", "clear-quarantine", "/plugins/loop", env=env)
                assert cleared.code == 0, cleared
                assert cleared.out.startswith("/plugins/loop: "), cleared
                again = await cws("actors", "clear-quarantine", "/plugins/loop", env=env)
                assert again.code == 1, again  # not quarantined any more: a clear error
                assert "not quarantined" in again.err, again

                async def ready() -> bool:
                    return (await loop_actor())["ready"] is True

                await wait_until(ready)
                back = await http.get("/api/v1/loop/ping")
                assert back.status_code == 200, back.text

    # Every crash was one message: a 502 naming the plugin; the rest were refusals (503)
    # while it backed off or stayed quarantined. The neighbour answered everything.
    assert loop_statuses.count(502) == BUDGET + 1
    assert set(loop_statuses) <= {502, 503}
    assert set(calm_statuses) == {200}, calm_statuses


async def test_a_bad_restart_budget_is_a_clear_configuration_error(tmp_path: Path) -> None:
    config = tmp_path / "cws.toml"
    config.write_text("[plugins]\nmax_restarts = 0\n")
    with pytest.raises(ConfigError, match=r"max_restarts.*>= 1"):
        load_config(config, env={}, home=tmp_path)
    env_config = load_config(None, env={"CWS_RESTART_PERIOD": "30"}, home=tmp_path)
    assert env_config.restart_period == 30.0
    assert env_config.max_restarts == 10

"""Snoozebot's ``/api/plugins`` routes against a real daemon: one test per row of the
README's table "Snoozebot's routes" (shapes, codes and defaults of Snoozebot's Go
handlers), and the ``api_key`` body field under ``[api] snoozebot_body_auth``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from api._daemon import Daemon

from ..plugins._fixtures import write_plugin
from ._daemon import TIMEOUT, client, running_daemon, token
from ._plugin import write_web_plugin
from .test_app import assert_problem

# Fails to start on its first two tries, then starts (it counts its tries on disk).
FLAKY = """
from cws_actors import Capabilities, Plugin


class EchoPlugin(Plugin):
    capabilities = Capabilities()

    async def initialize(self, ctx, config):
        tries = ctx.data_dir / "tries"
        count = int(tries.read_text()) + 1 if tries.exists() else 1
        tries.write_text(str(count))
        if count < 3:
            raise RuntimeError(f"try {count} fails")
"""

# Never finishes starting.
STUCK = """
import trio

from cws_actors import Capabilities, Plugin


class EchoPlugin(Plugin):
    capabilities = Capabilities()

    async def initialize(self, ctx, config):
        await trio.sleep_forever()
"""


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    home = tmp_path / "home"
    write_web_plugin(home / "plugins")
    async with running_daemon(home, open_reads=False) as running:
        yield running


async def manager(daemon: Daemon) -> httpx.AsyncClient:
    return client(daemon, await token(daemon, "plugins:manage"))


async def test_list_says_active_with_provider_and_version(daemon: Daemon) -> None:
    async with await manager(daemon) as http:
        answer = await http.get("/api/plugins")
        assert answer.status_code == 200
        assert answer.json() == {
            "plugins": [{"name": "web", "provider": "web", "version": "1.0.0", "status": "active"}],
            "count": 1,
        }
        await http.post("/api/plugins/unload", json={"plugin_name": "web"})
        assert (await http.get("/api/plugins")).json() == {"plugins": [], "count": 0}
    async with client(daemon) as anonymous:  # a read: a token unless open_reads
        assert_problem(await anonymous.get("/api/plugins"), 401, "token")


async def test_a_trailing_slash_redirects_to_the_list(daemon: Daemon) -> None:
    async with await manager(daemon) as http:
        answer = await http.get("/api/plugins/")
        assert answer.status_code == 302
        assert answer.headers["location"] == "/api/plugins"


async def test_discover_items_carry_provider_when_loaded_and_autoload_loads(
    tmp_path: Path, daemon: Daemon
) -> None:
    write_plugin(daemon.config.home / "plugins", "echo")
    async with await manager(daemon) as http:
        found = (await http.get("/api/plugins/discover")).json()
        assert set(found) == {"plugins", "count", "directory"}
        assert found["directory"] == str(daemon.host.user_dir)
        items = {item["name"]: item for item in found["plugins"]}
        assert found["count"] == 2
        assert items["web"] == {"name": "web", "loaded": True, "provider": "web",
                                "version": "1.0.0"}  # fmt: skip
        assert items["echo"] == {"name": "echo", "loaded": False}  # omitempty, as in Go
        assert "echo" not in daemon.host.loaded_names()
        loaded = (await http.get("/api/plugins/discover?autoload=true")).json()
        echo = next(item for item in loaded["plugins"] if item["name"] == "echo")
        assert echo == {"name": "echo", "loaded": True, "provider": "echo", "version": "1.0.0"}
        assert "echo" in daemon.host.loaded_names()
    async with client(daemon, await token(daemon, "events:read")) as reader:
        # A GET that loads needs the scope that loading needs.
        assert_problem(await reader.get("/api/plugins/discover?autoload=true"), 403, "scope")


async def test_one_plugin_is_active_when_loaded_and_a_404_when_not(daemon: Daemon) -> None:
    async with await manager(daemon) as http:
        answer = await http.get("/api/plugins/web")
        assert answer.status_code == 200
        assert answer.json() == {
            "name": "web", "provider": "web", "version": "1.0.0", "status": "active",
            "path": str(daemon.config.home / "plugins" / "web"),
        }  # fmt: skip
        await http.post("/api/plugins/unload", json={"plugin_name": "web"})
        assert_problem(await http.get("/api/plugins/web"), 404, "'web' is not loaded")
        assert_problem(await http.get("/api/plugins/gcp"), 404, "'gcp' is not loaded")


async def test_get_on_load_and_unload_is_a_405(daemon: Daemon) -> None:
    async with await manager(daemon) as http:
        for path in ("/api/plugins/load", "/api/plugins/unload"):
            answer = await http.get(path)
            assert_problem(answer, 405, "use POST")
            assert answer.headers["allow"] == "POST"


async def test_load_answers_attempts_already_loaded_and_counts_tries(daemon: Daemon) -> None:
    plugins = daemon.config.home / "plugins"
    write_plugin(plugins, "flaky", code=FLAKY)
    write_plugin(plugins, "stuck", code=STUCK)
    await daemon.host.discover()
    with trio.fail_after(TIMEOUT):
        async with await manager(daemon) as http:
            again = await http.post("/api/plugins/load", json={"plugin_name": "web"})
            assert again.json() == {
                "success": True, "plugin_name": "web", "provider_name": "web",
                "provider_version": "1.0.0", "already_loaded": True,
            }  # fmt: skip
            await http.post("/api/plugins/unload", json={"plugin_name": "web"})
            # timeout_seconds 0 and retries below 1 are the defaults (30 s, one try).
            fresh = await http.post(
                "/api/plugins/load", json={"plugin": "web", "timeout_seconds": 0, "retries": -4}
            )
            assert fresh.status_code == 200
            assert fresh.json() == {"success": True, "plugin_name": "web", "provider_name": "web",
                                    "provider_version": "1.0.0", "attempts": 1}  # fmt: skip
            # retries counts tries: 2 tries fail (the plugin's first two), a 500 says so.
            failed = await http.post("/api/plugins/load", json={"plugin_name": "flaky",
                                                                "retries": 2})  # fmt: skip
            body = assert_problem(failed, 500, "Failed to load plugin after 2 attempts")
            assert body["attempts"] == 2
            third = await http.post("/api/plugins/load", json={"plugin_name": "flaky"})
            assert third.json()["attempts"] == 1  # no retries asked: one try, its third
            stuck = await http.post(
                "/api/plugins/load", json={"plugin_name": "stuck", "timeout_seconds": 1}
            )
            assert_problem(stuck, 500, "no answer within timeout_seconds=1")
            assert_problem(await http.post("/api/plugins/load", json={}), 400, "plugin_name")
            bad = await http.post("/api/plugins/load", json={"plugin_name": "web",
                                                             "timeout_seconds": 1.5})  # fmt: skip
            assert_problem(bad, 400, "whole number")
            assert_problem(
                await http.post("/api/plugins/load", json={"plugin_name": "ghost"}), 404, "ghost"
            )


async def test_unload_answers_duration_and_not_loaded_is_a_400_unless_forced(
    daemon: Daemon,
) -> None:
    async with await manager(daemon) as http:
        unloaded = await http.post("/api/plugins/unload", json={"plugin_name": "web"})
        assert unloaded.status_code == 200
        body = unloaded.json()
        assert isinstance(body.pop("duration_ms"), int)
        assert body == {"success": True, "plugin_name": "web", "provider_name": "web",
                        "provider_version": "1.0.0", "status": "unloaded"}  # fmt: skip
        again = await http.post("/api/plugins/unload", json={"plugin_name": "web"})
        assert_problem(again, 400, "'web' is not loaded")
        forced = await http.post("/api/plugins/unload", json={"plugin_name": "web", "force": True})
        assert forced.json() == {"success": True, "plugin_name": "web", "status": "not_loaded",
                                 "message": "Plugin was not loaded, nothing to unload"}  # fmt: skip
        assert_problem(await http.post("/api/plugins/unload", json={"plugin": ""}), 400, "name")


async def test_api_key_in_the_body_is_a_token_only_when_configured(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_web_plugin(home / "plugins")
    async with running_daemon(home, open_reads=False) as daemon:
        key = await token(daemon, "plugins:manage")
        async with client(daemon) as anonymous:
            # Off by default: the body is not read for a token, the request needs a header.
            off = await anonymous.post(
                "/api/plugins/unload", json={"plugin_name": "web", "api_key": key}
            )
            assert_problem(off, 401, "needs a token")
    async with running_daemon(home, open_reads=False, snoozebot_body_auth=True) as daemon:
        key = await token(daemon, "plugins:manage")
        weak = await token(daemon, "events:read")
        async with client(daemon) as anonymous:
            unload = {"plugin_name": "web", "api_key": key}
            assert (await anonymous.post("/api/plugins/unload", json=unload)).status_code == 200
            load = await anonymous.post("/api/plugins/load", json={**unload, "retries": 1})
            assert load.json()["attempts"] == 1
            assert_problem(
                await anonymous.post("/api/plugins/unload", json={"plugin_name": "web",
                                                                  "api_key": weak}),
                403, "plugins:manage",
            )  # fmt: skip
            assert_problem(
                await anonymous.post("/api/plugins/unload", json={"plugin_name": "web",
                                                                  "api_key": "hunter2"}),
                401, "api_key",
            )  # fmt: skip
            assert_problem(
                await anonymous.post("/api/plugins/unload", json={"plugin_name": "web"}),
                401, "needs a token",
            )  # fmt: skip
        async with client(daemon, weak) as other:
            both = await other.post("/api/plugins/unload", json=unload)
            assert_problem(both, 400, "different tokens")
        async with client(daemon, key) as header:  # the header still works
            assert (await header.post("/api/plugins/unload", json=unload)).status_code == 200
        assert "web" not in daemon.host.loaded_names()

"""The daemon's configuration, signals (SIGTERM drains, SIGHUP reloads) and the systemd
notify protocol, with a real hypercorn and real signals."""

from __future__ import annotations

import functools
import os
import signal
import socket
from pathlib import Path

import pytest
import trio

from api import DaemonConfig, load_config, serve_daemon
from api._config import ConfigError
from api._daemon import Daemon, open_daemon

from ..plugins._fixtures import write_plugin
from ..plugins.test_host import wait_until
from ._daemon import TIMEOUT, client
from ._plugin import CODE, write_web_plugin


def test_defaults_file_env_and_flags_in_that_order(tmp_path: Path) -> None:
    assert DaemonConfig().host == "127.0.0.1"  # loopback by default
    config_file = tmp_path / "cws.toml"
    config_file.write_text(
        '[daemon]\nport = 9000\nhost = "127.0.0.1"\nshutdown_grace = 3\n'
        "[plugins]\nrequire_signed = true\n"
        '[plugins.overrides.echo]\nconfig = { greeting = "hi" }\n'
        '[events]\ndurable_topics = ["instance.*", "billing.#"]\n'
    )
    env = {"CWS_PORT": "9100", "CWS_HOME": str(tmp_path / "envhome")}
    config = load_config(config_file, env=env, port=None)
    assert (config.port, config.home, config.shutdown_grace) == (9100, tmp_path / "envhome", 3.0)
    assert config.require_signed
    assert config.overrides == {"echo": {"config": {"greeting": "hi"}}}
    assert config.durable_topics == ("instance.*", "billing.#")
    assert config.source == f"embedded defaults, {config_file}, CWS_PORT, CWS_HOME"
    assert load_config(config_file, env=env, port=0).port == 0  # a flag wins
    assert load_config(None, env={}).home == Path("~/.cws").expanduser()


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[daemon\n", {}, "not valid TOML"),
        ("[deamon]\nport = 1\n", {}, "cws.toml:1: unknown table [deamon]; did you mean [daemon]?"),
        ('[daemon]\nport = "80"\n', {}, "cws.toml:2: daemon.port must be an integer, got a string"),
        (
            "[daemon]\nprot = 80\n",
            {},
            "cws.toml:2: unknown key daemon.prot; did you mean daemon.port?",
        ),
        ("", {"CWS_PORT": "eighty"}, "CWS_PORT must be an integer, got 'eighty'"),
        ("", {"CWS_REQUIRE_SIGNED": "maybe"}, "CWS_REQUIRE_SIGNED must be true or false"),
    ],
)
def test_a_bad_configuration_says_what_is_wrong(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    config_file = tmp_path / "cws.toml"
    config_file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config_file, env=env)
    assert message in str(caught.value)


def _config(home: Path, **settings: object) -> DaemonConfig:
    """As ``running_daemon`` does: reads open (these tests are not about the token)."""
    settings = {"open_reads": True, **settings}
    return load_config(
        None, env={}, home=home, port=0, entry_points=False, system_dir=home / "system", **settings
    )


def _slow(marker: Path) -> str:
    """The web plugin with a slow handler that touches ``marker`` as it starts."""
    return CODE.replace(
        "    async def broken(self, request):",
        "    async def slow(self, request):\n"
        "        import pathlib\n"
        "        import trio\n"
        f"        pathlib.Path({str(marker)!r}).touch()\n"
        "        await trio.sleep(0.5)\n"
        "        return APIResult(200, {'slow': True})\n\n"
        "    async def broken(self, request):",
    ).replace(
        'APIEndpointSpec("/api/v1/web/sick"',
        'APIEndpointSpec("/api/v1/web/slow", handler="slow", protected=False),\n'
        '            APIEndpointSpec("/api/v1/web/sick"',
    )


async def test_sigterm_lets_requests_in_flight_finish_then_stops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    in_handler = home / "plugin-data" / "web" / "in-handler"  # its sandbox lets it write there
    write_web_plugin(home / "plugins", code=_slow(in_handler))
    answers: list[int] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(
                functools.partial(serve_daemon, _config(home), on_url=lambda url: None)
            )
            await daemon.plugins_loaded.wait()

            async def slow_request() -> None:
                async with client(daemon) as http:
                    answers.append((await http.get("/api/v1/web/slow")).status_code)

            nursery.start_soon(slow_request)

            async def in_the_handler() -> bool:
                return in_handler.exists()  # the handler touches it as it starts

            await wait_until(in_the_handler)
            os.kill(os.getpid(), signal.SIGTERM)
        # serve_daemon returned: the nursery closed on its own.
    assert answers == [200]
    assert daemon.stopping


async def test_sighup_rescans_plugins(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "plugins").mkdir(parents=True)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(
                functools.partial(serve_daemon, _config(home), on_url=lambda url: None)
            )
            await daemon.plugins_loaded.wait()
            assert daemon.host.loaded_names() == []
            write_plugin(home / "plugins", "echo")
            os.kill(os.getpid(), signal.SIGHUP)

            async def reloaded() -> bool:
                return daemon.reloads > 0

            await wait_until(reloaded)
            assert daemon.host.loaded_names() == ["echo"]
            nursery.cancel_scope.cancel()


async def test_systemd_notify_ready_watchdog_and_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    address = str(tmp_path / "notify.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await listener.bind(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    messages: list[str] = []
    with listener, trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            daemon: Daemon = await nursery.start(
                functools.partial(serve_daemon, _config(home), on_url=lambda url: None)
            )
            await daemon.plugins_loaded.wait()
            while "WATCHDOG=1" not in messages:
                messages.append((await listener.recv(4096)).decode())
            os.kill(os.getpid(), signal.SIGTERM)
            while "STOPPING=1" not in messages:
                messages.append((await listener.recv(4096)).decode())
    ready = messages[0].splitlines()
    assert ready[0] == "READY=1"
    assert ready[1] == f"STATUS=serving {daemon.url}"
    assert f"MAINPID={os.getpid()}" in ready
    assert messages[-1] == "STOPPING=1"


async def test_a_reload_applies_overrides_and_names_the_settings_that_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    path = tmp_path / "cws.toml"
    base = (
        f'[daemon]\nhome = "{home}"\n'
        f'[plugins]\nentry_points = false\nsystem_dir = "{home}/system"\n'
    )
    path.write_text(base)
    config = load_config(path, env={}, port=0)
    async with open_daemon(config, config_path=path) as daemon:
        path.write_text(
            base + "max_restarts = 3\nrestart_period = 5.0\n"
            '[plugins.overrides.echo]\nconfig = { greeting = "hi" }\n'
        )
        with caplog.at_level("WARNING", logger="cws.daemon"):
            await daemon.reload()
        assert daemon.host.config.overrides == {"echo": {"config": {"greeting": "hi"}}}
        assert daemon.host.config.max_restarts == 10  # the running budget stays
        assert daemon.config.max_restarts == 3
    assert "reload: max_restarts, restart_period take effect at the next start" in caplog.text

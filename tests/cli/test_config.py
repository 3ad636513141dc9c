"""``cws config path|show|check`` and the daemon's own reading of $CWS_HOME/cws.toml: the
real executable, in subprocesses."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import httpx
import trio

from ._cws import TIMEOUT, cws, cws_daemon, cws_env, expect

EXAMPLE = Path(__file__).parents[2] / "examples" / "cws.toml"


async def test_path_names_the_file_in_the_home_and_whether_it_exists(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cws_env(home)
    missing = await cws("config", "path", env=env)
    expect(missing, 0, out=f"{home / 'cws.toml'}\n", err="does not exist: the embedded defaults")
    home.mkdir()
    (home / "cws.toml").write_text("")
    expect(await cws("config", "path", env=env), 0, out=f"{home / 'cws.toml'}\n", err="it exists")
    other = tmp_path / "other"
    by_flag = await cws("--home", str(other), "config", "path", env=env)
    expect(by_flag, 0, out=f"{other / 'cws.toml'}\n")
    named = await cws("config", "path", "--config", str(tmp_path / "x.toml"), env=env)
    expect(named, 0, out=f"{tmp_path / 'x.toml'}\n", err="the daemon would refuse to start")


async def test_show_gives_each_value_and_its_source_defaults_file_env_flags(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    path = home / "cws.toml"
    path.write_text(
        "[daemon]\nport = 9000\nshutdown_grace = 3\nhost = '127.0.0.2'\n"
        "[plugins.overrides.aws]\nconfig = { region = 'eu-west-1' }\n"
    )
    env = cws_env(home, CWS_SHUTDOWN_GRACE="4", CWS_HOST="127.0.0.3")
    shown = await cws("config", "show", "--json", "--host", "127.0.0.4", env=env)
    expect(shown, 0)
    data = json.loads(shown.out)
    assert data["file"] == {"path": str(path), "read": True}
    settings = data["settings"]

    def setting(key: str) -> tuple[object, str, str]:
        entry = settings[key]
        return entry["value"], entry["source"], entry["origin"]

    assert setting("plugins.max_restarts") == (10, "default", "embedded default")
    assert setting("daemon.port") == (9000, "file", f"{path}:2")
    assert setting("daemon.shutdown_grace") == (4.0, "env", "CWS_SHUTDOWN_GRACE")
    assert setting("daemon.host") == ("127.0.0.4", "flag", "--host")
    assert setting("daemon.home") == (str(home), "env", "CWS_HOME")
    assert setting("plugins.entry_points") == (False, "env", "CWS_ENTRY_POINTS")  # cws_env's
    assert setting("plugins.overrides.aws") == (
        {"config": {"region": "eu-west-1"}}, "file", f"{path}:5")  # fmt: skip
    assert setting("daemon.log_level") == ("INFO", "default", "embedded default")

    # The text is TOML with the same values, each line saying where its value came from.
    text = await cws("config", "show", "--host", "127.0.0.4", env=env)
    expect(text, 0)
    parsed = tomllib.loads(text.out)
    assert parsed["daemon"]["port"] == 9000
    assert parsed["plugins"]["overrides"]["aws"] == {"config": {"region": "eu-west-1"}}
    for key, entry in settings.items():
        table, _, name = key.partition(".")
        value = parsed[table]
        for part in name.split("."):
            value = value[part]
        assert value == entry["value"], key
    lines = text.out.splitlines()
    assert any(line.startswith("port = 9000") and line.endswith(f"# {path}:2") for line in lines)
    assert any(
        line.startswith('host = "127.0.0.4"') and line.endswith("# --host") for line in lines
    )
    assert any(line.endswith("# CWS_SHUTDOWN_GRACE") for line in lines)


async def test_the_file_named_by_config_replaces_the_homes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "cws.toml").write_text("[daemon]\nport = 9000\n")
    other = tmp_path / "other.toml"
    other.write_text("[daemon]\nmax_body_bytes = 2048\n")
    shown = await cws("config", "show", "--json", "--config", str(other), env=cws_env(home))
    settings = json.loads(shown.out)["settings"]
    assert settings["daemon.port"]["source"] == "default"  # the home's file is not read
    assert settings["daemon.max_body_bytes"]["origin"] == f"{other}:2"


async def test_check_names_each_bad_key_or_value_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "cws.toml"
    path.write_text(
        "[daemon]\n"
        "prot = 8080\n"
        'max_body_bytes = "1 MiB"\n'
        "log_format = 'xml'\n"
        "[plugins.overrides.gcp]\n"
        "config = { projet = 'p' }\n"
    )
    env = cws_env(tmp_path / "home")
    checked = await cws("config", "check", "--config", str(path), env=env)
    expect(checked, 1, err=f"error: {path}: 4 problems; the daemon refuses to start with it")
    assert checked.out.splitlines() == [
        f"{path}:2: unknown key daemon.prot; did you mean daemon.port?",
        f'{path}:3: daemon.max_body_bytes must be an integer, got a string ("1 MiB")',
        f'{path}:4: daemon.log_format must be one of text, json, got "xml"',
        f"{path}:6: unknown key plugins.overrides.gcp.config.projet;"
        " did you mean plugins.overrides.gcp.config.project?",
    ]
    path.write_text("[daemon]\nport = 9000\n")
    expect(await cws("config", "check", "--config", str(path), env=env), 0, out=f"{path}: ok")
    # Without --config: the home's file, and none is fine.
    home_check = await cws("config", "check", env=env)
    expect(home_check, 0, out="no such file; the embedded defaults apply")


async def test_the_shipped_example_passes_check(tmp_path: Path) -> None:
    checked = await cws("config", "check", "--config", str(EXAMPLE), env=cws_env(tmp_path))
    expect(checked, 0, out=f"{EXAMPLE}: ok")


async def test_a_daemon_with_a_bad_home_file_exits_1_naming_file_line_and_key(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "cws.toml").write_text("[daemon]\nport = 0\n\n[plugins]\nmax_restart = 3\n")
    result = await cws("daemon", env=cws_env(home))
    expect(result, 1)
    assert result.err == (
        f"error: {home / 'cws.toml'}:5: unknown key plugins.max_restart;"
        " did you mean plugins.max_restarts?\n"
    )
    assert result.out == ""
    assert not (home / "state.db").exists()  # refused before touching anything


async def test_the_daemon_reads_the_homes_file_under_env_and_flags(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # open_health = false from the file: /healthz wants a token. port = 9 loses to the
    # --port 0 that cws_daemon passes.
    (home / "cws.toml").write_text("[daemon]\nport = 9\nopen_health = false\n")
    async with cws_daemon(home) as daemon:
        assert not daemon.url.endswith(":9")
        with trio.fail_after(TIMEOUT):
            async with httpx.AsyncClient(base_url=daemon.url) as http:
                assert (await http.get("/healthz")).status_code == 401
    async with cws_daemon(home, CWS_OPEN_HEALTH="true") as daemon:  # the variable wins
        with trio.fail_after(TIMEOUT):
            async with httpx.AsyncClient(base_url=daemon.url) as http:
                assert (await http.get("/healthz")).status_code == 200

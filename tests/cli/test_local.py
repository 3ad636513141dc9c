"""``cws daemon``, ``cws token`` and a daemon that is not there: the real executable,
in subprocesses."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
from pathlib import Path

import httpx
import pytest
import trio

from api.cli import APIProblem

from ._cws import TIMEOUT, cws, cws_daemon, cws_env, expect


async def test_daemon_prints_its_url_serves_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    async with cws_daemon(tmp_path / "home") as daemon:
        assert daemon.url.startswith("http://127.0.0.1:")
        assert not daemon.url.endswith(":0")  # --port 0 printed the port it picked
        with trio.fail_after(TIMEOUT):
            async with httpx.AsyncClient(base_url=daemon.url) as http:
                assert (await http.get("/healthz")).json()["status"] == "ok"
    # cws_daemon sent SIGTERM and asserted the exit code 0; the state is in --home.
    assert daemon.process.returncode == 0
    assert (tmp_path / "home" / "state.db").is_file()


async def test_daemon_exits_zero_on_sigint_too(tmp_path: Path) -> None:
    async with cws_daemon(tmp_path / "home") as daemon:
        daemon.process.send_signal(signal.SIGINT)
        with trio.fail_after(TIMEOUT):
            assert await daemon.process.wait() == 0


async def test_a_bad_configuration_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "cws.toml"
    config.write_text("[daemon]\nprot = 80\n")
    env = cws_env(tmp_path / "home")
    result = await cws("daemon", "--config", str(config), "--port", "0", env=env)
    assert result.code == 1
    assert f"error: {config}:2: unknown key daemon.prot; did you mean daemon.port?" in result.err
    missing = await cws("daemon", "--config", str(tmp_path / "nope.toml"), env=env)
    assert (missing.code, "cannot read it" in missing.err) == (1, True)


async def test_tokens_are_created_listed_and_revoked_and_only_a_hash_is_kept(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    env = cws_env(home)
    created = await cws("token", "create", "--scope", "plugins:manage", "--scope", "events:publish",
                        "--expires", "30d", "--name", "ci", env=env)  # fmt: skip
    assert created.code == 0, created.err
    secret = created.out.strip()
    assert secret.startswith("cws_")
    assert created.out.count("\n") == 1
    assert "shown only once" in created.err
    assert secret not in created.err
    token_id = secret.split("_")[1]

    listed = await cws("token", "list", "--json", env=env)
    (record,) = json.loads(listed.out)["tokens"]
    assert record["id"] == token_id
    assert record["name"] == "ci"
    assert record["scopes"] == ["plugins:manage", "events:publish"]
    assert 29.9 * 86400 < record["expires_at"] - record["created_at"] <= 30 * 86400
    assert record["revoked_at"] is None
    assert set(record) == {"id", "name", "scopes", "created_at", "expires_at", "revoked_at"}
    table = (await cws("token", "list", env=env)).out
    assert table.splitlines()[0].split() == ["ID", "NAME", "SCOPES", "CREATED", "EXPIRES",
                                             "REVOKED"]  # fmt: skip
    assert token_id in table
    assert secret.split("_", 2)[2] not in table

    # The database holds the hash, never the secret: in no column and in no byte.
    with sqlite3.connect(home / "state.db") as db:
        rows = db.execute("SELECT * FROM tokens").fetchall()
    assert len(rows) == 1
    assert not any(secret.split("_", 2)[2] in str(cell) for cell in rows[0])
    for file in home.glob("state.db*"):
        assert secret.split("_", 2)[2].encode() not in file.read_bytes()

    revoked = await cws("token", "revoke", token_id, env=env)
    assert (revoked.code, revoked.out.strip()) == (0, f"revoked {token_id}")
    assert json.loads((await cws("token", "list", "--json", env=env)).out)["tokens"][0][
        "revoked_at"
    ]
    again = await cws("token", "revoke", token_id, env=env)
    expect(again, 1, err="already revoked")
    unknown = await cws("token", "revoke", "0123456789abcdef", env=env)
    expect(unknown, 1, err="no token has the id")


async def test_token_create_refuses_bad_scopes_and_durations(tmp_path: Path) -> None:
    env = cws_env(tmp_path / "home")
    bad_scope = await cws("token", "create", "--scope", "Plugins Manage", env=env)
    expect(bad_scope, 2, err="a scope is lowercase letters")
    bad_ttl = await cws("token", "create", "--scope", "admin", "--expires", "soon", env=env)
    expect(bad_ttl, 2, err="is not a duration; expected a number with ms, s or m (or h, d)")
    no_scope = await cws("token", "create", env=env)
    expect(no_scope, 2, err="--scope")


async def test_an_unreachable_daemon_is_exit_3_and_says_how_to_start_it(tmp_path: Path) -> None:
    # A bound socket that does not listen: connections to it are refused, and no other
    # process can take the port meanwhile.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env = cws_env(tmp_path / "home", CWS_URL=url)
        for args in (["plugin", "list"], ["actors", "--json"], ["analytics", "report"]):
            result = await cws(*args, env=env)
            assert result.code == 3, (args, result)
            assert f"cannot reach the cws daemon at {url}" in result.err
            assert "`cws daemon`" in result.err
        assert "no such command 'analytics'" in result.err
        # Built-in commands do not need the daemon, and help says why plugins are missing.
        assert (await cws("token", "list", env=env)).code == 0
        helped = await cws("--help", env=env)
        assert helped.code == 0
        assert f"the daemon at {url} is unreachable" in " ".join(helped.out.split())
        assert (await cws("--url", "localhost:1", "plugin", "list", env=env)).code == 2


@pytest.mark.parametrize(
    ("title", "detail", "shown"),
    [
        ("Refused", "plugin 'echo' refused: broken", "plugin 'echo' refused: broken"),
        ("Not ready", "plugin 'aws' is not ready (probe)", "plugin 'aws' is not ready (probe)"),
        ("Not found", "no plugin named 'x'", "Not found: no plugin named 'x'"),
        (
            "Bad archive",
            "x.cwsplugin: entry 'a': refused",
            "Bad archive: x.cwsplugin: entry 'a': refused",
        ),
        ("Unavailable", "", "Unavailable"),
    ],
)
def test_a_problem_message_never_repeats_its_title(title: str, detail: str, shown: str) -> None:
    assert APIProblem(409, title, detail).format_message() == shown

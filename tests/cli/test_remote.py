"""The commands that talk to a daemon, and the plugin commands attached from its specs:
a real daemon process and the real ``cws`` executable."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from ..api.test_instances import write_provider
from ..plugins._fixtures import write_plugin
from ..plugins.test_analytics import install_folder_plugin
from ..plugins.test_host import wait_until
from ._cws import (
    CWS,
    TIMEOUT,
    Daemon,
    Lines,
    close_pipes,
    create_token,
    cws,
    cws_daemon,
    expect,
)

# Events reach the plugin at most once per 100 s (burst 1), so the second is dead.
RATE_LIMITED = "memory_mb = 200\n\n[rate_limit]\nrate = 0.01\nburst = 1"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    async with cws_daemon(tmp_path / "home") as running:
        yield running


async def installed(daemon: Daemon, tmp_path: Path, **plugin: str) -> dict[str, str]:
    """Install the echo fixture plugin from its folder and load it, through the CLI;
    the environment for further commands (with an admin token)."""
    env = daemon.env | {"CWS_TOKEN": await create_token(daemon)}
    folder = write_plugin(tmp_path / "src", **plugin)
    install = await cws("plugin", "install", str(folder), env=env)
    assert install.code == 0, install.err
    assert install.out.strip() == "installed echo 1.0.0; load it with `cws plugin load echo`"
    load = await cws("plugin", "load", "echo", env=env)
    assert (load.code, load.out.strip()) == (0, "loaded echo: running"), load.err
    return env


async def test_no_token_is_401_and_a_weak_token_403_both_exit_4(
    daemon: Daemon, tmp_path: Path
) -> None:
    anonymous = await cws("plugin", "load", "echo", env=daemon.env)
    assert anonymous.code == 4
    assert "error: Unauthorized: this endpoint needs a token" in anonymous.err
    assert "cws token create --scope" in anonymous.err
    assert "CWS_TOKEN" in anonymous.err

    weak = daemon.env | {"CWS_TOKEN": await create_token(daemon, "events:publish")}
    forbidden = await cws("plugin", "load", "echo", env=weak)
    assert forbidden.code == 4
    assert "error: Forbidden: this needs the scope plugins:manage" in forbidden.err

    # The token file in the home folder is used when nothing else gives a token, and a
    # revoked token is refused.
    token = await create_token(daemon, "plugins:manage")
    (daemon.home / "token").write_text(token + "\n")
    (daemon.home / "token").chmod(0o600)
    from_file = await cws("plugin", "load", "echo", env=daemon.env)
    expect(from_file, 1, err="error: Not found:")  # past the auth
    assert (await cws("token", "revoke", token.split("_")[1], env=daemon.env)).code == 0
    revoked = await cws("plugin", "load", "echo", env=daemon.env)
    expect(revoked, 4, err="the token was revoked")


async def test_plugin_list_is_a_table_or_the_apis_json(daemon: Daemon, tmp_path: Path) -> None:
    env = await installed(daemon, tmp_path)
    listed = await cws("plugin", "list", env=env)
    assert listed.code == 0, listed.err
    header, row = listed.out.splitlines()
    assert header.split() == ["PLUGIN", "VERSION", "STATUS", "CAPABILITIES"]
    assert row.split(maxsplit=3) == ["echo", "1.0.0", "running", "10 cli, 1 api, 1 events"]
    assert "\x1b[" not in listed.out  # no colour off a terminal

    as_json = json.loads((await cws("plugin", "list", "--json", env=env)).out)
    async with httpx.AsyncClient(base_url=daemon.url) as http:
        with trio.fail_after(TIMEOUT):
            assert as_json == (await http.get("/api/v1/plugins")).json()
    assert as_json["plugins"][0]["capabilities"]["api_endpoints"] == ["GET /api/v1/echo"]

    status = await cws("plugin", "status", "echo", env=env)
    assert status.code == 0, status.err
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
             for line in status.out.splitlines()[1:]}  # fmt: skip
    assert (lines["state"], lines["ready"], lines["restarts"]) == ("running", "yes", "0")
    assert lines["plugin status"] == '{"greeting": "hello"}'
    # A folder plugin not in [plugins] in_process_allowed runs as a subprocess: its
    # status carries the process's pid, memory and CPU, shown apart as its resources.
    assert lines["resources"].startswith("pid ")
    detail = json.loads((await cws("plugin", "status", "echo", "--json", env=env)).out)
    assert detail["plugin_status"]["greeting"] == "hello"
    assert detail["plugin_status"]["pid"] == detail["pid"]
    usage = {"greeting", "pid", "memory_rss_kb", "cpu_seconds", "processes", "data_bytes",
             "cgroup", "cgroup_memory_bytes", "cgroup_memory_peak_bytes", "cgroup_oom_kills",
             "cgroup_cpu_throttled"}  # fmt: skip
    assert set(detail["plugin_status"]) <= usage
    discovered = json.loads((await cws("plugin", "discover", "--json", env=env)).out)
    assert [(p["name"], p["loaded"]) for p in discovered["plugins"]] == [("echo", True)]

    missing = await cws("plugin", "status", "nope", env=env)
    assert missing.code == 1
    assert missing.err.startswith("error: Not found: ")


async def test_a_plugin_command_runs_through_the_daemon_with_its_flags_and_help(
    daemon: Daemon, tmp_path: Path
) -> None:
    env = await installed(daemon, tmp_path)
    ran = await cws("echo", "--text", "hi", env=env)
    assert (ran.code, ran.out) == (0, "hello hi\n"), ran.err
    twice = await cws("echo", "--text", "hi", "--times", "2", env=env)
    assert twice.out == "hello hi hi\n"
    assert (await cws("echo", "announce", env=env)).out == "announced\n"  # a subcommand

    helped = await cws("echo", "--help", env=env)
    assert helped.code == 0
    assert "repeat text" in helped.out
    assert "Provided by the plugin 'echo'" in helped.out
    assert "--text TEXT" in helped.out
    assert "--times INTEGER" in helped.out
    assert "[default: 1]" in helped.out
    assert "announce" in helped.out
    root_help = await cws("--help", env=env)
    assert "Plugin commands" in root_help.out
    assert "echo  repeat text" in root_help.out

    bad_value = await cws("echo", "--text", "hi", "--times", "many", env=env)
    expect(bad_value, 2, err="'many' is not a valid integer")
    unknown_flag = await cws("echo", "--text", "hi", "--loud", env=env)
    expect(unknown_flag, 2, err="No such option '--loud'")
    missing = await cws("echo", env=env)
    expect(missing, 2, err="Missing option '--text'")
    unknown = await cws("nosuch", env=env)
    expect(unknown, 2, err="No such command 'nosuch'")

    # The plugin's own failure is its exit code; without a token the daemon says 401.
    crashed = await cws("echo", "crash", env=env)
    expect(crashed, 1, err="asked to crash")
    anonymous = await cws("echo", "--text", "hi", env=daemon.env)
    assert anonymous.code == 4


async def test_actors_json_is_the_tree(daemon: Daemon, tmp_path: Path) -> None:
    env = await installed(daemon, tmp_path)
    tree = json.loads((await cws("actors", "--json", env=env)).out)
    (plugins,) = [child for child in tree["children"] if child["path"] == "/plugins"]
    (echo,) = plugins["children"]
    assert (echo["path"], echo["state"], echo["ready"]) == ("/plugins/echo", "running", True)
    shown = (await cws("actors", env=env)).out.splitlines()
    assert shown[0].split() == ["ACTOR", "KIND", "STATE", "READY", "RESTARTS", "MAILBOX"]
    assert shown[-1].split() == ["echo", "actor", "running", "yes", "0", "0/1000"]
    assert shown[-1].startswith("    echo")  # indented under /plugins


async def test_published_events_that_cannot_be_delivered_are_dead_letters(
    daemon: Daemon, tmp_path: Path
) -> None:
    env = await installed(daemon, tmp_path, limits=RATE_LIMITED)
    for n in (1, 2):
        published = await cws("events", "publish", "instance.started", f'{{"n": {n}}}', env=env)
        assert published.code == 0, published.err
        assert published.out.startswith("published instance.started (event ")
    letters = json.loads((await cws("dead-letters", "--json", env=env)).out)
    (letter,) = letters["dead_letters"]
    assert (letter["reason"], letter["target"], letter["topic"]) == (
        "rate_limited", "/plugins/echo", "instance.started"
    )  # fmt: skip
    assert json.loads((await cws("dead-letters", "--json", "--limit", "0", env=env)).out) == {
        "dead_letters": [], "count": 0
    }  # fmt: skip
    bad_json = await cws("events", "publish", "instance.started", "{n: 1}", env=env)
    expect(bad_json, 2, err="must be JSON")
    wildcard = await cws("events", "publish", "instance.*", "1", env=env)
    expect(wildcard, 1, err="without wildcards")


async def unread(process: trio.Process) -> bytes:
    """What ``process`` wrote to stderr and nobody read yet (what it says of itself)."""
    assert process.stderr is not None
    chunks = []
    with trio.move_on_after(2):
        while chunk := await process.stderr.receive_some():
            chunks.append(chunk)
    return b"".join(chunks)


async def test_events_tail_prints_each_published_event(daemon: Daemon) -> None:
    token = await create_token(daemon)
    env = daemon.env | {"CWS_TOKEN": token, "PYTHONFAULTHANDLER": "1"}
    with trio.fail_after(TIMEOUT):
        tail = await trio.lowlevel.open_process(
            [CWS, "events", "tail", "--topic", "demo.*"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            assert tail.stdout is not None
            assert tail.stderr is not None
            # It says so on stderr once subscribed: publishing before that would be lost.
            assert (await Lines(tail.stderr).next()).startswith("following demo.* on ")
            async with httpx.AsyncClient(
                base_url=daemon.url, headers={"Authorization": f"Bearer {token}"}
            ) as http:
                for topic, payload in (("other.x", 0), ("demo.hello", {"n": [1, "a"]})):
                    answer = await http.post(
                        "/api/v1/events", json={"topic": topic, "payload": payload}
                    )
                    assert answer.status_code == 202
            assert await Lines(tail.stdout).next() == 'demo.hello {"n": [1, "a"]}'
            tail.send_signal(signal.SIGINT)  # Ctrl-C ends it cleanly
            with trio.move_on_after(TIMEOUT / 3):
                await tail.wait()
            if tail.returncode is None:  # say where it hangs before failing
                tail.send_signal(signal.SIGABRT)  # faulthandler dumps every thread's stack
                with trio.move_on_after(2):
                    await tail.wait()
                pytest.fail(f"cws events tail ignored Ctrl-C; stderr: {await unread(tail)!r}")
            assert tail.returncode == 0
        finally:
            await close_pipes(tail)


async def test_remove_asks_and_refuses_without_a_terminal(daemon: Daemon, tmp_path: Path) -> None:
    env = await installed(daemon, tmp_path)
    refused = await cws("plugin", "remove", "echo", env=env)
    expect(refused, 2, err="without --confirm")
    unloaded = await cws("plugin", "unload", "echo", env=env)
    assert unloaded.out.strip() == "unloaded echo: not_loaded"
    removed = await cws("plugin", "remove", "echo", "--confirm", "--purge-data", env=env)
    assert (removed.code, removed.out.strip()) == (0, "removed echo and its data")
    after = json.loads((await cws("plugin", "list", "--json", env=env)).out)
    assert after["plugins"] == []
    gone = await cws("echo", "--text", "hi", env=env)
    expect(gone, 2, err="No such command 'echo'")


async def test_instances_list_exits_1_when_every_provider_failed(tmp_path: Path) -> None:
    """Each failure said once, its provider's name once; one provider up is a listing
    with a warning (exit 0)."""
    home = tmp_path / "home"
    write_provider(home / "plugins", "memory")
    write_provider(home / "plugins", "spare")
    for name in ("memory", "spare"):
        (home / "plugin-data" / name).mkdir(parents=True)
        (home / "plugin-data" / name / "down").touch()
    async with cws_daemon(home) as daemon:
        failed = await cws("instances", "list", env=daemon.env)
        expect(failed, 1, err="error: every cloud provider failed:\n  memory: ")
        assert "\n  spare: " in failed.err
        assert failed.out == ""
        for name in ("memory", "spare"):
            assert failed.err.count(f"{name}:") == 1, failed.err
        as_json = await cws("instances", "list", "--json", env=daemon.env)
        expect(as_json, 1, err="every cloud provider failed")
        assert set(json.loads(as_json.out)["errors"]) == {"memory", "spare"}
        (home / "plugin-data/spare/down").unlink()

        async def spare_answers() -> bool:
            listed = await cws("instances", "list", "--provider", "spare", env=daemon.env)
            return listed.code == 0

        await wait_until(spare_answers)
        partly = await cws("instances", "list", env=daemon.env)
        expect(partly, 0, out="i-1  vm-i-1  t3.micro")  # the spare provider's instances
        assert partly.err.count("memory:") == 1, partly.err
        assert partly.err.startswith("warning: memory: ")


async def test_a_token_file_others_may_read_is_refused_as_ssh_refuses_a_key(
    daemon: Daemon,
) -> None:
    token_file = daemon.home / "token"
    token_file.write_text(await create_token(daemon, "plugins:manage") + "\n")
    token_file.chmod(0o644)
    refused = await cws("plugin", "load", "echo", env=daemon.env)
    expect(refused, 1, err=f"error: the token file {token_file} is readable or writable by")
    assert f"(mode 0644); it must be private to you: `chmod 600 {token_file}`" in refused.err
    token_file.chmod(0o620)  # group-writable is refused too
    expect(await cws("plugin", "load", "echo", env=daemon.env), 1, err="(mode 0620)")
    # A token given otherwise does not read the file; help works whatever the file.
    given = daemon.env | {"CWS_TOKEN": await create_token(daemon, "plugins:manage")}
    expect(await cws("plugin", "load", "echo", env=given), 1, err="error: Not found:")
    assert (await cws("--help", env=daemon.env)).code == 0
    token_file.chmod(0o600)
    expect(await cws("plugin", "load", "echo", env=daemon.env), 1, err="error: Not found:")


async def test_a_plugin_command_without_its_permission_shows_the_403(tmp_path: Path) -> None:
    home = tmp_path / "home"
    install_folder_plugin(home)
    async with cws_daemon(home) as daemon:
        weak = daemon.env | {"CWS_TOKEN": await create_token(daemon, "events:publish")}
        refused = await cws("analytics", "report", "--format", "json", env=weak)
        expect(
            refused, 4,
            err="error: Forbidden: analytics report (plugin 'research-analytics'): this needs"
            " the scope analytics.read; the token has events:publish",
        )  # fmt: skip
        reader = daemon.env | {"CWS_TOKEN": await create_token(daemon, "analytics.read")}
        ran = await cws("analytics", "report", "--format", "json", env=reader)
        assert ran.code == 0, ran.err
        assert '"total_cost"' in ran.out

"""The ``cws`` commands that talk to a running daemon: plugins, actors, events and dead
letters. Every listing takes ``--json`` and then prints the API's JSON as it came."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncclick as click
import trio

from ._client import SLOW_TIMEOUT
from ._common import (
    F,
    connect,
    echo_json,
    json_option,
    on_terminal,
    options,
    remote_options,
    state_colour,
    table,
)
from ._errors import APIProblem, CLIError, UsageProblem
from ._signing import keygen, sign

# ---------------------------------------------------------------------- plugins


@click.group()
async def plugin() -> None:
    """Manage the daemon's plugins."""


def capabilities_summary(capabilities: dict[str, Any]) -> str:
    """``{"cli_commands": [a, b], ...}`` -> ``"2 cli, 1 api, 4 events"``."""
    parts = [
        f"{len(capabilities.get(key) or [])} {label}"
        for key, label in (("cli_commands", "cli"), ("api_endpoints", "api"),
                           ("event_handlers", "events"))
        if capabilities.get(key)
    ]  # fmt: skip
    return ", ".join(parts) or "-"


def _status_word(view: dict[str, Any]) -> str:
    state = str(view.get("state", "?"))
    return state if view.get("enabled", True) else f"{state} (disabled)"


@plugin.command("list")
@remote_options
@json_option
async def plugin_list(as_json: bool) -> None:
    """List the installed plugins and what they provide."""
    async with connect() as client:
        body = await client.get("/api/v1/plugins")
    if as_json:
        echo_json(body)
        return
    rows = [
        [p["name"], p["version"], _status_word(p), capabilities_summary(p.get("capabilities", {}))]
        for p in body["plugins"]
    ]
    if not rows:
        click.echo("no plugins installed; see `cws plugin discover` and `cws plugin install`",
                   err=True)  # fmt: skip
        return
    headers = ["PLUGIN", "VERSION", "STATUS", "CAPABILITIES"]
    click.echo(table(headers, rows, colours={2: state_colour}))


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def _status_lines(view: dict[str, Any]) -> Iterator[tuple[str, str]]:
    disabled = "" if view.get("enabled", True) else ", disabled"
    yield "source", f"{view['source']} ({view['isolation']}){disabled}"
    yield "state", click.style(str(view["state"]), fg=state_colour(str(view["state"])))
    yield "ready", _yes(view.get("ready"))
    yield "restarts", str(view.get("restarts", 0))
    if view.get("spare_pid"):
        yield "warm spare", f"pid {view['spare_pid']} (its next run, waiting)"
    yield "calls", f"{view.get('calls', 0)} ({view.get('errors', 0)} errors)"
    yield "events", f"{view.get('events', 0)} handled, {view.get('published', 0)} published"
    yield "last error", str(view.get("last_error") or "-")
    if view.get("problem"):
        yield "problem", str(view["problem"])
    capabilities = view.get("capabilities") or {}
    for key, label in (("cli_commands", "commands"), ("api_endpoints", "endpoints"),
                       ("event_handlers", "events in")):  # fmt: skip
        if capabilities.get(key):
            yield label, ", ".join(capabilities[key])
    yield from _sandbox_lines(view)
    extra = dict(view.get("plugin_status") or {})
    usage = [
        f"{label} {extra.pop(key)}{unit}"
        for key, label, unit in (("pid", "pid", ""), ("memory_rss_kb", "memory", " kB"),
                                 ("cpu_seconds", "cpu", " s"), ("processes", "processes", ""),
                                 ("data_bytes", "data", " bytes"),
                                 ("data_limit_bytes", "data limit", " bytes"),
                                 ("cgroup", "in", ""),
                                 ("cgroup_memory_bytes", "group memory", " bytes"),
                                 ("cgroup_memory_peak_bytes", "group peak", " bytes"),
                                 ("cgroup_oom_kills", "OOM kills", ""),
                                 ("cgroup_cpu_throttled", "CPU throttled", " times"))
        if key in extra
    ]  # fmt: skip
    if usage:
        yield "resources", ", ".join(usage)
    if extra:
        yield "plugin status", json.dumps(extra, sort_keys=True)
    for control, state in ((view.get("sandbox") or {}).get("controls") or {}).items():
        colour = "green" if state == "enforced" else "red" if state.startswith("not ") else "yellow"
        yield f"sandbox {control}", click.style(state, fg=colour)


def _sandbox_lines(view: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """What its sandbox asks for and what of it is granted, and how."""
    sandbox = view.get("sandbox") or {}
    requests = sandbox.get("requests") or []
    if not requests:
        yield "sandbox", "asks for nothing beyond its own folders"
        return
    yield "sandbox asks", ", ".join(requests)
    granted = sandbox.get("granted") or []
    how = []
    if sandbox.get("entry_point"):
        how.append("an entry point: granted what it declares")
    if sandbox.get("defaults"):
        how.append(f"default_grants {', '.join(sandbox['defaults'])}")
    yield "granted", (", ".join(granted) or "nothing") + (f" ({'; '.join(how)})" if how else "")
    ungranted = sandbox.get("ungranted") or []
    if ungranted:
        command = f"cws plugin grant {view['name']} {','.join(ungranted)}"
        text = f"{', '.join(ungranted)} (it will not load; `{command}`)"
        yield "not granted", click.style(text, fg="yellow")


@plugin.command("status")
@click.argument("name")
@remote_options
@json_option
async def plugin_status(name: str, as_json: bool) -> None:
    """Show one plugin: state, readiness, counters, capabilities and resource usage."""
    async with connect() as client:
        view = await client.get(f"/api/v1/plugins/{name}")
    if as_json:
        echo_json(view)
        return
    click.echo(click.style(f"{view['name']} {view['version']}", bold=True))
    for label, value in _status_lines(view):
        click.echo(f"  {label + ':':<15}{value}")


@plugin.command("discover")
@remote_options
@json_option
async def plugin_discover(as_json: bool) -> None:
    """List the plugins the daemon can find (its folders and entry points)."""
    async with connect() as client:
        body = await client.get("/api/v1/plugins/discover")
    if as_json:
        echo_json(body)
        return
    rows = [
        [p["name"], p["version"], p["source"], p["isolation"], _yes(p["loaded"]),
         p.get("problem") or ""]
        for p in body["plugins"]
    ]  # fmt: skip
    click.echo(table(["PLUGIN", "VERSION", "SOURCE", "ISOLATION", "LOADED", "PROBLEM"], rows))
    click.echo(f"user plugin folder: {body.get('directory')}", err=True)


def _packed(source: Path, folder: Path) -> Path:
    """``source`` itself if it is an archive, else a folder packed into ``folder``."""
    if not source.is_dir():
        return source
    # Imported here: cws_actors costs every other command a tenth of a second.
    from cws_actors import ARCHIVE_SUFFIX, ArchiveError, make_archive

    try:
        return make_archive(source, folder / f"{source.resolve().name}{ARCHIVE_SUFFIX}")
    except (ValueError, OSError) as exc:  # ArchiveError is a ValueError
        kind = "unsafe" if isinstance(exc, ArchiveError) else "unusable"
        raise CLIError(f"cannot pack {source} ({kind}): {exc}") from None


async def _signature_beside(path: Path, signature: Path | None) -> Path | None:
    """``signature``, else ``<archive>.minisig`` when it is there."""
    beside = trio.Path(f"{path}.minisig")
    if signature is None and await trio.Path(path).is_file() and await beside.is_file():
        return Path(beside)
    return signature


async def _upload(
    path: str, source: Path, signature: Path | None, fields: dict[str, str] | None = None
) -> dict[str, Any]:
    """Pack (a folder) and upload (with the form ``fields``), with a progress bar on a
    terminal."""
    with tempfile.TemporaryDirectory(prefix="cws-upload-") as tmp:
        archive = await trio.to_thread.run_sync(_packed, source, Path(tmp))
        size = (await trio.Path(archive).stat()).st_size
        async with connect() as client:
            if not on_terminal():
                view: dict[str, Any] = await client.upload(
                    path, archive, signature=signature, fields=fields
                )
                return view
            with click.progressbar(
                length=size, label=f"uploading {archive.name}", file=sys.stderr
            ) as bar:
                view = await client.upload(path, archive, signature=signature,
                                           on_progress=bar.update, fields=fields)  # fmt: skip
            return view


def _archive_argument(command: F) -> F:
    command = click.option(
        "--signature",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="The archive's minisign signature (default: <archive>.minisig beside it).",
    )(command)
    return click.argument("path", type=click.Path(exists=True, path_type=Path), metavar="PATH")(
        command
    )


def _installed_message(verb: str, view: dict[str, Any]) -> str:
    name = view["name"]
    text = f"{verb} {name} {view['version']}"
    if not view.get("loaded"):
        text += f"; load it with `cws plugin load {name}`"
    if not (view.get("sandbox") or {}).get("requests"):
        return text  # the default sandbox: nothing to show
    lines = [text] + [f"  {label + ':':<15}{value}" for label, value in _sandbox_lines(view)]
    return "\n".join(lines)


GRANT_HELP = (
    "What the plugin's sandbox is granted, comma-separated: all, a kind (filesystem,"
    " network, exec, secrets, apis) or a request (network:*:443, secrets:aws_key)."
    " Without it, a terminal asks; otherwise what is not granted is refused."
)


def _grant_option(command: F) -> F:
    return click.option("--grant", metavar="GRANTS", default=None, help=GRANT_HELP)(command)


async def _upload_granting(
    path: str,
    source: Path,
    signature: Path | None,
    fields: dict[str, str],
    grant: str | None,
) -> dict[str, Any]:
    """Upload with ``--grant``; without it, a refusal that names ungranted requests is
    shown (like a browser extension's permissions) and, on a terminal, asked about."""
    if grant is not None:
        fields = {**fields, "grant": grant}
    try:
        return await _upload(path, source, signature, fields or None)
    except APIProblem as problem:
        ungranted = problem.extra.get("ungranted")
        if grant is not None or not ungranted or not on_terminal(sys.stdin):
            raise
        name = problem.extra.get("plugin", "the plugin")
        click.echo(f"{name}'s sandbox asks for:", err=True)
        for request in problem.extra.get("requests") or ungranted:
            mark = "" if request in ungranted else "  (granted already)"
            click.echo(f"  {request}{mark}", err=True)
        if not click.confirm(f"Grant {name} {', '.join(ungranted)}?", default=False, err=True):
            raise CLIError(f"nothing was changed: {name}'s sandbox was not granted") from None
        return await _upload(path, source, signature, {**fields, "grant": ",".join(ungranted)})


plugin.add_command(keygen)  # local: minisign-compatible keys and signatures
plugin.add_command(sign)


@plugin.command("install")
@_archive_argument
@_grant_option
@remote_options
async def plugin_install(path: Path, signature: Path | None, grant: str | None) -> None:
    """Install a plugin from a folder (packed first) or a .cwsplugin archive.

    What its sandbox asks for (network, secrets, daemon APIs...) must be granted:
    --grant, or a yes on a terminal. The plugin is installed, not loaded: `cws plugin
    load NAME` starts it.
    """
    signature = await _signature_beside(path, signature)
    view = await _upload_granting("/api/v1/plugins/install", path, signature, {}, grant)
    click.echo(_installed_message("installed", view))


@plugin.command("update")
@click.argument("name")
@_archive_argument
@click.option(
    "--allow-downgrade",
    is_flag=True,
    help="Accept a version lower than the installed one (the history records it).",
)
@_grant_option
@remote_options
async def plugin_update(
    name: str, path: Path, signature: Path | None, allow_downgrade: bool, grant: str | None
) -> None:
    """Hot-update an installed plugin NAME with the version at PATH.

    A lower version than the installed one is refused unless --allow-downgrade; one
    whose sandbox asks for more than was granted, unless --grant (or a yes on a
    terminal) grants the rest.
    """
    signature = await _signature_beside(path, signature)
    fields = {"allow_downgrade": "true"} if allow_downgrade else {}
    view = await _upload_granting(f"/api/v1/plugins/{name}/update", path, signature, fields, grant)
    click.echo(_installed_message("updated", view))


@plugin.command("grant")
@click.argument("name")
@click.argument("grants", metavar="GRANTS")
@remote_options
async def plugin_grant(name: str, grants: str) -> None:
    """Grant plugin NAME what GRANTS cover of what its sandbox asks for: all, kinds
    (network, secrets...) or requests (network:*:443, secrets:aws_key), comma-separated.
    Stored in the state database; see them with `cws plugin status NAME`."""
    async with connect() as client:
        view = await client.post(f"/api/v1/plugins/{name}/grant", {"grants": grants})
    click.echo(f"granted {name}: {', '.join(view['sandbox']['stored']) or 'nothing'}")
    if view["sandbox"]["ungranted"]:
        click.echo(f"still not granted: {', '.join(view['sandbox']['ungranted'])}", err=True)
    elif not view.get("loaded"):
        click.echo(f"load it with `cws plugin load {name}`", err=True)


@plugin.command("revoke")
@click.argument("name")
@click.argument("grants", metavar="GRANTS")
@remote_options
async def plugin_revoke(name: str, grants: str) -> None:
    """Take back GRANTS from plugin NAME. Its secrets and API token follow at once; a
    later load is refused while its sandbox still asks for what was taken back."""
    async with connect() as client:
        view = await client.post(f"/api/v1/plugins/{name}/revoke", {"grants": grants})
    click.echo(f"{name} now holds: {', '.join(view['sandbox']['stored']) or 'nothing'}")


def _operation(operation: str, done: str, summary: str) -> click.Command:
    @click.argument("name")
    @remote_options
    async def run(name: str) -> None:
        async with connect() as client:
            view = await client.post(f"/api/v1/plugins/{name}/{operation}", timeout=SLOW_TIMEOUT)
        state = str(view.get("state", "?"))
        click.echo(f"{done} {name}: " + click.style(state, fg=state_colour(state)))

    run.__doc__ = summary
    return plugin.command(operation)(run)


_operation("enable", "enabled", "Enable a plugin (loaded now and at every start).")
_operation("disable", "disabled", "Disable a plugin (unloaded, and not loaded at start).")
_operation("load", "loaded", "Load and start an installed plugin.")
_operation("unload", "unloaded", "Stop and unload a plugin (it stays installed).")
_operation("reload", "reloaded", "Restart a plugin from its files.")


@plugin.command("remove")
@click.argument("name")
@click.option("--confirm", is_flag=True, help="Do not ask (needed without a terminal).")
@click.option("--purge-data", is_flag=True, help="Delete the plugin's data folder too.")
@remote_options
async def plugin_remove(name: str, confirm: bool, purge_data: bool) -> None:
    """Uninstall a plugin (unloading it first)."""
    if not confirm:
        if not on_terminal(sys.stdin):
            raise UsageProblem(
                f"refusing to remove {name!r} without --confirm (no terminal to ask)"
            )
        data = " and delete its data" if purge_data else ""
        click.confirm(f"Remove the plugin {name!r}{data}?", abort=True, err=True)
    async with connect() as client:
        await client.request(
            "DELETE",
            f"/api/v1/plugins/{name}",
            params={"purge_data": "true" if purge_data else "false"},
            timeout=SLOW_TIMEOUT,
        )
    click.echo(f"removed {name}" + (" and its data" if purge_data else ""))


# ---------------------------------------------------------------------- actors


def tree_rows(node: dict[str, Any], depth: int = 0) -> Iterator[list[str]]:
    """One row per actor, depth-first, its name indented under its supervisor."""
    name = node["path"].rstrip("/").rsplit("/", 1)[-1] or "/"
    mailbox = node.get("mailbox")
    depth_text = f"{mailbox['depth']}/{mailbox['capacity']}" if mailbox else "-"
    yield [
        "  " * depth + name,
        node["kind"],
        node["state"],
        _yes(node["ready"]),
        str(node["restarts"]),
        depth_text,
    ]
    for child in node.get("children") or ():
        yield from tree_rows(child, depth + 1)


def actor_tree(root: dict[str, Any]) -> str:
    headers = ["ACTOR", "KIND", "STATE", "READY", "RESTARTS", "MAILBOX"]
    return table(headers, list(tree_rows(root)), colours={2: state_colour})


@click.group(invoke_without_command=True)
@click.option("--watch", is_flag=True, help="Refresh every second until Ctrl-C.")
@remote_options
@json_option
@click.pass_context
async def actors(ctx: click.Context, watch: bool, as_json: bool) -> None:
    """Show the actor tree: state, readiness, restarts and mailbox depth (or restart an
    actor, or clear its quarantine)."""
    if ctx.invoked_subcommand is not None:
        return
    async with connect() as client:
        try:
            while True:
                tree = await client.get("/api/v1/actors")
                if watch and on_terminal(sys.stdout):
                    click.clear()
                click.echo(json.dumps(tree, indent=2) if as_json else actor_tree(tree))
                if not watch:
                    return
                click.echo("", err=not on_terminal(sys.stdout))
                await trio.sleep(1)
        except KeyboardInterrupt:
            return  # Ctrl-C is how --watch ends


def _actor_path(ctx: Any, param: Any, value: str) -> str:
    path = "/" + value.strip().strip("/")
    if path == "/":
        raise click.BadParameter("give an actor's path, such as /plugins/aws")
    return path


async def _act_on(path: str, action: str, as_json: bool) -> None:
    async with connect() as client:
        node = await client.post(f"/api/v1/actors{path}/{action}")
    if as_json:
        echo_json(node)
        return
    ready = "ready" if node["ready"] else "not ready yet"
    click.echo(f"{node['path']}: {node['state']}, {ready}, {node['restarts']} restart(s)")


@actors.command("restart")
@click.argument("path", callback=_actor_path)
@remote_options
@json_option
async def actors_restart(path: str, as_json: bool) -> None:
    """Restart the actor at PATH (/plugins/aws), as an operator would (scope admin)."""
    await _act_on(path, "restart", as_json)


@actors.command("clear-quarantine")
@click.argument("path", callback=_actor_path)
@remote_options
@json_option
async def actors_clear_quarantine(path: str, as_json: bool) -> None:
    """Start the quarantined actor at PATH again, with a fresh restart budget (scope
    admin). Fix what made it crash first: faults, config, the plugin itself."""
    await _act_on(path, "clear-quarantine", as_json)


# ---------------------------------------------------------------------- events


@click.group()
async def events() -> None:
    """Publish and follow events on the daemon's bus."""


@events.command("tail")
@click.option("--topic", "topics", multiple=True, metavar="PATTERN",
              help="A topic pattern (instance.*, #); repeat for more [default: all].")  # fmt: skip
@remote_options
async def events_tail(topics: tuple[str, ...]) -> None:
    """Follow events as they are published: one `<topic> <json payload>` line each."""
    connection = options().connection()

    def connected() -> None:
        click.echo(f"following {', '.join(topics) or '#'} on {connection.url}"
                   " (Ctrl-C to stop)", err=True)  # fmt: skip

    def show(event: dict[str, Any]) -> None:
        click.echo(f"{event.get('topic')} {json.dumps(event.get('payload'))}")

    # Ctrl-C is how tail ends: a signal receiver turns it into a cancellation, rather than
    # Trio's KeyboardInterrupt, whose delivery to the waiting task was seen to stall.
    failure: list[Exception] = []
    with trio.open_signal_receiver(signal.SIGINT) as interrupts, trio.CancelScope() as scope:

        async def follow() -> None:
            try:
                async with connect() as client:
                    await client.follow_events(list(topics), show, on_connected=connected)
            except Exception as exc:  # noqa: BLE001 - raised below, as itself, not in a group
                failure.append(exc)
            finally:
                scope.cancel()  # it ended without Ctrl-C: stop waiting for one

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            async for _ in interrupts:
                nursery.cancel_scope.cancel()  # Ctrl-C
                break
    if failure:
        raise failure[0]


def _payload(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"must be JSON (like '{{\"id\": 1}}' or '\"text\"'): {exc}"
        ) from None


@events.command("publish")
@click.argument("topic")
@click.argument("payload", metavar="JSON", callback=_payload)
@remote_options
@json_option
async def events_publish(topic: str, payload: Any, as_json: bool) -> None:
    """Publish an event: TOPIC (dot-separated words) with a JSON payload."""
    async with connect() as client:
        event = await client.post("/api/v1/events", {"topic": topic, "payload": payload})
    if as_json:
        echo_json(event)
    else:
        click.echo(f"published {event['topic']} (event {event['id']})")


@click.command("dead-letters")
@click.option("--limit", type=click.IntRange(min=0, max=10_000), default=100,
              show_default=True, help="The latest N dead letters (at most 10000, as the"
              " daemon keeps).")  # fmt: skip
@remote_options
@json_option
async def dead_letters(limit: int, as_json: bool) -> None:
    """Show messages that were refused or dropped, and why."""
    async with connect() as client:
        body = await client.get("/api/v1/dead-letters", limit=str(limit))
    if as_json:
        echo_json(body)
        return
    rows = [
        [d["reason"], d["target"], d.get("topic") or "-", d["source"], d.get("detail") or ""]
        for d in body["dead_letters"]
    ]
    click.echo(table(["REASON", "TARGET", "TOPIC", "SOURCE", "DETAIL"], rows))

"""``/api/v1/plugins``: list, discover, inspect, operate (load, unload, enable, disable,
reload), install and update from an uploaded archive, and remove plugins. Changes need
the ``plugins:manage`` scope."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

import trio
from quart import Blueprint, request

from cws_actors import (
    ActorError,
    ArchiveError,
    PluginError,
    PluginStatus,
    check_archive,
    parse_grants,
)

from .._auth import Principal
from .._daemon import Daemon
from ._problems import HTTPProblem, from_error
from ._requests import current_daemon, guarded, json_body, principal
from ._views import plugin_view

blueprint = Blueprint("plugins", __name__)

_MAX_FILENAME_BYTES = 255
"""The longest upload file name (in UTF-8) that is staged: what most file systems take."""

OPERATIONS = ("load", "unload", "enable", "disable", "reload")
"""``POST /api/v1/plugins/<name>/<operation>``: the host's methods of those names
(``update`` is an upload)."""


@blueprint.get("/api/v1/plugins")
async def plugins() -> Any:
    host = current_daemon().host
    views = [plugin_view(host, status) for status in await host.statuses()]
    return {"plugins": views, "count": len(views)}


@blueprint.get("/api/v1/plugins/discover")
async def discover() -> Any:
    return await discovery(current_daemon())


async def discovery(daemon: Daemon) -> dict[str, Any]:
    """What the host finds (entry points and folders), loaded or not."""
    found = await daemon.host.discover()
    return {
        "plugins": [
            {
                "name": p.name,
                "version": p.version,
                "source": p.source,
                "location": p.location,
                "isolation": p.isolation.value,
                "loaded": p.name in daemon.host.loaded_names(),
                "problem": p.problem,
            }
            for p in found
        ],
        "count": len(found),
        "directory": str(daemon.host.user_dir),
    }


@blueprint.get("/api/v1/plugins/<name>")
async def plugin(name: str) -> Any:
    host = current_daemon().host
    status = await guarded(host.status(name))
    view = plugin_view(host, status)
    if status.loaded:
        view["history"] = [
            {"at": entry.at, "event": entry.event, "detail": entry.detail}
            for entry in await host.history(name)
        ][-20:]
        try:
            view["plugin_status"] = await host.plugin_status(name)
        except (ActorError, PluginError) as exc:
            view["plugin_status"] = {"error": str(exc)}
    return view


@blueprint.post("/api/v1/plugins/<name>/<operation>")
async def plugin_operation(name: str, operation: str) -> Any:
    who = await principal("plugins:manage")
    if operation == "update":
        return await upload(name)
    if operation in ("grant", "revoke"):
        body = await json_body()
        value = body.get("grants") if isinstance(body, dict) else None
        if not isinstance(value, str | list):
            raise HTTPProblem(
                400, "Bad request",
                'the body is {"grants": "network,secrets:aws_key"} (or a list of grants)',
            )  # fmt: skip
        grants = grants_of(value)
        if operation == "grant":
            may_grant(who, grants)
        host = current_daemon().host
        try:
            await getattr(host, operation)(name, grants)
        except ValueError as exc:
            raise HTTPProblem(400, "Bad request", str(exc)) from None
        except (ActorError, PluginError) as exc:
            raise from_error(exc, plugin=name) from None
        return plugin_view(host, await guarded(host.status(name)))
    if operation not in OPERATIONS:
        raise HTTPProblem(
            404,
            "Not found",
            f"unknown operation {operation!r}; expected one of"
            f" {', '.join([*OPERATIONS, 'update', 'grant', 'revoke'])}",
        )
    host = current_daemon().host
    work: Callable[[str], Awaitable[Any]] = getattr(host, operation)
    await guarded(work(name), plugin=name)
    return plugin_view(host, await guarded(host.status(name)))


@blueprint.post("/api/v1/plugins/install")
async def install() -> Any:
    await principal("plugins:manage")
    return await upload(None)


@blueprint.delete("/api/v1/plugins/<name>")
async def remove(name: str) -> Any:
    await principal("plugins:manage")
    purge = request.args.get("purge_data", "false").lower() in ("1", "true", "yes")
    await guarded(current_daemon().host.remove(name, purge_data=purge), plugin=name)
    return {"removed": name, "purged_data": purge}


async def upload(name: str | None) -> Any:
    files = await request.files
    archive = files.get("archive")
    if archive is None:
        raise HTTPProblem(
            400,
            "Bad request",
            "send the plugin as multipart/form-data with an 'archive' file"
            " (a .cwsplugin zip) and optionally a 'signature' file (its .minisig)",
        )
    form = await request.form
    grants = grants_of(form.get("grant", ""))
    may_grant(await principal(), grants)
    allow_downgrade = False
    if name is not None:
        value = (await request.form).get("allow_downgrade", "false").strip().lower()
        if value not in _BOOLEAN:
            raise HTTPProblem(
                400,
                "Bad request",
                f"allow_downgrade must be true or false, got {value[:20]!r}",
            )
        allow_downgrade = _BOOLEAN[value]
    daemon = current_daemon()
    status = await install_upload(
        daemon, name, archive, files.get("signature"), allow_downgrade=allow_downgrade,
        grants=grants,
    )  # fmt: skip
    return plugin_view(daemon.host, status), 201 if name is None else 200


_BOOLEAN = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def grants_of(value: str | list[Any]) -> tuple[str, ...]:
    """``"network,secrets:aws_key"`` or ``["network", "secrets:aws_key"]``, checked.

    Raises:
        HTTPProblem: 400 naming a grant that is not one."""
    if isinstance(value, list) and not all(isinstance(item, str) for item in value):
        raise HTTPProblem(400, "Bad request", "'grants' must be a string or a list of strings")
    text = value if isinstance(value, str) else ",".join(value)
    try:
        return parse_grants(text)
    except ValueError as exc:
        raise HTTPProblem(400, "Bad request", str(exc)) from None


def may_grant(who: Principal, grants: tuple[str, ...]) -> None:
    """A token cannot give a plugin more than it holds: granting secrets (or ``all``)
    needs ``admin``, granting ``apis:SCOPE`` needs SCOPE (``apis`` alone: ``admin``).

    Raises:
        HTTPProblem: 403 naming the scope missing."""
    for grant in grants:
        kind, _, rest = grant.partition(":")
        if grant == "all" or kind == "secrets" or (kind == "apis" and not rest):
            needed = "admin"
        elif kind == "apis":
            needed = rest
        else:
            continue
        if not who.allows(needed):
            raise HTTPProblem(
                403,
                "Forbidden",
                f"granting {grant!r} needs the scope {needed}: a token cannot give a plugin"
                " more than it holds",
            )


async def install_upload(
    daemon: Daemon,
    name: str | None,
    archive: Any,
    signature: Any,
    *,
    allow_downgrade: bool = False,
    grants: tuple[str, ...] = (),
) -> PluginStatus:
    """Install (``name`` None) or update a plugin from an uploaded archive; an update
    to a lower version only with ``allow_downgrade``; ``grants`` answer its sandbox."""
    filename = upload_filename(archive.filename)
    staging = Path(tempfile.mkdtemp(prefix="upload-", dir=_upload_dir(daemon)))
    try:
        target = staging / filename
        await archive.save(target)
        await _refuse_a_bad_archive(daemon, target, filename)
        signature_path = None
        if signature is not None:
            signature_path = staging / f"{filename}.minisig"
            await signature.save(signature_path)
        host = daemon.host
        work = (
            host.install(target, signature=signature_path, grants=grants)
            if name is None
            else host.update(
                name,
                target,
                signature=signature_path,
                allow_downgrade=allow_downgrade,
                grants=grants,
            )
        )
        try:
            return await work
        except (ActorError, PluginError) as exc:
            raise from_error(exc, plugin=name) from None
    finally:
        await trio.to_thread.run_sync(shutil.rmtree, staging, True)


def upload_filename(given: str | None) -> str:
    """The name to stage an upload under: the client's file name without its folders.

    Raises:
        HTTPProblem: 400 for a name that is no file name (``..``, ``.``, a NUL or a
            control character, over 255 bytes).
    """
    if not given:
        return "plugin.cwsplugin"
    name = PurePosixPath(given.replace("\\", "/")).name
    bad = (
        name in ("", ".", "..")
        or any(ord(char) < 32 or char == "\x7f" for char in name)
        or len(name.encode("utf-8", "surrogatepass")) > _MAX_FILENAME_BYTES
    )
    if bad:
        raise HTTPProblem(
            400,
            "Bad filename",
            f"the archive's filename {given[:80]!r} is not a file name; send a name such as"
            f" NAME.cwsplugin (at most {_MAX_FILENAME_BYTES} bytes, no control characters)",
        )
    return name


async def _refuse_a_bad_archive(daemon: Daemon, archive: Path, filename: str) -> None:
    """An archive that breaks a rule (a name too deep or too long, a link, a zip bomb,
    no plugin.toml) is the client's error: a 400 naming the entry and the rule, before
    anything is unpacked. The host checks it again as it stages it."""
    limits = daemon.host.config.trust.archive_limits
    try:
        await trio.to_thread.run_sync(lambda: check_archive(archive.read_bytes(), limits))
    except ArchiveError as exc:
        raise HTTPProblem(
            400,
            "Bad archive",
            f"{filename}: {exc}; nothing was installed",
            entry=getattr(exc, "entry", None),
            rule=getattr(exc, "rule", "format"),
        ) from None


def _upload_dir(daemon: Daemon) -> Path:
    folder = daemon.config.home / "uploads"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder

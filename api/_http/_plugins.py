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
from ._problems import PROBLEM_TYPE, HTTPProblem, from_error
from ._requests import current_daemon, guarded, principal
from ._routes import (
    MULTIPART,
    Access,
    Body,
    Reply,
    Route,
    checked_body,
    path,
    query,
    query_value,
    route,
)
from ._shapes import BOOLEAN, DISCOVERY, INTEGER, PLUGIN, REFUSED, STRING, array, obj
from ._views import plugin_view

blueprint = Blueprint("plugins", __name__)

PLUGIN_NAME = {
    "type": "string",
    "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$",
    "description": "a plugin's name: lowercase letters, digits, '_' and '-' (at most 63)",
}
"""What a plugin may be named (its manifest's rule)."""
PLUGIN_ERRORS = (404, 409, 429, 502, 503, 504)
"""What the host's and the runtime's errors become (``_problems.from_error``)."""
MANAGE = ("plugins:manage",)
NAME = path("name", "the plugin's name", PLUGIN_NAME)
GRANTS_TEXT = (
    "comma-separated grants: all, a kind (filesystem, network, exec, secrets, apis) or a"
    " request such as secrets:aws_key or network:*:443; granting secrets or all needs admin,"
    " apis:SCOPE needs SCOPE (a 400 names a grant that is not one, a 403 the scope missing)"
)
REFUSED_REPLY = Reply(
    409,
    "Refused (a problem document): the plugin's state forbids it, or its sandbox asks for"
    " what is not granted (SandboxNotGranted: `ungranted` and `requests` say what)",
    REFUSED,
    PROBLEM_TYPE,
)
"""A 409: ``PluginRefused``, and ``SandboxNotGranted`` naming what to grant."""
ARCHIVE = Body(
    {
        "type": "object",
        "required": ["archive"],
        "properties": {
            "archive": {"type": "string", "format": "binary",
                        "description": "the .cwsplugin archive (a zip file)"},
            "signature": {"type": "string", "format": "binary",
                          "description": "its minisign signature (.minisig)"},
            "grant": {"type": "string", "default": "",
                      "description": f"what its sandbox is granted: {GRANTS_TEXT}"},
        },
    },
    MULTIPART,
)  # fmt: skip
"""An uploaded plugin archive (``install``, ``update``)."""
UPDATE = Body(
    ARCHIVE.schema
    | {
        "properties": ARCHIVE.schema["properties"]
        | {
            "allow_downgrade": {
                "type": "string",
                "pattern": r"^\s*(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]"
                r"|1|0)\s*$",
                "default": "false",
                "description": "true or false (also yes/no, 1/0; any case): install a lower"
                " version than the one installed",
            },
        }
    },
    MULTIPART,
)
"""An update's upload: the archive, and whether it may lower the version."""
GRANTS = Body(
    obj(["grants"], grants={
        "type": ["string", "array"], "items": STRING,
        "description": f"{GRANTS_TEXT}; or a list of them",
    }),
    examples=({"grants": "network,secrets:aws_key"},
              {"grants": ["network", "apis:events:publish"]}),
)  # fmt: skip
"""``grant`` and ``revoke``: what to grant or take back."""

_MAX_FILENAME_BYTES = 255
"""The longest upload file name (in UTF-8) that is staged: what most file systems take."""

OPERATIONS = ("load", "unload", "enable", "disable", "reload")
"""``POST /api/v1/plugins/<name>/<operation>``: the host's methods of those names
(``update`` is an upload; ``grant`` and ``revoke`` take a JSON body)."""


@route(blueprint, Route(
    "get", "/api/v1/plugins", "Every discovered plugin and its status",
    (Reply(200, "The plugins", obj(["plugins", "count"], plugins=array(PLUGIN),
                                    count=INTEGER)),),
))  # fmt: skip
async def plugins() -> Any:
    host = current_daemon().host
    views = [plugin_view(host, status) for status in await host.statuses()]
    return {"plugins": views, "count": len(views)}


@route(blueprint, Route(
    "get", "/api/v1/plugins/discover", "Scan the plugin sources again",
    (Reply(200, "What the sources hold, loaded or not", DISCOVERY),),
))  # fmt: skip
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


@route(blueprint, Route(
    "get", "/api/v1/plugins/{name}", "One plugin: status, history, its own status",
    (Reply(200, "The plugin", PLUGIN),),
    params=(NAME,),
    problems=(404,),
))  # fmt: skip
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


@route(blueprint, Route(
    "post", "/api/v1/plugins/{name}/{operation}", "Load, unload, enable, disable or reload",
    (Reply(200, "The plugin, after the operation", PLUGIN), REFUSED_REPLY),
    Access.TOKEN, MANAGE,
    params=(NAME, path("operation", "what to do", {"type": "string", "enum": list(OPERATIONS)})),
    problems=PLUGIN_ERRORS,
))  # fmt: skip
async def plugin_operation(name: str, operation: str) -> Any:
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


@route(blueprint, Route(
    "post", "/api/v1/plugins/{name}/grant",
    "Grant what a plugin's sandbox asks for (granting secrets or all needs admin,"
    " apis:SCOPE needs SCOPE: a token cannot give a plugin more than it holds)",
    (Reply(200, "The plugin, its `sandbox` after the grant", PLUGIN),),
    Access.TOKEN, MANAGE,
    params=(NAME,),
    body=GRANTS,
    problems=PLUGIN_ERRORS,
))  # fmt: skip
async def grant(name: str) -> Any:
    return await change_grants(name, "grant")


@route(blueprint, Route(
    "post", "/api/v1/plugins/{name}/revoke",
    "Take back what a plugin was granted (its API tokens are revoked at once)",
    (Reply(200, "The plugin, its `sandbox` after the revocation", PLUGIN),),
    Access.TOKEN, MANAGE,
    params=(NAME,),
    body=GRANTS,
    problems=PLUGIN_ERRORS,
))  # fmt: skip
async def revoke(name: str) -> Any:
    return await change_grants(name, "revoke")


async def change_grants(name: str, operation: str) -> Any:
    """``grant`` or ``revoke`` the checked body's ``grants``: a 400 names a grant that is
    not one, or one that covers nothing the plugin asks for (or holds)."""
    grants = grants_of(checked_body()["grants"])
    if operation == "grant":
        may_grant(await principal(), grants)
    host = current_daemon().host
    try:
        await getattr(host, operation)(name, grants)
    except ValueError as exc:
        raise HTTPProblem(400, "Bad request", str(exc)) from None
    except (ActorError, PluginError) as exc:
        raise from_error(exc, plugin=name) from None
    return plugin_view(host, await guarded(host.status(name)))


@route(blueprint, Route(
    "post", "/api/v1/plugins/{name}/update", "Update a plugin from an uploaded archive",
    (Reply(200, "The plugin, updated", PLUGIN), REFUSED_REPLY),
    Access.TOKEN, MANAGE,
    params=(NAME,),
    body=UPDATE,
    problems=PLUGIN_ERRORS,
))  # fmt: skip
async def update(name: str) -> Any:
    return await upload(name)


@route(blueprint, Route(
    "post", "/api/v1/plugins/install", "Install a .cwsplugin archive",
    (Reply(201, "The plugin, installed", PLUGIN), REFUSED_REPLY),
    Access.TOKEN, MANAGE,
    body=ARCHIVE,
    problems=PLUGIN_ERRORS,
))  # fmt: skip
async def install() -> Any:
    return await upload(None)


@route(blueprint, Route(
    "delete", "/api/v1/plugins/{name}", "Remove a user plugin",
    (Reply(200, "Removed", obj(["removed", "purged_data"], removed=STRING,
                               purged_data=BOOLEAN)),),
    Access.TOKEN, MANAGE,
    params=(NAME, query("purge_data", {"type": "boolean", "default": False},
                        "also delete the plugin's data folder")),
    problems=PLUGIN_ERRORS,
))  # fmt: skip
async def remove(name: str) -> Any:
    purge = bool(query_value("purge_data"))
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
    grants = grants_of((await request.form).get("grant", ""))
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

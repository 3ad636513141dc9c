"""The resilience suite, bad input, end to end through a real daemon's HTTP API: bad
manifests, bad signatures, archives that try to escape (``..``, absolute paths, links),
malformed JSON and oversize bodies each get a 4xx problem that says what was wrong, and
nothing changes: the plugin list, the state database, the plugin folders and the upload
area are as they were, and no file lands outside the home.

The unit tests (tests/plugins/test_install.py, test_archive.py, test_signing.py) check
each rule on its own; here every refusal crosses the whole stack: multipart upload,
staging, the problem document, and the daemon still serving afterwards."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import stat
import time
import uuid
import warnings
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from api._daemon import Daemon
from cws_actors._packaging._archive import make_archive
from cws_actors._packaging._signing import SigningKey, generate_keypair, sign
from tests.api._daemon import TIMEOUT, client, running_daemon, token
from tests.plugins._fixtures import code_for, write_plugin
from tests.plugins.test_install import snapshot

PROBLEM = "application/problem+json"
# A marker file name no archive entry may ever produce outside the plugin folder.
ESCAPED = "escaped-by-the-archive.txt"


# ---------------------------------------------------------------------- the daemon


@contextlib.asynccontextmanager
async def daemon_with_keeper(
    home: Path, *, scope: str, **settings: Any
) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    """A daemon with one plugin, ``keeper``, installed and running (the state that every
    refusal must leave alone), and a client whose token has ``scope``.

    Under ``require_signed`` a folder plugin loads only as a signed install, so there
    ``keeper`` is installed through the API from an archive signed by a key of its own
    (trusted beside whatever key the test trusts); otherwise it is copied into the folder."""
    signed_install = bool(settings.get("require_signed"))
    if signed_install:
        source = write_plugin(home.parent / f"keeper-src-{uuid.uuid4().hex[:8]}", "keeper",
                              code=code_for("keeper"))  # fmt: skip
        archive = make_archive(source, home.parent / "keeper.cwsplugin").read_bytes()
        keeper_key = generate_keypair()
        trust(home, keeper_key)
        keeper_files = {
            "archive": ("keeper.cwsplugin", archive, "application/zip"),
            "signature": (
                "keeper.cwsplugin.minisig",
                signed(archive, keeper_key, "file:keeper.cwsplugin"),
                "text/plain",
            ),
        }
    else:
        write_plugin(home / "plugins", "keeper", code=code_for("keeper"))
    async with running_daemon(home, **settings) as daemon:
        async with client(daemon, await token(daemon, "admin")) as http:
            if signed_install:
                installed = await http.post("/api/v1/plugins/install", files=keeper_files)
                assert installed.status_code == 201, installed.text
            loaded = await http.post("/api/v1/plugins/keeper/load")
            assert loaded.status_code == 200, loaded.text
        async with client(daemon, await token(daemon, scope)) as http:
            yield daemon, http


def dump_database(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read-only (the daemon keeps it open meanwhile)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {
            table: connection.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall()
            for table in tables
            if table != "sqlite_sequence"
        }


async def observed_state(http: httpx.AsyncClient, home: Path) -> dict[str, Any]:
    """What a refusal must not change, as the API, the database and the disk show it."""
    listed = await http.get("/api/v1/plugins")
    assert listed.status_code == 200, listed.text
    keys = ("name", "version", "source", "enabled", "loaded", "state", "path", "problem")
    uploads = home / "uploads"
    return {
        "plugins": [{key: p[key] for key in keys} for p in listed.json()["plugins"]],
        "database": await trio.to_thread.run_sync(dump_database, home / "state.db"),
        "files": snapshot(home),  # hidden .staging-* folders included
        "uploads": sorted(p.name for p in uploads.iterdir()) if uploads.exists() else [],
    }


def assert_problem(response: httpx.Response, status: int, *details: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    for detail in details:
        assert detail in body["detail"], body["detail"]
    return body


async def still_serving(http: httpx.AsyncClient) -> None:
    answer = await http.post("/api/v1/cli/execute", json={"args": ["keeper", "--text", "ok"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"] == "hello ok"


def upload(archive: bytes, signature: bytes | None = None) -> dict[str, Any]:
    files: dict[str, Any] = {"archive": ("echo.cwsplugin", archive, "application/zip")}
    if signature is not None:
        files["signature"] = ("echo.cwsplugin.minisig", signature, "text/plain")
    return files


# ---------------------------------------------------------------------- archives


def good_source(tmp_path: Path) -> Path:
    return write_plugin(tmp_path / f"src-{uuid.uuid4().hex[:8]}", "echo")


def zipped(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicates we make on purpose
        for name, data in entries:
            bundle.writestr(name, data)
    return buffer.getvalue()


def plugin_entries(source: Path) -> list[tuple[zipfile.ZipInfo | str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(source.iterdir()) if p.is_file()]


def zip_entries(archive: bytes) -> list[tuple[zipfile.ZipInfo | str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
        return [(info.filename, bundle.read(info)) for info in bundle.infolist()]


def with_entry(tmp_path: Path, name: zipfile.ZipInfo | str, data: bytes = b"gotcha") -> bytes:
    return zipped([*plugin_entries(good_source(tmp_path)), (name, data)])


def symlink_entry(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.create_system = 3  # unix, so that the mode bits mean what they say
    return info


def renamed(archive: bytes, name: str) -> bytes:
    """``archive`` with its manifest's ``name = "echo"`` made ``name``; a manifest that
    does not say so (not TOML, no [plugin] table) is left as it is."""
    return zipped(
        [
            (entry, data.replace(b'name = "echo"', f'name = "{name}"'.encode()))
            if entry == "plugin.toml"
            else (entry, data)
            for entry, data in zip_entries(archive)
        ]
    )


def with_manifest(tmp_path: Path, manifest: str) -> bytes:
    entries = [e for e in plugin_entries(good_source(tmp_path)) if e[0] != "plugin.toml"]
    return zipped([("plugin.toml", manifest.encode()), *entries])


MANIFEST = """
[plugin]
name = "echo"
version = "1.0.0"
api_version = "1.0"
entry = "echo_plugin:EchoPlugin"
"""

# The archives whose form breaks a rule: the client's error, a 400 "Bad archive" found
# before anything is unpacked. The others are well formed but unusable here: a 409.
MALFORMED_ARCHIVES = frozenset(
    {"dot-dot", "deep-dot-dot", "absolute", "drive", "backslash", "symlink", "symlinked-folder",
     "duplicate", "nested", "not-a-zip", "empty", "truncated", "zip-bomb", "too-deep",
     "name-too-long"}
)  # fmt: skip

# (id, archive maker, words the problem's detail must contain)
ARCHIVES: list[tuple[str, Callable[[Path], bytes], tuple[str, ...]]] = [
    ("dot-dot", lambda t: with_entry(t, f"../{ESCAPED}"), (f"../{ESCAPED}", "path traversal")),
    (
        "deep-dot-dot",
        lambda t: with_entry(t, f"sub/../../{ESCAPED}"),
        (f"sub/../../{ESCAPED}", "path traversal"),
    ),
    (
        "absolute",
        lambda t: with_entry(t, f"{t}/{ESCAPED}"),
        (ESCAPED, "absolute path"),
    ),
    ("drive", lambda t: with_entry(t, f"C:/{ESCAPED}"), ("drive letter",)),
    ("backslash", lambda t: with_entry(t, f"..\\{ESCAPED}"), ("backslash",)),
    (
        "symlink",
        lambda t: with_entry(t, symlink_entry("passwd", "/etc/passwd"), b"/etc/passwd"),
        ("'passwd'", "symbolic link"),
    ),
    (
        "symlinked-folder",
        lambda t: with_entry(t, symlink_entry("lib", str(t)), str(t).encode()),
        ("'lib'", "symbolic link"),
    ),
    (
        "duplicate",
        lambda t: with_entry(t, "plugin.toml", MANIFEST.encode()),
        ("'plugin.toml'", "appears twice"),
    ),
    (
        "nested",
        lambda t: zipped([(f"echo/{n}", d) for n, d in plugin_entries(good_source(t))]),
        ("no plugin.toml at the archive's root", "pack the folder's contents"),
    ),
    ("not-a-zip", lambda t: b"this is not a zip file at all", ("echo.cwsplugin",)),
    ("empty", lambda t: b"", ("echo.cwsplugin",)),
    (
        "truncated",
        lambda t: (lambda whole: whole[: len(whole) // 2])(
            make_archive(good_source(t), t / f"{uuid.uuid4().hex}.cwsplugin").read_bytes()
        ),
        ("echo.cwsplugin",),
    ),
    (
        "zip-bomb",
        lambda t: with_entry(t, "zeros.bin", bytes(60 * 1024 * 1024)),
        ("'zeros.bin'",),
    ),
    # Manifests: a good archive around a bad plugin.toml.
    (
        "too-deep",
        lambda t: with_entry(t, "/".join(["d"] * 2100) + "/x.txt"),
        ("is 2101 levels deep, over the limit of 32",),
    ),
    (
        "name-too-long",
        lambda t: with_entry(t, "/".join(["n" * 250] * 5)),
        ("byte name, over the limit of 1024",),
    ),
    ("manifest-not-toml", lambda t: with_manifest(t, "[plugin\nname = "), ("not valid TOML",)),
    ("manifest-no-plugin-table", lambda t: with_manifest(t, "[limits]\n"), ("[plugin]",)),
    (
        "manifest-no-version",
        lambda t: with_manifest(t, MANIFEST.replace('version = "1.0.0"\n', "")),
        ("plugin.version",),
    ),
    (
        "manifest-future-api",
        lambda t: with_manifest(t, MANIFEST.replace('api_version = "1.0"', 'api_version = "1.7"')),
        ("needs plugin API 1.7, newer than this host's 1.0",),
    ),
    (
        "manifest-other-major",
        lambda t: with_manifest(t, MANIFEST.replace('api_version = "1.0"', 'api_version = "2.0"')),
        ("major versions differ",),
    ),
    (
        "manifest-bad-entry",
        lambda t: with_manifest(t, MANIFEST.replace("echo_plugin:EchoPlugin", "not an entry")),
        ("plugin.entry must be 'module:Class'",),
    ),
    (
        "manifest-bad-isolation",
        lambda t: with_manifest(t, MANIFEST + 'isolation = "container"\n'),
        ("plugin.isolation", "container"),
    ),
    (
        "manifest-bad-limit",
        lambda t: with_manifest(t, MANIFEST + '[limits]\nmemory_mb = "lots"\n'),
        ("limits.memory_mb",),
    ),
    (
        "manifest-missing-module",
        lambda t: with_manifest(t, MANIFEST.replace("echo_plugin:", "no_such_module:")),
        ("its code is broken", "no_such_module"),
    ),
    (
        "code-that-raises",
        lambda t: zipped(
            [
                ("plugin.toml", MANIFEST.encode()),
                ("echo_plugin.py", b"raise SystemExit('plugin code ran at import')\n"),
            ]
        ),
        ("its code is broken", "SystemExit", "plugin code ran at import"),
    ),
    (
        "subprocess-code-that-raises",
        lambda t: zipped(
            [
                ("plugin.toml", (MANIFEST + 'isolation = "subprocess"\n').encode()),
                ("echo_plugin.py", b"raise SystemExit('plugin code ran at import')\n"),
            ]
        ),
        ("its code is broken",),
    ),
]


@pytest.mark.parametrize("route", ["install", "update"])
@pytest.mark.parametrize(("case", "make", "details"), ARCHIVES, ids=[i for i, _, _ in ARCHIVES])
async def test_a_bad_archive_is_refused_with_its_reason_and_nothing_changes(
    tmp_path: Path, case: str, make: Callable[[Path], bytes], details: tuple[str, ...], route: str
) -> None:
    home = tmp_path / "home"
    archive = make(tmp_path)
    with trio.fail_after(TIMEOUT):
        async with daemon_with_keeper(home, scope="plugins:manage") as (_daemon, http):
            before = await observed_state(http, home)
            path = (
                "/api/v1/plugins/install" if route == "install" else "/api/v1/plugins/keeper/update"
            )
            if route == "update" and case not in MALFORMED_ARCHIVES:
                # An update of keeper must carry keeper's name, or it is refused for the
                # name before the defect under test is looked at.
                archive = renamed(archive, "keeper")
            answer = await http.post(path, files=upload(archive))
            if case in MALFORMED_ARCHIVES:
                body = assert_problem(answer, 400, *details)
                assert (body["title"], body["detail"][:15]) == ("Bad archive", "echo.cwsplugin:")
            else:
                body = assert_problem(answer, 409, *details)
                assert body["title"] == "Refused"
            assert await observed_state(http, home) == before
            await still_serving(http)
    assert not list(tmp_path.rglob(ESCAPED))
    assert not (home.parent / ESCAPED).exists()


async def test_the_same_upload_machinery_accepts_a_good_archive(tmp_path: Path) -> None:
    """The control: what the refusals above change is the archive, nothing else."""
    home = tmp_path / "home"
    archive = make_archive(good_source(tmp_path), tmp_path / "echo.cwsplugin").read_bytes()
    with trio.fail_after(TIMEOUT):
        async with daemon_with_keeper(home, scope="plugins:manage") as (_daemon, http):
            before = await observed_state(http, home)
            answer = await http.post("/api/v1/plugins/install", files=upload(archive))
            assert answer.status_code == 201, answer.text
            after = await observed_state(http, home)
    assert after != before
    assert [p["name"] for p in after["plugins"]] == ["echo", "keeper"]
    assert [row[0] for row in after["database"]["plugins"]] == ["echo"]
    assert after["uploads"] == []


# ---------------------------------------------------------------------- signatures


def trust(home: Path, key: SigningKey) -> None:
    (home / "trusted_keys").mkdir(parents=True, exist_ok=True)
    (home / "trusted_keys" / f"{key.public_key().key_id_hex}.pub").write_text(
        key.public_key().to_minisign()
    )


def signed(data: bytes, key: SigningKey, comment: str = "file:echo.cwsplugin") -> bytes:
    return sign(data, key, trusted_comment=comment).encode()


SIGNATURE_CASES = [
    "unsigned",
    "garbage",
    "not-utf8",
    "wrong-key",
    "tampered",
    "revoked",
    "expired",
    "truncated",
]


@pytest.mark.parametrize("require_signed", [True, False], ids=["required", "optional"])
@pytest.mark.parametrize("case", SIGNATURE_CASES)
async def test_a_bad_signature_is_refused_with_its_reason_and_nothing_changes(
    tmp_path: Path, case: str, require_signed: bool
) -> None:
    home = tmp_path / "home"
    archive = make_archive(good_source(tmp_path), tmp_path / "echo.cwsplugin").read_bytes()
    key = generate_keypair()
    trust(home, key)
    signature: bytes | None
    if case == "unsigned":
        signature = None
    elif case == "garbage":
        signature = b"untrusted comment: hello\nnot base64 at all\n"
    elif case == "not-utf8":
        signature = b"\xff\xfe\x00 binary \x80"
    elif case == "wrong-key":
        signature = signed(archive, generate_keypair())  # a key nobody trusts
    elif case == "tampered":
        signature = signed(archive, key)
        # The same plugin with one more file: bytes that were not signed.
        archive = zipped([*zip_entries(archive), ("extra.py", b"print('not signed')")])
    elif case == "revoked":
        signature = signed(archive, key)
        (home / "revoked_keys").write_text(f"# leaked\n{key.public_key().key_id_hex}\n")
    elif case == "expired":
        signature = signed(archive, key, f"file:echo.cwsplugin\texpires:{int(time.time()) - 60}")
    else:
        assert case == "truncated"
        signature = signed(archive, key)[:60]
    expected = {
        "unsigned": "is not signed and the policy requires signed plugins",
        "not-utf8": "cannot read the signature",
        "revoked": "revoked",
        "expired": "expired",
        "wrong-key": "trust",
    }.get(case, "signature refused")
    with trio.fail_after(TIMEOUT):
        async with daemon_with_keeper(
            home, require_signed=require_signed, scope="plugins:manage"
        ) as (_daemon, http):
            before = await observed_state(http, home)
            answer = await http.post("/api/v1/plugins/install", files=upload(archive, signature))
            if case == "unsigned" and not require_signed:
                # The policy allows unsigned archives: the control of this matrix.
                assert answer.status_code == 201, answer.text
                assert await observed_state(http, home) != before
                return
            assert_problem(answer, 409, expected)
            assert await observed_state(http, home) == before
            await still_serving(http)


async def test_a_good_signature_installs_when_signatures_are_required(tmp_path: Path) -> None:
    """The control of the signature refusals: the same key, the right bytes."""
    home = tmp_path / "home"
    archive = make_archive(good_source(tmp_path), tmp_path / "echo.cwsplugin").read_bytes()
    key = generate_keypair()
    trust(home, key)
    with trio.fail_after(TIMEOUT):
        async with daemon_with_keeper(home, require_signed=True, scope="plugins:manage") as (
            _daemon,
            http,
        ):
            answer = await http.post(
                "/api/v1/plugins/install", files=upload(archive, signed(archive, key))
            )
            assert answer.status_code == 201, answer.text
            history = dump_database(home / "state.db")["history"]
    assert any(
        row[1] == "echo" and row[3] == "verified" and key.public_key().key_id_hex in row[4]
        for row in history
    )


# ---------------------------------------------------------------------- JSON and sizes


MALFORMED = [
    b'{"topic": ',
    b"{'topic': 'a.b'}",
    b"\xff\xfe{}",
    b'{"topic": "a.b",}',
    b"NaN-ish garbage",
]

# Every core route that reads a JSON body, with a body it accepts, and the scope it needs.
JSON_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/api/v1/events", {"topic": "a.b", "payload": {"x": 1}}),
    ("/api/plugins/load", {"plugin_name": "keeper"}),
    ("/api/plugins/unload", {"plugin_name": "keeper"}),
    ("/api/v1/cli/execute", {"args": ["keeper", "--text", "x"]}),
]


@pytest.mark.parametrize(("path", "good"), JSON_ROUTES, ids=[p for p, _ in JSON_ROUTES])
async def test_malformed_or_misshapen_json_is_a_400_that_says_so(
    tmp_path: Path, path: str, good: dict[str, Any]
) -> None:
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with daemon_with_keeper(home, scope="admin") as (daemon, http):
            before = await observed_state(http, home)
            headers = {"Content-Type": "application/json"}
            for raw in MALFORMED:
                answer = await http.post(path, content=raw, headers=headers)
                assert_problem(answer, 400, "not valid JSON")
            for shape in (b"[1, 2]", b'"a string"', b"42", b"null"):
                answer = await http.post(path, content=shape, headers=headers)
                assert_problem(answer, 400)
                assert "JSON" in answer.json()["detail"] or "body" in answer.json()["detail"]
            assert_problem(await http.post(path, content=b""), 400, "needs a JSON body")
            for key, value in good.items():
                if key == "payload":
                    continue  # an event's payload is optional and may be anything
                wrong = {**good, key: {"nested": [value]}}  # the wrong type
                assert_problem(await http.post(path, json=wrong), 400, repr(key))
                missing = {k: v for k, v in good.items() if k != key}
                assert_problem(await http.post(path, json=missing), 400, repr(key))
            assert await observed_state(http, home) == before
            assert list(daemon.runtime.dead_letters()) == []
            await still_serving(http)


async def test_an_oversize_json_body_is_a_413_and_nothing_is_published(tmp_path: Path) -> None:
    home = tmp_path / "home"
    limit = 64 * 1024
    with trio.fail_after(TIMEOUT):
        async with daemon_with_keeper(home, max_body_bytes=limit, scope="admin") as (daemon, http):
            before = await observed_state(http, home)
            with daemon.runtime.bus.subscribe("#", buffer=100) as seen:
                for path, good in JSON_ROUTES:
                    huge = {**good, "padding": "x" * (limit + 1)}
                    answer = await http.post(path, json=huge)
                    assert_problem(answer, 413, f"at most {limit} bytes, got")
                # Just under the limit is accepted: the limit is the one configured.
                fits = json.dumps({"topic": "size.ok", "payload": "x" * (limit - 100)})
                assert len(fits) <= limit
                published = await http.post("/api/v1/events", content=fits)
                assert published.status_code == 202, published.text
                # The first event on the bus is the one that fitted: none of the
                # oversize ones was published (or ran a command) before it.
                assert (await seen.receive()).topic == "size.ok"
            assert await observed_state(http, home) == before
            await still_serving(http)


async def test_an_oversize_upload_is_a_413_and_nothing_changes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    limit = 256 * 1024
    big = good_source(tmp_path)
    (big / "blob.bin").write_bytes(os.urandom(2 * limit))  # incompressible
    archive = make_archive(big, tmp_path / "big.cwsplugin").read_bytes()
    assert len(archive) > limit
    with trio.fail_after(TIMEOUT):
        async with daemon_with_keeper(home, max_upload_bytes=limit, scope="admin") as (
            daemon,
            http,
        ):
            before = await observed_state(http, home)
            answer = await http.post("/api/v1/plugins/install", files=upload(archive))
            assert_problem(answer, 413, f"over the limit of {limit} bytes")
            # The 413 closes that connection (the rest of the body is never parsed): a new
            # connection sees the daemon unchanged and serving.
            bearer = http.headers["Authorization"].removeprefix("Bearer ")
            async with client(daemon, bearer) as fresh:
                assert await observed_state(fresh, home) == before
                await still_serving(fresh)


@pytest.mark.parametrize(
    ("extra", "status", "says"),
    [
        ({"retries": 10**6}, 400, "'retries' is at most 100"),
        ({"retries": 3}, 404, "no-such-plugin"),
        ({"timeout_seconds": 1}, 404, "no-such-plugin"),
        ({"timeout_seconds": 1e-9}, 400, "whole number"),
    ],
    ids=["huge-retries", "retries", "short-timeout", "tiny-timeout"],
)
async def test_loading_an_unknown_plugin_is_a_prompt_answer_whatever_the_options(
    tmp_path: Path, extra: dict[str, Any], status: int, says: str
) -> None:
    """Found by the fuzzer (test_suite_api_fuzz.py): Snoozebot's load route retries a
    plugin that does not exist ``retries`` times (a request that never ends), and a tiny
    ``timeout_seconds`` turned "no such plugin" into a 504. Now an unknown name is a 404
    at once, tries are capped (with a 400 saying so) and share one deadline, and
    ``timeout_seconds`` is whole seconds, as Snoozebot's Go ``int`` is."""
    home = tmp_path / "home"
    with trio.fail_after(TIMEOUT):
        async with daemon_with_keeper(home, scope="plugins:manage") as (_daemon, http):
            before = await observed_state(http, home)
            with trio.move_on_after(5) as waited:
                answer = await http.post(
                    "/api/plugins/load", json={"plugin_name": "no-such-plugin", **extra}
                )
            assert not waited.cancelled_caught, f"no answer in 5 s with {extra}"
            assert_problem(answer, status, says)
            assert await observed_state(http, home) == before

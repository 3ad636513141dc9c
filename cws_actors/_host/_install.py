"""Staging a plugin for installation: unpack or copy it next to its final place, verify
it (signature, manifest, API version, code), and only then rename it into place.

Everything here is synchronous file work; the host runs it in a worker thread. The
staging folder lives inside the user plugin folder (``.staging-*``, hidden from
discovery) so that the final step is one ``rename`` on one file system: a crash or a
kill at any moment leaves either the previous state or the new one, never a mixture.
:func:`recover` tidies up what a killed install or update left behind; it never stops a
start (what it cannot remove is logged, with its path, and left for the operator).

Folders are removed with :func:`remove_tree`, not ``shutil.rmtree``, which recurses
once per level and fails on a deep enough tree.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from .._core._exceptions import ArchiveError, ManifestError
from .._isolation._describe import DescribeFailed, describe_spec, describe_sync
from .._isolation._kernel import sandbox_spec
from .._isolation._launch import allowed_environment
from .._packaging._archive import ArchiveLimits, plugin_tree, unpack_archive
from .._packaging._removal import remove_tree
from .._packaging._signing import SignatureError, load_revocations, load_trusted_keys, verify
from .._plugins._manifest import Manifest, load_manifest
from .._plugins._model import PluginMetadata, api_version_problem

STAGING_PREFIX = ".staging-"
BACKUP_PREFIX = ".old-"
TRASH_PREFIX = ".trash-"

_log = logging.getLogger("cws.plugins")


class InstallRefused(Exception):
    """What the host turns into ``PluginRefused``: the source cannot be installed."""


@attrs.frozen
class TrustPolicy:
    """How installs are checked. ``require_signed`` is off by default so that people
    can install the plugins they write themselves; an archive that comes with a
    signature is always verified, and refused if the signature does not hold."""

    trusted_keys_dir: Path
    revoked_keys: Path
    require_signed: bool = False
    archive_limits: ArchiveLimits = attrs.field(factory=ArchiveLimits)


@attrs.frozen
class StagedPlugin:
    name: str
    version: str
    folder: Path
    manifest: Manifest
    signed_by: str | None
    """The hex id of the key whose signature was verified, if any."""
    files: Mapping[str, str] = attrs.field(factory=dict)
    """The SHA-256 of each of its files, as verified (:func:`tree_digest`)."""


def stage(
    source: Path,
    user_dir: Path,
    policy: TrustPolicy,
    *,
    signature: Path | None = None,
    effective: Callable[[PluginMetadata], PluginMetadata] | None = None,
    admit: Callable[[Manifest], None] | None = None,
    describe_timeout: float = 30.0,
) -> StagedPlugin:
    """Unpack (an archive) or copy (a folder) ``source`` into a staging folder under
    ``user_dir`` and verify it. On any refusal the staging folder is removed.

    The code check imports the plugin in a describe process (limits, environment
    allow-list, at most ``describe_timeout``), whatever its isolation: none of its code
    runs in this process. ``effective`` maps the manifest's metadata to what the
    operator's overrides make of it (isolation, limits); ``admit`` refuses a manifest
    (by raising) before any of the plugin's code runs anywhere (a name installed
    already, an older version).

    Raises:
        InstallRefused: saying what is wrong with the source.
    """
    user_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = user_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        signed_by = _materialize(source, staging, policy, signature)
        manifest = _check(
            staging, effective or (lambda metadata: metadata), admit, describe_timeout
        )
        files = tree_digest(staging)
    except BaseException:
        _remove_or_log(staging, "a refused install's staging folder")
        raise
    metadata = manifest.metadata
    return StagedPlugin(metadata.name, metadata.version, staging, manifest, signed_by, files)


def _materialize(
    source: Path, staging: Path, policy: TrustPolicy, signature: Path | None
) -> str | None:
    if source.is_dir():
        if signature is not None or policy.require_signed:
            raise InstallRefused(
                f"{source} is a folder, and only archives carry signatures"
                " (pack it into a .cwsplugin archive and sign that)"
            )
        _copy_folder(source, staging, policy.archive_limits)
        return None
    if not source.is_file():
        raise InstallRefused(f"{source} does not exist (expected a folder or a .cwsplugin file)")
    if signature is None and Path(f"{source}.minisig").is_file():
        signature = Path(f"{source}.minisig")
    signed_by = None
    # Read once: the bytes verified are the bytes unpacked, whatever happens to the
    # file meanwhile.
    data = source.read_bytes()
    if signature is not None:
        signed_by = _verify(data, signature, policy)
    elif policy.require_signed:
        raise InstallRefused(
            f"{source} is not signed and the policy requires signed plugins"
            f" (expected a signature at {source}.minisig)"
        )
    try:
        unpack_archive(data, staging, policy.archive_limits)
    except (ArchiveError, zipfile.BadZipFile) as exc:
        raise InstallRefused(f"unsafe or broken archive {source.name}: {exc}") from None
    return signed_by


def _verify(data: bytes, signature: Path, policy: TrustPolicy) -> str:
    try:
        text = signature.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallRefused(f"cannot read the signature {signature}: {exc}") from None
    try:
        trusted = load_trusted_keys(policy.trusted_keys_dir)
        revoked = load_revocations(policy.revoked_keys)
        verified = verify(data, text, trusted, revoked_key_ids=revoked, now=time.time())
    except SignatureError as exc:
        raise InstallRefused(f"signature refused: {exc}") from None
    return verified.key_id


def _copy_folder(source: Path, staging: Path, limits: ArchiveLimits) -> None:
    try:
        plugin_tree(source, limits)  # links and depth, checked before anything is copied
    except ValueError as exc:
        raise InstallRefused(str(exc)) from None
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


def _check(
    staging: Path,
    effective: Callable[[PluginMetadata], PluginMetadata],
    admit: Callable[[Manifest], None] | None,
    timeout: float,
) -> Manifest:
    try:
        manifest = load_manifest(staging / "plugin.toml")
    except ManifestError as exc:
        # The staging path means nothing to the user: name the manifest plainly.
        raise InstallRefused(str(exc).replace(str(staging), "<plugin>")) from None
    problem = api_version_problem(manifest.metadata.api_version)
    if problem is not None:
        raise InstallRefused(problem)
    if admit is not None:
        admit(manifest)
    metadata = effective(manifest.metadata)
    try:
        # Its module's top level is plugin code: never run it in the daemon, even for an
        # in-process plugin (which may yet be refused, or run as a subprocess).
        spec = describe_spec(metadata.name, manifest.entry, staging, attrs.asdict(metadata.limits))
        spec["sandbox"] = sandbox_spec(metadata, staging, None, None)
        describe_sync(spec, allowed_environment(metadata.name), timeout=timeout)
    except DescribeFailed as exc:
        raise InstallRefused(f"its code is broken: {exc}") from None
    return manifest


def tree_digest(folder: Path) -> dict[str, str]:
    """The SHA-256 of each file under ``folder``, by its POSIX path relative to it.

    Python's byte-code caches (``__pycache__``) are left out: importing the plugin
    writes them after the install."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if "__pycache__" in relative.parts or not path.is_file():
            continue
        digests[relative.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def changed_file(folder: Path, recorded: Mapping[str, str]) -> str | None:
    """The first file (in path order) of ``folder`` that differs from ``recorded``,
    said with what happened to it (``x.py was added``); None if none did."""
    current = tree_digest(folder)
    for path in sorted(current.keys() | recorded.keys()):
        if path not in recorded:
            return f"{path} was added"
        if path not in current:
            return f"{path} was removed"
        if current[path] != recorded[path]:
            return f"{path} was changed"
    return None


def backup_path(user_dir: Path, name: str) -> Path:
    return user_dir / f"{BACKUP_PREFIX}{name}"


def discard(folder: Path) -> None:
    """Remove ``folder``: first renamed (so it vanishes at once), then deleted."""
    if not folder.exists():
        return
    trash = folder.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex}")
    folder.rename(trash)
    _remove_or_log(trash, f"the discarded {folder.name}")


def _remove_or_log(folder: Path, what: str) -> bool:
    """Remove ``folder``; if that fails, log its path (the next start's :func:`recover`
    tries again) and return False. Used where the removal is tidying up, and must not
    hide the error being handled or fail what already succeeded."""
    try:
        remove_tree(folder)
    except OSError as exc:
        _log.error("cannot remove %s at %s (%s); remove it by hand", what, folder, exc)
        return False
    return True


def recover(user_dir: Path) -> list[str]:
    """Undo what a killed install, update or remove left behind; return what was done.

    A staging or trash folder is deleted, however deep. A backup whose plugin folder is
    missing (the update was killed between its two renames) is put back; otherwise it
    is stale and deleted. It never raises: a leftover it cannot handle is logged at
    ERROR with its path and left in place (hidden from discovery by its dot), so that
    the daemon still starts."""
    done: list[str] = []
    try:
        entries = sorted(user_dir.iterdir()) if user_dir.is_dir() else []
    except OSError as exc:
        _log.error("cannot look for unfinished installs in %s (%s)", user_dir, exc)
        return done
    for entry in entries:
        try:
            step = _recover_entry(user_dir, entry)
        except OSError as exc:
            _log.error(
                "cannot tidy up %s, left by an interrupted install, update or remove (%s);"
                " it is ignored, and can be removed by hand",
                entry,
                exc,
            )
            continue
        if step is not None:
            done.append(step)
    return done


def _recover_entry(user_dir: Path, entry: Path) -> str | None:
    if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
        remove_tree(entry)
        return f"removed the unfinished {entry.name}"
    if entry.name.startswith(BACKUP_PREFIX):
        target = user_dir / entry.name[len(BACKUP_PREFIX) :]
        if target.exists():
            remove_tree(entry)
            return f"removed the stale backup {entry.name}"
        entry.rename(target)
        return f"restored {target.name} from an interrupted update"
    return None

"""Staging a plugin for installation: unpack or copy it next to its final place, verify
it (signature, manifest, API version, code), and only then rename it into place.

Everything here is synchronous file work; the host runs it in a worker thread. The
staging folder lives inside the user plugin folder (``.staging-*``, hidden from
discovery) so that the final step is one ``rename`` on one file system: a crash or a
kill at any moment leaves either the previous state or the new one, never a mixture.
:func:`recover` tidies up what a killed install or update left behind.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import attrs

from ._archive import ArchiveError, ArchiveLimits, unpack_archive
from ._describe import DescribeFailed, describe_spec, describe_sync
from ._loader import PluginImportError, load_plugin_class
from ._manifest import Manifest, ManifestError, load_manifest
from ._plugin import Isolation, PluginMetadata, api_version_problem
from ._plugin_actor import allowed_environment
from ._signing import SignatureError, load_revocations, load_trusted_keys, verify

STAGING_PREFIX = ".staging-"
BACKUP_PREFIX = ".old-"
TRASH_PREFIX = ".trash-"


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


def stage(
    source: Path,
    user_dir: Path,
    policy: TrustPolicy,
    *,
    signature: Path | None = None,
    effective: Callable[[PluginMetadata], PluginMetadata] | None = None,
    describe_timeout: float = 30.0,
) -> StagedPlugin:
    """Unpack (an archive) or copy (a folder) ``source`` into a staging folder under
    ``user_dir`` and verify it. On any refusal the staging folder is removed.

    The code check imports the plugin: in this process for an in-process plugin (it
    runs here anyway), in a describe process (limits, environment allow-list, at most
    ``describe_timeout``) for a subprocess plugin. ``effective`` maps the manifest's
    metadata to what the operator's overrides make of it (isolation, limits).

    Raises:
        InstallRefused: saying what is wrong with the source.
    """
    user_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = user_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        signed_by = _materialize(source, staging, policy, signature)
        manifest = _check(staging, effective or (lambda metadata: metadata), describe_timeout)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    metadata = manifest.metadata
    return StagedPlugin(metadata.name, metadata.version, staging, manifest, signed_by)


def _materialize(
    source: Path, staging: Path, policy: TrustPolicy, signature: Path | None
) -> str | None:
    if source.is_dir():
        if signature is not None or policy.require_signed:
            raise InstallRefused(
                f"{source} is a folder, and only archives carry signatures"
                " (pack it into a .cwsplugin archive and sign that)"
            )
        _copy_folder(source, staging)
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


def _copy_folder(source: Path, staging: Path) -> None:
    for root, dirs, files in os.walk(source):
        for entry in (*dirs, *files):
            if Path(root, entry).is_symlink():
                raise InstallRefused(
                    f"{Path(root, entry)} is a symbolic link; a plugin folder must hold"
                    " its own files"
                )
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


def _check(
    staging: Path, effective: Callable[[PluginMetadata], PluginMetadata], timeout: float
) -> Manifest:
    try:
        manifest = load_manifest(staging / "plugin.toml")
    except ManifestError as exc:
        # The staging path means nothing to the user: name the manifest plainly.
        raise InstallRefused(str(exc).replace(str(staging), "<plugin>")) from None
    problem = api_version_problem(manifest.metadata.api_version)
    if problem is not None:
        raise InstallRefused(problem)
    metadata = effective(manifest.metadata)
    try:
        if metadata.isolation is Isolation.SUBPROCESS:
            # Its module's top level is plugin code: never run it in the daemon.
            spec = describe_spec(
                metadata.name, manifest.entry, staging, attrs.asdict(metadata.limits)
            )
            describe_sync(spec, allowed_environment(metadata.name), timeout=timeout)
        else:
            load_plugin_class(manifest.entry, staging)
    except (PluginImportError, DescribeFailed) as exc:
        raise InstallRefused(f"its code is broken: {exc}") from None
    return manifest


def backup_path(user_dir: Path, name: str) -> Path:
    return user_dir / f"{BACKUP_PREFIX}{name}"


def discard(folder: Path) -> None:
    """Remove ``folder``: first renamed (so it vanishes at once), then deleted."""
    if not folder.exists():
        return
    trash = folder.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex}")
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def recover(user_dir: Path) -> list[str]:
    """Undo what a killed install, update or remove left behind; return what was done.

    A staging or trash folder is deleted. A backup whose plugin folder is missing (the
    update was killed between its two renames) is put back; otherwise it is stale and
    deleted."""
    done: list[str] = []
    if not user_dir.is_dir():
        return done
    for entry in sorted(user_dir.iterdir()):
        if entry.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed the unfinished {entry.name}")
        elif entry.name.startswith(BACKUP_PREFIX):
            target = user_dir / entry.name[len(BACKUP_PREFIX) :]
            if target.exists():
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed the stale backup {entry.name}")
            else:
                entry.rename(target)
                done.append(f"restored {target.name} from an interrupted update")
    return done

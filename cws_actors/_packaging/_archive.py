"""``.cwsplugin`` archives: a zip with ``plugin.toml`` at its root, checked and unpacked safely.

An archive comes from someone else, so every entry is checked before anything is written:
names must be plain relative paths no deeper and no longer than the limits, entries
plain files or folders, and the counts and sizes within :class:`ArchiveLimits`. Declared
sizes can lie, so :func:`unpack_archive` also counts the bytes it writes and stops at the
limits. On any error it removes what it wrote. It is synchronous: callers in Trio run it
in ``trio.to_thread.run_sync``.

Errors, one base::

    ArchiveError (PluginError, ValueError; in _core._exceptions)
    ├── BadArchive        not a zip, corrupt, or no plugin.toml at its root
    └── UnsafeArchive     an entry breaks a safety rule (``entry`` and ``rule`` say which)

Over 500 lines on purpose: the safety rules and the writer that enforces them again as
it writes must be read together, and this is all of them.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import struct
import unicodedata
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import attrs

from .._core._exceptions import ArchiveError
from ._removal import remove_tree

ARCHIVE_SUFFIX = ".cwsplugin"
MANIFEST_NAME = "plugin.toml"
MiB = 1024 * 1024

_CHUNK = 64 * 1024
_FILE_MODE = 0o644
_DIR_MODE = 0o755
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    struct.error,
    NotImplementedError,  # zipfile's word for features it cannot read
    UnicodeDecodeError,  # a local header name that is not the UTF-8 it claims
)
_FLAG_ENCRYPTED = 0x1
# Deflate options (bits 1-2), data descriptor (3), UTF-8 names (11): all else is refused.
_FLAGS_KNOWN = 0x6 | 0x8 | 0x800
# Deterministic archives: zip cannot store times before 1980.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_UNIX = 3
_NAME_MAX = 255
_SHOWN_CHARS = 200


class BadArchive(ArchiveError):
    """Raised when the file is not a zip, is corrupt, or has no ``plugin.toml`` at its root."""


class UnsafeArchive(ArchiveError):
    """Raised when an entry breaks a safety rule (path, type, count, size or ratio).

    Attributes:
        entry: the offending entry's name, or ``None`` for a rule about the whole archive.
        rule: a short code: ``path``, ``depth``, ``path_length``, ``type``,
            ``duplicate``, ``encrypted``, ``compression``, ``files``, ``total_bytes``,
            ``file_bytes`` or ``ratio``.
    """

    def __init__(self, message: str, *, entry: str | None, rule: str) -> None:
        super().__init__(message if entry is None else f"entry {_shown(entry)}: {message}")
        self.entry = entry
        self.rule = rule


def _shown(name: str) -> str:
    """``name`` quoted, its middle cut out when it is too long to read in a message."""
    if len(name) <= _SHOWN_CHARS:
        return repr(name)
    cut = f"{name[: _SHOWN_CHARS // 2]}...{name[-_SHOWN_CHARS // 4 :]}"
    return f"{cut!r} ({len(name)} characters)"


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen
class ArchiveLimits:
    """How much an archive may hold once unpacked."""

    max_files: int = attrs.field(default=2000, validator=_positive)
    """Entries (files and folders) in the archive."""
    max_total_bytes: int = attrs.field(default=100 * MiB, validator=_positive)
    """Uncompressed bytes of all entries together."""
    max_file_bytes: int = attrs.field(default=50 * MiB, validator=_positive)
    """Uncompressed bytes of any one entry."""
    max_ratio: int = attrs.field(default=200, validator=_positive)
    """Uncompressed over compressed size of any one entry larger than ``ratio_above_bytes``."""
    ratio_above_bytes: int = attrs.field(default=1 * MiB, validator=_positive)
    """Small files of repeated text compress legitimately well, and the size limits bound
    them anyway; the ratio rule is for the large entries that make zip bombs."""
    max_depth: int = attrs.field(default=32, validator=_positive)
    """Components in an entry's name (``pkg/sub/mod.py`` is 3). Real plugins nest a few
    levels; thousands would make a tree that tools (and ``shutil.rmtree``) cannot walk."""
    max_path_bytes: int = attrs.field(default=1024, validator=_positive)
    """UTF-8 bytes of an entry's name, so that the unpacked path stays well within the
    system's ``PATH_MAX`` (4,096 on Linux) wherever the home is. Each component is also
    limited to 255 bytes, the file systems' ``NAME_MAX``."""


@attrs.frozen
class ArchiveInfo:
    """What :func:`check_archive` found in an archive that passed every rule."""

    files: tuple[str, ...]
    """The regular files' names, sorted."""
    entry_count: int
    """Entries, folders included."""
    total_bytes: int
    """Declared uncompressed size of all files."""


def _unsafe_name(name: str) -> str | None:
    """Why ``name`` is not a plain relative path, or ``None`` when it is one."""
    if not name:
        return "empty name"
    if "\\" in name:
        return "backslash in the name (a Windows path)"
    if name.startswith("/"):
        return "absolute path"
    if _DRIVE.match(name):
        return "absolute path with a drive letter"
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        return "control character in the name"
    parts = name.removesuffix("/").split("/")
    if ".." in parts:
        return "'..' component (path traversal)"
    if any(part in ("", ".") for part in parts):
        return "empty or '.' component"
    return None


def _check_entry(info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    name = info.filename
    if "\x00" in info.orig_filename:
        raise UnsafeArchive("NUL byte in the name", entry=info.orig_filename, rule="path")
    reason = _unsafe_name(name)
    if reason is not None:
        raise UnsafeArchive(f"{reason}; names must be relative paths", entry=name, rule="path")
    _check_name_size(name, limits)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise UnsafeArchive("is a symbolic link; links are not allowed", entry=name, rule="type")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(
            "is a device, fifo or socket; only files and folders are allowed",
            entry=name,
            rule="type",
        )
    if kind == stat.S_IFDIR and not info.is_dir():
        raise UnsafeArchive(
            "is marked as a folder but has no trailing '/'", entry=name, rule="type"
        )
    if info.is_dir() and info.file_size:
        raise UnsafeArchive("is a folder with content", entry=name, rule="type")
    if info.flag_bits & _FLAG_ENCRYPTED:
        raise UnsafeArchive("is encrypted", entry=name, rule="encrypted")
    if info.flag_bits & ~_FLAGS_KNOWN:
        raise UnsafeArchive(
            f"uses zip features we do not read (flags {info.flag_bits:#06x})",
            entry=name,
            rule="compression",
        )
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise UnsafeArchive(
            f"uses compression method {info.compress_type}; expected stored or deflated",
            entry=name,
            rule="compression",
        )
    _check_size(name, info.file_size, info.compress_size, limits, declared=True)


def _check_name_size(name: str, limits: ArchiveLimits) -> None:
    parts = name.removesuffix("/").split("/")
    if len(parts) > limits.max_depth:
        raise UnsafeArchive(
            f"is {len(parts)} levels deep, over the limit of {limits.max_depth}",
            entry=name,
            rule="depth",
        )
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > limits.max_path_bytes:
        raise UnsafeArchive(
            f"has a {size}-byte name, over the limit of {limits.max_path_bytes}",
            entry=name,
            rule="path_length",
        )
    longest = max(parts, key=lambda part: len(part.encode("utf-8", "surrogateescape")))
    if len(longest.encode("utf-8", "surrogateescape")) > _NAME_MAX:
        raise UnsafeArchive(
            f"has a component of more than {_NAME_MAX} bytes ({longest[:40]!r}...),"
            " longer than file systems allow",
            entry=name,
            rule="path_length",
        )


def _check_size(
    name: str, size: int, compressed: int, limits: ArchiveLimits, *, declared: bool
) -> None:
    verb = "declares" if declared else "unpacks to at least"
    if size > limits.max_file_bytes:
        raise UnsafeArchive(
            f"{verb} {size} bytes, over the per-file limit of {limits.max_file_bytes}",
            entry=name,
            rule="file_bytes",
        )
    if size > limits.ratio_above_bytes and size > limits.max_ratio * max(compressed, 1):
        raise UnsafeArchive(
            f"{verb} {size} bytes from {compressed} compressed, a ratio over the limit of "
            f"{limits.max_ratio} (a zip bomb?)",
            entry=name,
            rule="ratio",
        )


def _folded(name: str) -> str:
    return unicodedata.normalize("NFC", name.removesuffix("/")).casefold()


def _check_layout(infos: list[zipfile.ZipInfo]) -> None:
    """No duplicates (even by case), no file used as a folder, ``plugin.toml`` at the root."""
    seen: dict[str, str] = {}
    for info in infos:
        key = _folded(info.filename)
        if key in seen:
            other = seen[key]
            how = "appears twice" if other == info.filename else f"collides with {other!r}"
            raise UnsafeArchive(how, entry=info.filename, rule="duplicate")
        seen[key] = info.filename
    files = {_folded(info.filename) for info in infos if not info.is_dir()}
    for info in infos:
        for parent in PurePosixPath(info.filename.removesuffix("/")).parents:
            if str(parent) != "." and _folded(str(parent)) in files:
                raise UnsafeArchive(
                    f"needs {str(parent)!r} to be a folder, but it is a file",
                    entry=info.filename,
                    rule="duplicate",
                )
    if not any(info.filename == MANIFEST_NAME for info in infos):
        nested = [info.filename for info in infos if info.filename.endswith("/" + MANIFEST_NAME)]
        hint = (
            f" (found {nested[0]!r}: pack the folder's contents, not the folder)" if nested else ""
        )
        raise BadArchive(f"no {MANIFEST_NAME} at the archive's root{hint}")


def _check_offsets(infos: list[zipfile.ZipInfo], archive_size: int) -> None:
    # A damaged directory can point before or past the file; zipfile would fail deep
    # inside a seek (OSError) rather than say so.
    for info in infos:
        end = info.header_offset + 30 + len(info.orig_filename) + info.compress_size
        if info.header_offset < 0 or end > archive_size:
            raise BadArchive(f"entry {info.filename!r}: corrupt: its data lies outside the file")


def _check_infos(
    infos: list[zipfile.ZipInfo], limits: ArchiveLimits, archive_size: int
) -> ArchiveInfo:
    if len(infos) > limits.max_files:
        raise UnsafeArchive(
            f"has {len(infos)} entries, over the limit of {limits.max_files}",
            entry=None,
            rule="files",
        )
    for info in infos:
        _check_entry(info, limits)
    _check_offsets(infos, archive_size)
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise UnsafeArchive(
            f"declares {total} bytes unpacked, over the limit of {limits.max_total_bytes}",
            entry=None,
            rule="total_bytes",
        )
    _check_layout(infos)
    files = tuple(sorted(info.filename for info in infos if not info.is_dir()))
    return ArchiveInfo(files=files, entry_count=len(infos), total_bytes=total)


def _open_zip(source: Path | bytes) -> tuple[zipfile.ZipFile, int]:
    """The archive and its size in bytes."""
    try:
        if isinstance(source, bytes):
            return zipfile.ZipFile(io.BytesIO(source)), len(source)
        archive = zipfile.ZipFile(source)
    except (*_ZIP_ERRORS, ValueError) as exc:
        what = "the archive" if isinstance(source, bytes) else str(source)
        raise BadArchive(f"{what}: not a valid zip archive: {exc}") from None
    try:
        return archive, source.stat().st_size
    except BaseException:
        archive.close()
        raise


def check_archive(path: Path | bytes, limits: ArchiveLimits | None = None) -> ArchiveInfo:
    """Check every entry's declared name, type and size without unpacking anything
    (``path`` may also be the archive's bytes).

    Raises:
        BadArchive: not a zip, a damaged directory, or no ``plugin.toml`` at its root.
        UnsafeArchive: an entry breaks a rule; the message names it and the rule.
        OSError: ``path`` cannot be read.
    """
    archive, size = _open_zip(path)
    with archive:
        return _check_infos(archive.infolist(), limits or ArchiveLimits(), size)


@attrs.define
class _Budget:
    """Bytes actually written, against the limits (declared sizes may lie)."""

    limits: ArchiveLimits
    total: int = 0

    def spend(self, info: zipfile.ZipInfo, written: int, chunk: int) -> None:
        self.total += chunk
        if written > info.file_size:
            raise UnsafeArchive(
                f"unpacks to more than its declared {info.file_size} bytes",
                entry=info.filename,
                rule="file_bytes",
            )
        _check_size(info.filename, written, info.compress_size, self.limits, declared=False)
        if self.total > self.limits.max_total_bytes:
            raise UnsafeArchive(
                f"unpacking went over the limit of {self.limits.max_total_bytes} bytes",
                entry=info.filename,
                rule="total_bytes",
            )


def _extract_file(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _Budget
) -> None:
    # O_EXCL|O_NOFOLLOW: never write through a link or over something already there.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, _FILE_MODE)
    with os.fdopen(fd, "wb") as out, archive.open(info) as source:
        os.fchmod(out.fileno(), _FILE_MODE)
        written = 0
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            budget.spend(info, written, len(chunk))
            out.write(chunk)


def _make_dirs(destination: Path, relative: PurePosixPath) -> None:
    current = destination
    for part in relative.parts:
        current = current / part
        if not current.is_dir():
            current.mkdir(mode=_DIR_MODE)
            current.chmod(_DIR_MODE)  # the umask may have narrowed it


def _clear(destination: Path, *, created: bool) -> None:
    # remove_tree, not shutil.rmtree: whatever was unpacked, however deep, goes.
    if created:
        remove_tree(destination)
        return
    for child in destination.iterdir():
        remove_tree(child)


def _prepare(destination: Path) -> bool:
    """Make sure ``destination`` is new or empty; return whether we created it."""
    if destination.is_symlink() or (destination.exists() and not destination.is_dir()):
        raise FileExistsError(f"{destination} exists and is not a folder")
    if destination.exists():
        if any(destination.iterdir()):
            raise FileExistsError(f"{destination} is not empty; unpack into a new folder")
        return False
    destination.mkdir(mode=_DIR_MODE)
    destination.chmod(_DIR_MODE)
    return True


def unpack_archive(
    source: Path | bytes, destination: Path, limits: ArchiveLimits | None = None
) -> ArchiveInfo:
    """Check ``source`` (a file, or an archive's bytes), then unpack it into
    ``destination`` (which must be new or empty). Pass the bytes whose signature was
    verified, so that what is unpacked is exactly what was verified.

    Files get mode 0644 and folders 0755 whatever the archive says. On any error,
    nothing is left in ``destination`` (and it is removed if this call created it).

    Raises:
        BadArchive: not a zip, corrupt, or no ``plugin.toml`` at its root.
        UnsafeArchive: an entry breaks a rule, declared or found while unpacking.
        FileExistsError: ``destination`` is not an empty folder.
        OSError: reading or writing failed.
    """
    limits = limits or ArchiveLimits()
    archive, size = _open_zip(source)
    with archive:
        infos = archive.infolist()
        info = _check_infos(infos, limits, size)
        created = _prepare(destination)
        try:
            _extract_all(archive, infos, destination, _Budget(limits))
        except BaseException:
            _clear(destination, created=created)
            raise
    return info


def _extract_all(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], destination: Path, budget: _Budget
) -> None:
    for info in infos:
        relative = PurePosixPath(info.filename.removesuffix("/"))
        if info.is_dir():
            _make_dirs(destination, relative)
            continue
        _make_dirs(destination, relative.parent)
        target = destination.joinpath(*relative.parts)
        try:
            _extract_file(archive, info, target, budget)
        except _ZIP_ERRORS as exc:
            raise BadArchive(f"entry {info.filename!r}: corrupt: {exc}") from None


def plugin_tree(plugin_dir: Path, limits: ArchiveLimits | None = None) -> list[str]:
    """The relative names of the files to pack or copy from a plugin folder:
    ``plugin.toml`` first, then the rest sorted.

    Dotfiles, dot-folders and ``__pycache__`` are left out. The walk is iterative (Python
    3.11's ``os.walk`` recurses once per level), and refuses what an archive could not
    hold, before anything is written.

    Raises:
        ValueError: a symbolic link, or a path deeper than ``limits.max_depth``.
    """
    limits = limits or ArchiveLimits()
    names: list[str] = []
    pending = [PurePosixPath()]
    while pending:
        relative = pending.pop()
        with os.scandir(plugin_dir.joinpath(*relative.parts)) as entries:
            found = list(entries)
        for entry in found:
            path = relative / entry.name
            if entry.is_symlink():
                raise ValueError(
                    f"{plugin_dir / path} is a symbolic link; a plugin folder must hold its"
                    " own files (archives cannot hold links)"
                )
            if entry.name.startswith(".") or entry.name == "__pycache__":
                continue
            if len(path.parts) > limits.max_depth:
                raise ValueError(
                    f"{plugin_dir / relative} is more than {limits.max_depth} levels deep"
                    " (the limit for a plugin's files)"
                )
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
            else:
                names.append(path.as_posix())
    return sorted(names, key=lambda name: (name != MANIFEST_NAME, name))


def make_archive(plugin_dir: Path, output: Path, *, limits: ArchiveLimits | None = None) -> Path:
    """Pack a plugin folder into a ``.cwsplugin`` archive at ``output``; return ``output``.

    The archive is deterministic (sorted entries, fixed times and modes), so the same
    folder gives the same bytes, and it is checked against ``limits`` once written.

    Raises:
        ValueError: no ``plugin.toml`` in ``plugin_dir``, ``output`` inside it, a link,
            or a folder deeper than ``limits.max_depth``.
        UnsafeArchive: the result breaks ``limits`` (``output`` is then removed).
    """
    if not (plugin_dir / MANIFEST_NAME).is_file():
        raise ValueError(f"{plugin_dir}: expected a plugin folder with {MANIFEST_NAME}")
    if output.resolve().is_relative_to(plugin_dir.resolve()):
        raise ValueError(f"output {output} must be outside the plugin folder {plugin_dir}")
    names = plugin_tree(plugin_dir, limits)
    try:
        with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in names:
                info = zipfile.ZipInfo(name, _EPOCH)
                info.create_system = _UNIX
                info.external_attr = (stat.S_IFREG | _FILE_MODE) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with (plugin_dir / name).open("rb") as source, archive.open(info, "w") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK)
        check_archive(output, limits)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return output

"""``.cwsplugin`` archives: real zip files built in tmp_path, one per refusal."""

from __future__ import annotations

import random
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from cws_actors._packaging._archive import (
    ArchiveError,
    ArchiveInfo,
    ArchiveLimits,
    BadArchive,
    MiB,
    UnsafeArchive,
    _Budget,
    check_archive,
    make_archive,
    unpack_archive,
)

MANIFEST = b'[plugin]\nname = "echo"\nversion = "1.0.0"\n'


def _info(name: str, mode: int = stat.S_IFREG | 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0))
    info.create_system = 3
    info.external_attr = mode << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for entry, data in entries:
            archive.writestr(_info(entry) if isinstance(entry, str) else entry, data)
    return path


def _plugin_zip(path: Path, *entries: tuple[str | zipfile.ZipInfo, bytes]) -> Path:
    return _zip(path, [("plugin.toml", MANIFEST), *entries])


def _refused(
    archive: Path,
    destination: Path,
    error: type[ArchiveError],
    match: str,
    limits: ArchiveLimits | None = None,
) -> ArchiveError:
    """Both the check and the unpack refuse it, and the destination holds nothing."""
    with pytest.raises(error, match=match) as checked:
        check_archive(archive, limits)
    with pytest.raises(error, match=match) as unpacked:
        unpack_archive(archive, destination, limits)
    assert str(checked.value) == str(unpacked.value)
    _assert_nothing_in(destination)
    return unpacked.value


def _assert_nothing_in(destination: Path) -> None:
    assert not destination.exists() or list(destination.iterdir()) == []


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def test_unpacks_a_good_archive_with_safe_modes(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(
        tmp_path / "good.cwsplugin",
        (_info("lib/", stat.S_IFDIR | 0o777), b""),
        (_info("lib/code.py", stat.S_IFREG | stat.S_ISUID | 0o4777), b"print('hi')\n"),
        ("data/deep/file.bin", bytes(range(256))),
    )
    info = unpack_archive(archive, out)
    assert info == ArchiveInfo(
        files=("data/deep/file.bin", "lib/code.py", "plugin.toml"),
        entry_count=4,
        total_bytes=len(MANIFEST) + 12 + 256,
    )
    assert (out / "plugin.toml").read_bytes() == MANIFEST
    assert (out / "data/deep/file.bin").read_bytes() == bytes(range(256))
    for path in [out, out / "lib", out / "data", out / "data/deep"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for path in [out / "plugin.toml", out / "lib/code.py", out / "data/deep/file.bin"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # setuid and x bits dropped


def test_unpacks_into_an_existing_empty_folder(tmp_path: Path, out: Path) -> None:
    out.mkdir()
    unpack_archive(_plugin_zip(tmp_path / "a.cwsplugin"), out)
    assert [path.name for path in out.iterdir()] == ["plugin.toml"]


def test_refuses_a_destination_that_is_not_empty(tmp_path: Path, out: Path) -> None:
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty; unpack into a new folder"):
        unpack_archive(_plugin_zip(tmp_path / "a.cwsplugin"), out)
    assert [path.name for path in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil", r"'\.\.' component \(path traversal\)"),
        ("lib/../../evil", r"'\.\.' component"),
        ("/etc/passwd", "absolute path; names must be relative paths"),
        ("C:\\x", "backslash in the name"),
        ("lib\\..\\..\\evil", "backslash in the name"),
        ("C:/x", "absolute path with a drive letter"),
        ("./plugin.py", "empty or '.' component"),
        ("lib//x.py", "empty or '.' component"),
        ("bad\x01name", "control character"),
    ],
)
def test_refuses_names_that_escape(tmp_path: Path, out: Path, name: str, reason: str) -> None:
    archive = _plugin_zip(tmp_path / "evil.cwsplugin", (name, b"owned"))
    error = _refused(archive, out, UnsafeArchive, reason)
    assert isinstance(error, UnsafeArchive)
    assert (error.entry, error.rule) == (name, "path")
    assert repr(name)[1:-1] in str(error)


def test_refuses_a_symlink_entry(tmp_path: Path, out: Path) -> None:
    link = _info("passwd", stat.S_IFLNK | 0o777)
    archive = _plugin_zip(tmp_path / "link.cwsplugin", (link, b"/etc/passwd"))
    _refused(archive, out, UnsafeArchive, "entry 'passwd': is a symbolic link")


@pytest.mark.parametrize("kind", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
def test_refuses_special_files(tmp_path: Path, out: Path, kind: int) -> None:
    archive = _plugin_zip(tmp_path / "dev.cwsplugin", (_info("dev", kind | 0o666), b""))
    _refused(archive, out, UnsafeArchive, "entry 'dev': is a device, fifo or socket")


def test_refuses_duplicate_names(tmp_path: Path, out: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = _plugin_zip(tmp_path / "dup.cwsplugin", ("a.py", b"1"), ("a.py", b"2"))
    _refused(archive, out, UnsafeArchive, "entry 'a.py': appears twice")


def test_refuses_names_that_differ_only_in_case(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "case.cwsplugin", ("README", b"1"), ("readme", b"2"))
    _refused(archive, out, UnsafeArchive, "entry 'readme': collides with 'README'")


def test_refuses_a_file_used_as_a_folder(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "clash.cwsplugin", ("lib", b"1"), ("lib/x.py", b"2"))
    _refused(archive, out, UnsafeArchive, "entry 'lib/x.py': needs 'lib' to be a folder")


def test_refuses_too_many_files(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "many.cwsplugin", *[(f"f{i}", b"") for i in range(4)])
    error = _refused(
        archive,
        out,
        UnsafeArchive,
        "has 5 entries, over the limit of 4",
        ArchiveLimits(max_files=4),
    )
    assert isinstance(error, UnsafeArchive)
    assert (error.entry, error.rule) == (None, "files")


def test_refuses_a_declared_total_over_the_limit(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "big.cwsplugin", ("a", b"x" * 600), ("b", b"y" * 600))
    limits = ArchiveLimits(max_total_bytes=1000, max_file_bytes=1000)
    total = len(MANIFEST) + 1200
    _refused(
        archive,
        out,
        UnsafeArchive,
        f"declares {total} bytes unpacked, over the limit of 1000",
        limits,
    )


def test_refuses_a_declared_file_over_the_limit(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "big.cwsplugin", ("a.bin", b"x" * 600))
    limits = ArchiveLimits(max_file_bytes=500)
    _refused(
        archive,
        out,
        UnsafeArchive,
        "'a.bin': declares 600 bytes, over the per-file limit of 500",
        limits,
    )


def _zip_of_zeros(path: Path, size: int, *, level: int) -> Path:
    """A zip bomb: ``size`` zero bytes, compressed as they stream in, never held in memory."""
    chunk = bytes(MiB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        archive.writestr("plugin.toml", MANIFEST)
        with archive.open("zeros.bin", "w", force_zip64=True) as sink:
            for _ in range(size // MiB):
                sink.write(chunk)
    return path


def test_refuses_a_zip_bomb(tmp_path: Path, out: Path) -> None:
    archive = _zip_of_zeros(tmp_path / "bomb.cwsplugin", 200 * MiB, level=1)
    assert archive.stat().st_size < 2 * MiB
    _refused(
        archive,
        out,
        UnsafeArchive,
        f"'zeros.bin': declares {200 * MiB} bytes, over the per-file limit",
    )


def test_refuses_an_entry_compressed_beyond_the_ratio(tmp_path: Path, out: Path) -> None:
    archive = _zip_of_zeros(tmp_path / "ratio.cwsplugin", 5 * MiB, level=9)
    error = _refused(
        archive, out, UnsafeArchive, "a ratio over the limit of 200 \\(a zip bomb\\?\\)"
    )
    assert isinstance(error, UnsafeArchive)
    assert error.rule == "ratio"


def test_small_files_may_compress_well(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "text.cwsplugin", ("spaces.txt", b" " * 500_000))
    unpack_archive(archive, out)
    assert (out / "spaces.txt").stat().st_size == 500_000


def _patch_headers(
    path: Path, name: bytes, *, size: int | None = None, crc: int | None = None, flags: int = 0
) -> None:
    """Make the headers of entry ``name`` lie: its uncompressed size, CRC, or flag bits."""
    blob = bytearray(path.read_bytes())
    central = blob.index(b"PK\x01\x02")
    while blob[central + 46 : central + 46 + len(name)] != name:
        central = blob.index(b"PK\x01\x02", central + 4)
    local = struct.unpack_from("<I", blob, central + 42)[0]
    # (central directory offset, local header offset) of each field, from APPNOTE 4.3.7/4.3.12
    for (at_central, at_local), value in [((24, 22), size), ((16, 14), crc)]:
        if value is not None:
            struct.pack_into("<I", blob, central + at_central, value)
            struct.pack_into("<I", blob, local + at_local, value)
    for base in (central + 8, local + 6):
        struct.pack_into("<H", blob, base, struct.unpack_from("<H", blob, base)[0] | flags)
    path.write_bytes(bytes(blob))


def test_a_lying_header_is_caught_while_unpacking(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "liar.cwsplugin", ("zeros.bin", bytes(5 * MiB)))
    _patch_headers(archive, b"zeros.bin", size=10)
    assert check_archive(archive).total_bytes == len(MANIFEST) + 10  # the declared sizes pass
    with pytest.raises(BadArchive, match=r"entry 'zeros\.bin': corrupt: Bad CRC-32"):
        unpack_archive(archive, out)
    _assert_nothing_in(out)  # plugin.toml was written first, and removed


def test_a_lying_header_never_unpacks_more_than_it_declares(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "liar.cwsplugin", ("zeros.bin", bytes(5 * MiB)))
    _patch_headers(archive, b"zeros.bin", size=10, crc=zlib.crc32(bytes(10)))
    unpack_archive(archive, out)
    assert (out / "zeros.bin").stat().st_size == 10


def test_the_written_bytes_are_counted_against_the_limits() -> None:
    # zipfile stops at the declared size itself (the test above), so the count that backs
    # it up is exercised directly: it must refuse what the headers did not declare.
    info = _info("x.bin")
    info.file_size, info.compress_size = 100, 100
    budget = _Budget(ArchiveLimits(max_total_bytes=150, max_file_bytes=120))
    budget.spend(info, 100, 100)
    with pytest.raises(UnsafeArchive, match="unpacks to more than its declared 100 bytes"):
        budget.spend(info, 101, 1)
    info.file_size = 200
    with pytest.raises(UnsafeArchive, match="unpacks to at least 121 bytes, over the per-file"):
        _Budget(ArchiveLimits(max_file_bytes=120)).spend(info, 121, 121)
    with pytest.raises(UnsafeArchive, match="went over the limit of 150 bytes"):
        budget.spend(info, 51, 51)


def test_refuses_a_file_that_is_not_a_zip(tmp_path: Path, out: Path) -> None:
    archive = tmp_path / "text.cwsplugin"
    archive.write_text("just some text, not a zip")
    _refused(archive, out, BadArchive, "text.cwsplugin: not a valid zip archive")


def test_refuses_a_truncated_zip(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "cut.cwsplugin", ("a.py", b"x" * 1000))
    archive.write_bytes(archive.read_bytes()[:-30])
    _refused(archive, out, BadArchive, "not a valid zip archive")


def test_refuses_corrupt_data_and_removes_what_it_wrote(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "rot.cwsplugin", ("a.bin", random.Random(1).randbytes(4000)))
    blob = bytearray(archive.read_bytes())
    start = blob.rindex(b"PK\x03\x04") + 30 + len("a.bin") + 100
    blob[start : start + 50] = bytes(50)
    archive.write_bytes(bytes(blob))
    check_archive(archive)  # the directory is intact; the damage shows when reading
    for existing in (False, True):
        if existing:
            out.mkdir()
        with pytest.raises(BadArchive, match=r"entry 'a\.bin': corrupt"):
            unpack_archive(archive, out)
        assert out.exists() is existing
        _assert_nothing_in(out)


def test_corruption_only_ever_raises_archive_errors(tmp_path: Path) -> None:
    good = _plugin_zip(tmp_path / "good.cwsplugin", ("lib/a.py", b"print(1)\n" * 50))
    blob = good.read_bytes()
    rng = random.Random(7)
    outcomes = set()
    for attempt in range(150):
        mutated = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        archive = tmp_path / f"m{attempt}.cwsplugin"
        archive.write_bytes(bytes(mutated))
        destination = tmp_path / f"out{attempt}"
        try:
            unpack_archive(archive, destination)
            outcomes.add("ok")
        except ArchiveError as exc:
            outcomes.add(type(exc).__name__)
            _assert_nothing_in(destination)
    assert "BadArchive" in outcomes


def test_refuses_an_archive_without_a_manifest(tmp_path: Path, out: Path) -> None:
    archive = _zip(tmp_path / "none.cwsplugin", [("code.py", b"")])
    _refused(archive, out, BadArchive, "no plugin.toml at the archive's root$")


def test_says_when_the_manifest_is_one_folder_down(tmp_path: Path, out: Path) -> None:
    archive = _zip(tmp_path / "nested.cwsplugin", [("echo/plugin.toml", MANIFEST)])
    _refused(archive, out, BadArchive, "found 'echo/plugin.toml': pack the folder's contents")


def test_refuses_encrypted_entries(tmp_path: Path, out: Path) -> None:
    archive = _plugin_zip(tmp_path / "enc.cwsplugin", ("secret.py", b"\x00" * 20))
    _patch_headers(archive, b"secret.py", flags=0x1)  # zipfile cannot write encrypted entries
    _refused(archive, out, UnsafeArchive, "entry 'secret.py': is encrypted")


def test_refuses_other_compression_methods(tmp_path: Path, out: Path) -> None:
    packed = _info("a.py")
    packed.compress_type = zipfile.ZIP_BZIP2
    archive = _plugin_zip(tmp_path / "bz.cwsplugin", (packed, b"print(1)\n"))
    _refused(archive, out, UnsafeArchive, "compression method 12; expected stored or deflated")


def test_refuses_an_entry_nested_too_deep_naming_it(tmp_path: Path, out: Path) -> None:
    # 2,100 nested folders: shutil.rmtree (recursive in 3.11) could not remove them.
    name = "/".join(["d"] * 2100) + "/x.txt"
    archive = _plugin_zip(tmp_path / "deep.cwsplugin", (name, b"deep"))
    error = _refused(archive, out, UnsafeArchive, "is 2101 levels deep, over the limit of 32")
    assert (error.entry, error.rule) == (name, "depth")
    # The message names the entry, its middle cut so that it stays readable.
    assert str(error).startswith("entry 'd/d/d/d/d/d/d/d/d/d/")
    assert f"/x.txt' ({len(name)} characters): is 2101 levels deep" in str(error)
    assert len(str(error)) < 250
    # Exactly at the limit is fine.
    at_limit = _plugin_zip(tmp_path / "ok.cwsplugin", ("/".join(["d"] * 31) + "/x.txt", b""))
    assert check_archive(at_limit).entry_count == 2


def test_refuses_a_name_too_long_for_the_file_system(tmp_path: Path, out: Path) -> None:
    long_name = "/".join(["n" * 200] * 6)  # 6 levels, 1,205 bytes
    archive = _plugin_zip(tmp_path / "long.cwsplugin", (long_name, b""))
    error = _refused(archive, out, UnsafeArchive, "has a 1205-byte name, over the limit of 1024")
    assert error.rule == "path_length"
    component = _plugin_zip(tmp_path / "wide.cwsplugin", ("lib/" + "é" * 128 + ".py", b""))
    error = _refused(component, out, UnsafeArchive, "component of more than 255 bytes")
    assert error.rule == "path_length"
    limits = ArchiveLimits(max_depth=2, max_path_bytes=5000)
    _refused(archive, out, UnsafeArchive, "is 6 levels deep, over the limit of 2", limits)


@pytest.mark.parametrize(
    "field",
    ["max_files", "max_total_bytes", "max_file_bytes", "max_ratio", "max_depth", "max_path_bytes"],
)
def test_limits_must_be_positive(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be > 0, got 0"):
        ArchiveLimits(**{field: 0})


def _plugin_folder(root: Path) -> Path:
    (root / "lib").mkdir(parents=True)
    (root / "plugin.toml").write_bytes(MANIFEST)
    (root / "lib" / "echo.py").write_text("class Echo: pass\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"\x00")
    (root / "lib" / "__pycache__").mkdir()
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / ".env").write_text("SECRET=1")
    return root


def test_make_archive_packs_a_plugin_folder(tmp_path: Path, out: Path) -> None:
    folder = _plugin_folder(tmp_path / "echo")
    archive = make_archive(folder, tmp_path / "echo.cwsplugin")
    with zipfile.ZipFile(archive) as opened:
        assert opened.namelist() == ["plugin.toml", "lib/echo.py"]
    assert unpack_archive(archive, out).files == ("lib/echo.py", "plugin.toml")  # sorted
    assert (out / "lib" / "echo.py").read_text() == "class Echo: pass\n"


def test_make_archive_is_deterministic(tmp_path: Path) -> None:
    folder = _plugin_folder(tmp_path / "echo")
    first = make_archive(folder, tmp_path / "one.cwsplugin").read_bytes()
    (folder / "lib" / "echo.py").touch()
    (folder / "plugin.toml").chmod(0o755)
    assert make_archive(folder, tmp_path / "two.cwsplugin").read_bytes() == first


def test_make_archive_refuses_what_it_cannot_pack(tmp_path: Path) -> None:
    folder = _plugin_folder(tmp_path / "echo")
    with pytest.raises(ValueError, match="must be outside the plugin folder"):
        make_archive(folder, folder / "self.cwsplugin")
    with pytest.raises(ValueError, match=r"expected a plugin folder with plugin\.toml"):
        make_archive(folder / "lib", tmp_path / "lib.cwsplugin")
    (folder / "lib" / "link.py").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match=r"link\.py is a symbolic link"):
        make_archive(folder, tmp_path / "linked.cwsplugin")
    assert not (tmp_path / "linked.cwsplugin").exists()


def test_make_archive_refuses_a_folder_nested_too_deep(tmp_path: Path) -> None:
    folder = _plugin_folder(tmp_path / "echo")
    deep = folder.joinpath(*["d"] * 40)
    deep.mkdir(parents=True)
    (deep / "x.py").write_text("")
    with pytest.raises(ValueError, match="is more than 32 levels deep"):
        make_archive(folder, tmp_path / "deep.cwsplugin")
    assert not (tmp_path / "deep.cwsplugin").exists()


def test_make_archive_checks_its_result_against_the_limits(tmp_path: Path) -> None:
    folder = _plugin_folder(tmp_path / "echo")
    output = tmp_path / "echo.cwsplugin"
    with pytest.raises(UnsafeArchive, match="has 2 entries, over the limit of 1"):
        make_archive(folder, output, limits=ArchiveLimits(max_files=1))
    assert not output.exists()

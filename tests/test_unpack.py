"""Unpacking refuses, whole and before writing anything, every member that
would land or point outside the target; a good archive is laid out as is."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
from pathlib import Path

import pytest

from archive.unpack import UnpackRefused, safe_extract


def make_tar(path: Path | io.BytesIO, entries: list[tuple]) -> Path | io.BytesIO:
    """entries: (name, kind, extra): kind file (extra: bytes), dir, sym/lnk (extra: link name),
    fifo, chr, setuid (a file with mode 4755)."""
    with tarfile.open(path, "w") if isinstance(path, Path) else tarfile.open(fileobj=path, mode="w") as tar:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            if kind in ("dir", "fifo", "chr"):
                info.type = {"dir": tarfile.DIRTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
                tar.addfile(info)
            elif kind in ("sym", "lnk"):
                info.type, info.linkname = (tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE), extra
                tar.addfile(info)
            else:
                payload = extra or b"data"
                info.size = len(payload)
                if kind == "setuid":
                    info.mode = 0o4755
                tar.addfile(info, io.BytesIO(payload))
    return path


def _chain(component_length: int, levels: int = 16) -> list[tuple]:
    """The shape of CVE-2025-4517: nested directories reached through a link
    each, then a link climbing back and a link through them to outside."""
    comp, path, entries = "d" * component_length, "", []
    steps = "abcdefghijklmnop"[:levels]
    for step in steps:
        entries.append((os.path.join(path, comp), "dir", None))
        entries.append((os.path.join(path, step), "sym", comp))
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    entries.append((linkpath, "sym", "../" * levels))
    entries.append(("escape", "sym", linkpath + "/../../../../tmp"))
    entries.append(("escape/flag", "file", b"pwned"))
    return entries


CASES = {
    "dotdot": ([("ok.fits", "file", None), ("../../escaped.txt", "file", None)], "'../../escaped.txt' would land outside"),
    "dotdot inside a name": ([("a/../../x", "file", None)], "'a/../../x' would land outside"),
    "absolute": ([("/tmp/obsarch-abs.txt", "file", None)], "has an absolute path"),
    "symlink absolute": ([("l", "sym", "/etc/passwd")], "'l' links to '/etc/passwd', outside"),
    "symlink up": ([("d", "dir", None), ("d/l", "sym", "../..")], "'d/l' links to '../..', outside"),
    "two-step link": ([("a", "sym", "."), ("a/b", "sym", ".."), ("a/b/out", "file", None)], "'a/b' links to '..', outside"),
    "write through a link": ([("l", "sym", "sub"), ("sub", "sym", "/tmp"), ("l/x", "file", None)], "'sub' links to '/tmp'"),
    "link replaced later": ([("sub", "dir", None), ("l", "sym", "sub/x"), ("sub/x", "sym", "../../..")], "'sub/x' links to"),
    "long chain (CVE-2025-4517)": (_chain(247), "longer than the system's limit"),
    "chain within PATH_MAX": (_chain(20), "'escape' links to"),
    "link loop": ([("a", "sym", "b"), ("b", "sym", "a"), ("a/x", "file", None)], "more than 40 links"),
    "hard link outside": ([("h", "lnk", "../../etc/passwd")], "'h' links to '../../etc/passwd', outside"),
    "hard link to no member": ([("h", "lnk", "pre-existing.txt")], "which is no file of this archive"),
    "hard link absolute": ([("h", "lnk", "/etc/passwd")], "links to '/etc/passwd', outside"),
    "device": ([("dev", "chr", None)], "'dev' is a device or a pipe"),
    "fifo": ([("pipe", "fifo", None)], "'pipe' is a device or a pipe"),
    "set-uid": ([("run", "setuid", None)], "'run' has the set-uid or set-gid bit"),
    "file over a directory": ([("d", "dir", None), ("d", "file", None)],
                              "member 'd' would replace the directory 'd' made by member 'd' before it"),
    "directory under a file": ([("f", "file", None), ("f/x", "file", None)], "it is a file"),
    "disk link out": ([("out/secret", "file", None)], "'out/secret' would land outside"),
    "a file already there": ([("new.fits", "file", None), ("pre-existing.txt", "file", b"other")],
                             "'pre-existing.txt' would replace 'pre-existing.txt', which is already there"),
    "a link over a file there": ([("pre-existing.txt", "sym", "new.fits")], "would replace 'pre-existing.txt', which is already there"),
}


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("kind", list(CASES))
def test_an_escaping_archive_is_refused_whole_before_writing(tmp_path, kind):
    entries, message = CASES[kind]
    target = tmp_path / "target"
    target.mkdir()
    (target / "pre-existing.txt").write_text("kept")
    (target / "out").symlink_to(tmp_path)  # a link already on disk, pointing out
    before = _listing(target)
    archive = make_tar(tmp_path / "bad.tar", entries)
    with pytest.raises(UnpackRefused) as refused:
        safe_extract(archive, target)
    line = str(refused.value)
    assert "\n" not in line and line.startswith("bad.tar refused, nothing extracted:") and message in line, line
    assert _listing(target) == before
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/obsarch-abs.txt").exists()
    assert not Path("/tmp/flag").exists()


CLASHES = {  # members: the line, after "clash.tar refused, nothing extracted: member "
    "file, then under it": ([("x", "file", None), ("x/y.fits", "file", None)],
                            "'x/y.fits' needs 'x' as a directory, but it is a file made by member 'x' before it"),
    "under it, then file": ([("x/y.fits", "file", None), ("x", "file", None)],
                            "'x' would replace the directory 'x' that member 'x/y.fits' needs"),
    "under it, then link": ([("x/y.fits", "file", None), ("x", "sym", "sub")],
                            "'x' would replace the directory 'x' that member 'x/y.fits' needs"),
    "under it, then hard link": ([("a.fits", "file", None), ("x/y.fits", "file", None), ("x", "lnk", "a.fits")],
                                 "'x' would replace the directory 'x' that member 'x/y.fits' needs"),
    "two levels under it, then file": ([("a/b/c.fits", "file", None), ("a", "file", None)],
                                       "'a' would replace the directory 'a' that member 'a/b/c.fits' needs"),
    "file, then two levels under it": ([("f", "file", None), ("f/a/b.fits", "file", None)],
                                       "'f/a/b.fits' needs 'f' as a directory, but it is a file made by member 'f' before it"),
    "a link to a file, then under it": ([("f", "file", None), ("l", "sym", "f"), ("l/y.fits", "file", None)],
                                        "'l/y.fits' needs 'f' as a directory, but it is a file made by member 'f' before it"),
    "file, then directory": ([("x", "file", None), ("x/", "dir", None)],
                             "'x' would replace with a directory the file 'x' made by member 'x' before it"),
    "under a file on disk": ([("pre-existing.txt/y.fits", "file", None)], "'pre-existing.txt/y.fits' needs "
                             "'pre-existing.txt' as a directory, but it is a file, already there (downloaded or unpacked before)"),
    "over a directory on disk": ([("ok.fits", "file", None), ("sub", "file", None)],
                                 "'sub' would replace the directory 'sub', already there (downloaded or unpacked before)"),
}


@pytest.mark.parametrize("kind", list(CLASHES))
def test_members_that_clash_are_refused_whole_before_writing(tmp_path, kind):
    """A file or link named like a directory that another member needs, in
    either order: the writer failed on it ("cannot unpack into ...: Is a
    directory") after writing the members before it, as the directories no
    member names were not in the plan."""
    entries, message = CLASHES[kind]
    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    (target / "pre-existing.txt").write_text("kept")
    before = _listing(target)
    with pytest.raises(UnpackRefused) as refused:
        safe_extract(make_tar(tmp_path / "clash.tar", entries), target)
    assert str(refused.value) == f"clash.tar refused, nothing extracted: member {message}"
    assert _listing(target) == before


def test_directories_no_member_names_take_their_members_and_links(tmp_path):
    archive = make_tar(tmp_path / "good.tar", [
        ("x/y.fits", "file", b"Y"), ("x/", "dir", None), ("x/z.fits", "file", b"Z"),  # named after it is needed: one directory
        ("l", "sym", "d/e"), ("l/w.fits", "file", b"W"),  # through a link to directories no member names
    ])
    target = tmp_path / "t"
    assert safe_extract(archive, target) == 5
    assert _listing(target) == ["d", "d/e", "d/e/w.fits", "l", "x", "x/y.fits", "x/z.fits"]
    assert (target / "l" / "w.fits").read_bytes() == b"W"


def test_a_good_archive_is_laid_out_with_its_links(tmp_path):
    archive = make_tar(tmp_path / "good.tar", [
        ("obs", "dir", None), ("obs/a.fits", "file", b"A" * 10), ("obs/latest.fits", "sym", "a.fits"),
        ("obs/copy.fits", "lnk", "obs/a.fits"), ("obs/sub/", "dir", None), ("obs/sub/up", "sym", "../a.fits"),
    ])
    target = tmp_path / "t"
    assert safe_extract(archive, target) == 6
    assert (target / "obs" / "latest.fits").read_bytes() == b"A" * 10
    assert (target / "obs" / "sub" / "up").read_bytes() == b"A" * 10
    copy = target / "obs" / "copy.fits"
    assert copy.read_bytes() == b"A" * 10 and not copy.is_symlink() and copy.stat().st_nlink == 1
    assert stat.S_IMODE((target / "obs" / "a.fits").stat().st_mode) & 0o7000 == 0


def _three_members() -> bytes:
    """A plain tar of d/f0.fits, d/f1.fits, d/f2.fits (1 KiB each): member k's
    header starts at byte 1536 k."""
    buffer = io.BytesIO()
    make_tar(buffer, [(f"d/f{k}.fits", "file", bytes([65 + k]) * 1024) for k in range(3)])
    return buffer.getvalue()


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes(b ^ 0xFF for b in data[at:at + 100]) + data[at + 100:]


TAR = _three_members()
GZ = gzip.compress(TAR, mtime=0)
DAMAGED = {  # file name: (bytes, what the user is told after "NAME refused, nothing extracted: ")
    "cut.tar.gz": (GZ[:len(GZ) // 2], "truncated: the gzip data end early"),
    "cut.tar.bz2": (bz2.compress(TAR)[:100], "truncated: the bzip2 data end early"),
    "cut.tar.xz": (lzma.compress(TAR)[:100], "truncated: the xz data end early"),
    "cut.tar": (TAR[:1536 + 700], "truncated: the tar ends inside member 'd/f1.fits'"),
    "cut-inside.tar.gz": (gzip.compress(TAR[:1536 + 700]), "truncated: the tar in the gzip data ends inside member 'd/f1.fits'"),
    "cut-in-header.tar": (TAR[:2 * 1536 + 100], "truncated: the tar ends inside the header after member 'd/f1.fits'"),
    "damaged-header.tar": (TAR[:2 * 1536] + b"\x01" * 512 + TAR[2 * 1536 + 512:],
                           "corrupt: the header after member 'd/f1.fits' is damaged"),
    "bad-block.tar.gz": (GZ[:10] + b"\xff" + GZ[11:],  # a deflate block of the reserved type
                         "corrupt: the gzip data do not decompress (Error -3 while decompressing data: invalid block type)"),
    "bad-crc.tar.gz": (GZ[:-8] + bytes([GZ[-8] ^ 1]) + GZ[-7:], "corrupt: the gzip data do not decompress (CRC check failed "
                       f"0x{int.from_bytes(GZ[-8:-4], 'little') ^ 1:08x} != 0x{int.from_bytes(GZ[-8:-4], 'little'):08x})"),
    "bad.tar.bz2": (_flipped(bz2.compress(TAR), 4), "corrupt: the bzip2 data do not decompress (Invalid data stream)"),
    "bad.tar.xz": (_flipped(lzma.compress(TAR), 60), "corrupt: the xz data do not decompress (Corrupt input data)"),
    "text.tar.gz": (b"<html>Service unavailable</html>\n" * 40, "not a tar archive, nor a gzip, bzip2 or xz compressed one"),
    "gzipped-text.tar.gz": (gzip.compress(b"not a tar\n" * 100), "the gzip data hold no tar archive (invalid header)"),
    "empty.tar": (b"", "the file is empty"),
    # cut where a header belongs: as a tar that lost members after it, so refused (a review: it was laid out, in part)
    "cut-at-member.tar": (TAR[:1536], "truncated: the tar ends after member 'd/f0.fits', without the blocks that end an "
                                      "archive: members after it may be missing"),
    "no-end.tar": (TAR[:3 * 1536], "truncated: the tar ends after member 'd/f2.fits', without the blocks that end an "
                                   "archive: members after it may be missing"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_truncated_or_corrupt_archive_is_refused_in_one_line(tmp_path, name):
    """A download cut short or corrupt is refused like an escaping one, not
    with the decompressor's own error (an EOFError stopped the whole fetch)
    nor with only the members before the damage laid out."""
    data, why = DAMAGED[name]
    archive = tmp_path / name
    archive.write_bytes(data)
    with pytest.raises(UnpackRefused) as refused:
        safe_extract(archive, tmp_path / "t")
    assert str(refused.value) == f"{name} refused, nothing extracted: {why}"
    assert not (tmp_path / "t").exists()


def test_an_archive_damaged_only_in_its_end_blocks_is_whole(tmp_path):
    """Members are all there when a tar is cut inside its end blocks of zeros."""
    for name, data in (("cut-in-end.tar", TAR[:3 * 1536 + 100]),):
        (tmp_path / name).write_bytes(data)
        assert safe_extract(tmp_path / name, tmp_path / name.removesuffix(".tar")) == 3
        assert (tmp_path / name.removesuffix(".tar") / "d" / "f2.fits").read_bytes() == b"C" * 1024


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress], ids=["gzip", "bzip2", "xz"])
def test_a_compressed_archive_is_told_by_its_bytes(tmp_path, compress):
    archive = tmp_path / "obs.tar"  # the name need not say it
    archive.write_bytes(compress(TAR))
    assert safe_extract(archive, tmp_path / "t") == 3
    assert (tmp_path / "t" / "d" / "f1.fits").read_bytes() == b"B" * 1024


def test_a_plain_tar_whose_first_member_starts_like_a_compressed_stream_is_plain(tmp_path):
    """A member named BZh_flat.fits begins the tar with bzip2's magic: it was refused as corrupt bzip2 (a review)."""
    archive = tmp_path / "flats.tar"
    with archive.open("wb") as handle:
        make_tar(handle, [("BZh_flat.fits", "file", b"F" * 1024)])
    assert safe_extract(archive, tmp_path / "t") == 1
    assert (tmp_path / "t" / "BZh_flat.fits").read_bytes() == b"F" * 1024


def test_a_missing_archive_is_one_line(tmp_path):
    with pytest.raises(UnpackRefused) as refused:
        safe_extract(tmp_path / "gone.tar", tmp_path / "t")
    assert str(refused.value) == "gone.tar refused, nothing extracted: cannot be read: No such file or directory"


def test_unpacking_again_leaves_the_same_files_and_refuses_to_overwrite_others(tmp_path):
    """A retried download unpacks over its own earlier files (the same bytes:
    left as they are); a member that would replace a different file already
    there (a downloaded file of the same name) refuses the archive."""
    archive = make_tar(tmp_path / "obs.tar", [("odf", "dir", None), ("odf/events.fits", "file", b"E" * 100)])
    target = tmp_path / "t"
    assert safe_extract(archive, target) == 2
    first = (target / "odf" / "events.fits").stat().st_mtime_ns
    assert safe_extract(archive, target) == 2
    assert (target / "odf" / "events.fits").stat().st_mtime_ns == first
    (target / "odf" / "events.fits").write_bytes(b"downloaded, verified")
    with pytest.raises(UnpackRefused, match="obs.tar refused, nothing extracted: member 'odf/events.fits' would replace "
                                            "'odf/events.fits', which is already there"):
        safe_extract(archive, target)
    assert (target / "odf" / "events.fits").read_bytes() == b"downloaded, verified"

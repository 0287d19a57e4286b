"""Unpacking tar archives so that no member can land outside the target.

The whole archive is planned before one byte is written: every member is
resolved against a model of the target as it will be laid out, that is the
files already on disk plus the members before it, with each link followed
relative to its own directory, link after link, the way the kernel will
follow them later. Nothing relies on ``os.path.realpath``, whose resolution
stops at PATH_MAX (CVE-2025-4517 bypasses tarfile's data filter that way).
One bad member refuses the whole archive, with one line naming it.

The writer then lays out only what the plan resolved: directories and files
are written at their resolved paths (which hold no link), files are opened
with ``O_NOFOLLOW``, hard links become copies of a member written before, and
no mode bit beyond rwx survives.

Before the plan, the archive is read to its end: a download cut short or
corrupt (gzip, bzip2 or xz data that end early or do not decompress, a tar
header cut short or damaged, which tarfile alone takes for the end of the
archive) is refused whole too, in one line, rather than extracting the
members before the damage or failing with the decompressor's own error.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from archive.exceptions import ObsarchError

MAX_LINK_HOPS = 40  # Linux's own limit (MAXSYMLINKS)
PATH_MAX = 4096
_FILE_MODE, _DIR_MODE = 0o644, 0o755
_COMPRESSIONS = ((b"\x1f\x8b", "gzip", lambda raw: gzip.GzipFile(fileobj=raw)), (b"BZh", "bzip2", bz2.BZ2File),
                 (b"\xfd7zXZ\x00", "xz", lzma.LZMAFile))
# What reading a damaged archive raises: tarfile's own errors, and the
# decompressors' (EOFError when the data end early, zlib.error, LZMAError,
# and OSError for bzip2's "Invalid data stream" and gzip's bad CRC).
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


class UnpackRefused(ObsarchError):
    """An archive with a member that would escape its target, refused whole."""


class _Escape(Exception):
    def __init__(self, why: str):
        self.why = why


@dataclass
class _Entry:
    kind: str  # dir, file, link
    linkname: str = ""
    member: str = ""  # the member that lays it; for a directory no member names, the first that needs it
    implied: bool = False


@dataclass
class _Step:
    member: tarfile.TarInfo
    kind: str
    parts: tuple[str, ...]
    source: tuple[str, ...] = ()  # a hard link's file


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith((".tar", ".tar.gz", ".tgz"))


def safe_extract(archive_path: Path, target: Path) -> int:
    """Extract a tar (plain, gzip, bzip2 or xz) into ``target``; return how many members.

    Raises :class:`UnpackRefused` before anything is written when the archive
    is truncated, corrupt or no tar at all, or when a member would land or
    point outside ``target`` (``..``, absolute names, links and chains of
    links, hard links to anything but a member, devices, FIFOs, set-uid or
    set-gid bits) or clash with another (a file or link where another member
    needs a directory).
    """
    target = Path(target).resolve()
    with _Reader(archive_path) as reader:
        members = reader.members()
        steps = _Plan(target, archive_path.name, reader.tar).check_all(members)
        try:
            target.mkdir(parents=True, exist_ok=True)
            _write(reader.tar, target, steps)
        except OSError as exc:
            raise UnpackRefused(f"{archive_path.name}: cannot unpack into {target}: {exc.strerror or exc}") from exc
    return len(members)


def _is_tar_header(block: bytes) -> bool:
    """Whether ``block`` is a tar header whose checksum holds: a plain tar,
    whatever its first member's name starts with (``BZh`` is bzip2's magic)."""
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


class _Reader:
    """A tar archive, plain or gzip, bzip2 or xz compressed, read whole
    before anything is planned; a damaged one raises :class:`UnpackRefused`.

    The compression is told by its magic bytes rather than by trying each
    (tarfile's way), so a failure has one cause to name. The tar bytes pass
    through :meth:`read` here, which keeps the last block read: tarfile ends
    the member list without a word at a header that is cut short or
    damaged, and that block tells.
    """

    def __init__(self, path: Path):
        self.path, self.kind, self.last = path, "tar", b""
        self.raw = self.inner = self.tar = None

    def __enter__(self) -> _Reader:
        try:
            self.raw = open(self.path, "rb")
            first = self.raw.read(tarfile.BLOCKSIZE)
            self.raw.seek(0)
            for prefix, kind, opener in _COMPRESSIONS if not _is_tar_header(first) else ():  # a member may be named BZh...
                if first.startswith(prefix):
                    self.kind, self.inner = kind, opener(self.raw)
            self.inner = self.inner or self.raw
            self.tar = tarfile.TarFile(fileobj=self, mode="r")  # reads the first header
        except _READ_ERRORS as exc:
            self.__exit__()
            raise self._refused(exc) from exc
        return self

    def __exit__(self, *exc) -> None:
        for stream in (self.inner, self.raw):
            if stream is not None:
                stream.close()

    def read(self, size: int = -1) -> bytes:
        self.last = self.inner.read(size)
        return self.last

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()

    def members(self) -> list[tarfile.TarInfo]:
        """Every member; then the rest of the data, read to their end so that
        gzip's CRC and the end markers of bzip2 and xz are checked."""
        try:
            members = self.tar.getmembers()
            if members and not self.last:  # the data stop where a header or the end-of-archive blocks belong
                raise _Escape(f"truncated: the tar ends after member {members[-1].name!r}, without the blocks that end an "
                              "archive: members after it may be missing")
            if self.last.strip(b"\0"):  # not the end: a header tarfile could not read
                after = f" after member {members[-1].name!r}"
                raise _Escape(f"truncated: the tar ends inside the header{after}" if len(self.last) < tarfile.BLOCKSIZE
                              else f"corrupt: the header{after} is damaged")
            while self.read(1 << 20):
                pass
        except _Escape as escape:
            raise UnpackRefused(f"{self.path.name} refused, nothing extracted: {escape.why}") from None
        except _READ_ERRORS as exc:
            raise self._refused(exc) from exc
        return members

    def _refused(self, exc: BaseException) -> UnpackRefused:
        return UnpackRefused(f"{self.path.name} refused, nothing extracted: {self._why(exc)}")

    def _why(self, exc: BaseException) -> str:
        data = "tar" if self.kind == "tar" else f"{self.kind} data"
        members = self.tar.members if self.tar is not None else []
        if isinstance(exc, EOFError):  # the decompressor's: its stream has no end marker
            return f"truncated: the {data} end early"
        if str(exc) == "unexpected end of data":  # tarfile's: a member's data go past the end
            tar = "the tar" if self.kind == "tar" else f"the tar in the {data}"
            return f"truncated: {tar} ends inside member {members[-1].name!r}"
        if isinstance(exc, OSError) and exc.errno is not None:
            return f"cannot be read: {exc.strerror}"
        if isinstance(exc, (zlib.error, lzma.LZMAError, OSError)) or str(exc).startswith("zlib error"):
            return f"corrupt: the {data} do not decompress ({str(exc).removeprefix('zlib error: ')})"
        if members:  # a later header tarfile refused outright (one a long name or pax header announced)
            return f"corrupt: the header after member {members[-1].name!r} is damaged ({exc})"
        if str(exc) == "empty file" and self.kind == "tar":
            return "the file is empty"
        if self.kind == "tar":
            return "not a tar archive, nor a gzip, bzip2 or xz compressed one"
        return f"the {data} hold no tar archive ({exc})"


class _Plan:
    """The target as it will be once the members checked so far are written."""

    def __init__(self, target: Path, archive_name: str, tar: tarfile.TarFile | None = None):
        self.target, self.archive_name, self.tar = target, archive_name, tar
        self.laid: dict[tuple[str, ...], _Entry] = {}
        self.written_files: set[tuple[str, ...]] = set()

    def check_all(self, members: list[tarfile.TarInfo]) -> list[_Step]:
        steps = [self._check(member) for member in members]
        for parts, entry in list(self.laid.items()):
            if entry.kind == "link":  # links are final now: each must stay inside however it was reached
                try:
                    self.resolve(parts, follow_last=True)
                except _Escape as escape:
                    raise UnpackRefused(f"{self.archive_name} refused, nothing extracted: the link "
                                        f"{'/'.join(parts)!r} {escape.why}") from None
        return steps

    def _check(self, member: tarfile.TarInfo) -> _Step:
        try:
            return self._step(member)
        except _Escape as escape:
            raise UnpackRefused(f"{self.archive_name} refused, nothing extracted: member {member.name!r} {escape.why}") from None

    def _step(self, member: tarfile.TarInfo) -> _Step:
        name = member.name
        if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise _Escape("has an absolute path" if name else "has no name")
        if member.isdev() or member.isfifo():
            raise _Escape("is a device or a pipe")
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            raise _Escape("has the set-uid or set-gid bit")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise _Escape(f"is of an unknown kind (type {member.type!r})")
        *parents, last = name.rstrip("/").split("/")
        if last in ("", ".", ".."):
            if member.isdir() and last in ("", "."):
                return _Step(member, "dir", self._directories(self.resolve(tuple(parents), follow_last=True), name))
            raise _Escape(f"would land outside {self.target}")
        where = self._directories(self.resolve(tuple(parents), follow_last=True), name)
        parts = (*where, last)
        self._too_long(parts)
        existing = self.kind_at(parts)
        if member.isdir():
            if existing == "link":
                parts = self.resolve(parts, follow_last=True)
                self._directories(parts[:-1], name)
            if self.kind_at(parts) not in ("dir", None):
                raise _Escape(f"would replace with a directory the file {'/'.join(parts)!r}{self._whose(parts)}")
            self.laid[parts] = _Entry("dir", member=name)
            return _Step(member, "dir", parts)
        if existing == "dir":
            raise _Escape(f"would replace the directory {'/'.join(parts)!r}{self._whose(parts)}")
        if existing is not None and parts not in self.laid:  # on disk before: downloaded, or unpacked before
            if existing == "file" and member.isreg() and self._same_on_disk(member, parts):
                self.laid[parts] = _Entry("file", member=name)
                self.written_files.add(parts)
                return _Step(member, "same", parts)  # unpacked before (a retry): left as it is
            raise _Escape(f"would replace {'/'.join(parts)!r}, which is already there (downloaded or unpacked before)")
        if member.issym():
            return self._symlink(member, parts)
        if member.islnk():
            return self._hardlink(member, parts)
        self.laid[parts] = _Entry("file", member=name)
        self.written_files.add(parts)
        return _Step(member, "file", parts)

    def _directories(self, parts: tuple[str, ...], name: str) -> tuple[str, ...]:
        """Lay out ``parts`` (resolved: no link in it) and each directory above
        it as directories that member ``name`` needs. Recorded, a later member
        of the same name but another kind is refused here; unrecorded, the
        writer had written the members before it when it failed."""
        for depth in range(1, len(parts) + 1):
            above = parts[:depth]
            kind = self.kind_at(above)
            if kind is None:
                self.laid[above] = _Entry("dir", member=name, implied=True)
            elif kind != "dir":
                raise _Escape(f"needs {'/'.join(above)!r} as a directory, but it is a {kind}{self._whose(above)}")
        return parts

    def _whose(self, parts: tuple[str, ...]) -> str:
        """Which member put what is at ``parts`` there, said after its name."""
        entry = self.laid.get(parts)
        if entry is None:
            return ", already there (downloaded or unpacked before)"
        return f" that member {entry.member!r} needs" if entry.implied else f" made by member {entry.member!r} before it"

    def _symlink(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> _Step:
        link = member.linkname
        if not link or link.startswith("/") or re.match(r"^[A-Za-z]:", link):
            raise _Escape(f"links to {link!r}, outside {self.target}")
        self.laid[parts] = _Entry("link", link, member.name)
        try:
            self.resolve(parts, follow_last=True)
        except _Escape as escape:
            raise _Escape(f"links to {link!r}, outside {self.target}" if "outside" in escape.why else escape.why) from None
        return _Step(member, "link", parts)

    def _hardlink(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> _Step:
        link = member.linkname
        if not link or link.startswith("/"):
            raise _Escape(f"links to {link!r}, outside {self.target}")
        try:
            source = self.resolve(tuple(link.split("/")), follow_last=True)
        except _Escape:
            raise _Escape(f"links to {link!r}, outside {self.target}") from None
        if source not in self.written_files:
            raise _Escape(f"is a hard link to {link!r}, which is no file of this archive")
        self.laid[parts] = _Entry("file", member=member.name)
        self.written_files.add(parts)
        return _Step(member, "hardlink", parts, source)

    def _same_on_disk(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> bool:
        """Whether the file at ``parts`` holds exactly the member's bytes."""
        path = self.target.joinpath(*parts)
        if self.tar is None or os.lstat(path).st_size != member.size:
            return False
        with open(path, "rb") as disk, self.tar.extractfile(member) as data:
            while True:
                mine, theirs = disk.read(1 << 20), data.read(1 << 20)
                if mine != theirs:
                    return False
                if not mine:
                    return True

    def _too_long(self, parts: tuple[str, ...]) -> None:
        if len(str(self.target)) + sum(len(p) + 1 for p in parts) >= PATH_MAX:
            raise _Escape(f"resolves to a path longer than the system's limit ({PATH_MAX})")

    def kind_at(self, parts: tuple[str, ...]) -> str | None:
        """What is at ``parts`` (whose parents hold no link): planned, else on disk."""
        if not parts:
            return "dir"
        entry = self.laid.get(parts)
        if entry is not None:
            return entry.kind
        try:
            mode = os.lstat(self.target.joinpath(*parts)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _Escape(f"cannot be checked: {exc.strerror}") from None
        return "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file"

    def link_text(self, parts: tuple[str, ...]) -> str:
        entry = self.laid.get(parts)
        return entry.linkname if entry is not None else os.readlink(self.target.joinpath(*parts))

    def resolve(self, parts: tuple[str, ...], *, follow_last: bool) -> tuple[str, ...]:
        """Where ``parts`` (relative to the target) lands, following links as
        the kernel would; raises _Escape when it leaves the target."""
        todo = list(reversed(parts))
        current: list[str] = []
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    raise _Escape(f"would land outside {self.target}")
                current.pop()
                continue
            candidate = (*current, part)
            if self.kind_at(candidate) == "link" and (todo or follow_last):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise _Escape(f"goes through more than {MAX_LINK_HOPS} links")
                link = self.link_text(candidate)
                if link.startswith("/"):
                    raise _Escape(f"would land outside {self.target} (through the link {'/'.join(candidate)!r})")
                todo.extend(reversed(link.split("/")))
                continue
            current.append(part)
            self._too_long(tuple(current))
        return tuple(current)


def _write(tar: tarfile.TarFile, target: Path, steps: list[_Step]) -> None:
    for step in steps:
        path = target.joinpath(*step.parts)
        if step.kind == "dir":
            path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            continue
        if step.kind == "same":
            continue
        path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        if os.path.lexists(path):
            path.unlink()
        if step.kind == "link":
            os.symlink(step.member.linkname, path)
        elif step.kind == "hardlink":
            shutil.copyfile(target.joinpath(*step.source), path, follow_symlinks=False)
        else:
            _write_file(tar, step.member, path)


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), _FILE_MODE | (member.mode & 0o111))
    with os.fdopen(fd, "wb") as out, tar.extractfile(member) as data:
        shutil.copyfileobj(data, out, 1 << 20)

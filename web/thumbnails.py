"""Thumbnails made once per file version by a background worker and kept on
disk beside the catalog.

The cache is a directory of PNGs named ``FILEID-vVERSION-KEY.png`` (and
``FILEID-vVERSION-KEY.txt`` holding the reason a file has no picture). KEY is
a digest of the file's path, size, mtime and header hash (:attr:`Item.key`):
file ids start again at 1 in a catalog made again, and the cache outlives the
catalog (a SQLite file removed, a PostgreSQL schema dropped), so the id alone
would show another file's picture. A file that changes on disk gets a new
version at its next ingest, hence a new picture. Deleting the directory is
always safe: pictures are made again on demand.

Where it lives (:func:`default_directory`): beside a SQLite catalog,
``obsarch.db`` -> ``obsarch.db.thumbnails/``; for PostgreSQL,
``$XDG_CACHE_HOME/obsarch/thumbnails/HOST-PORT-DATABASE/`` (``~/.cache`` when
unset). ``obsarch serve --thumbnails DIR`` chooses another.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from archive.exceptions import ObsarchError
from processing.quality import QualityError
from processing.report import THUMBNAIL_PX, picture, write_png


def default_directory(engine: Engine) -> Path:
    """Where the thumbnails of this catalog are kept (see the module's doc)."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(url.database.removeprefix("file:").split("?")[0]).resolve()
        return database.with_name(database.name + ".thumbnails")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = f"{url.host or 'local'}-{url.port or 5432}-{url.database or 'default'}"
    options = str(url.query.get("options", ""))  # a search_path makes another catalog
    if options:
        name += "-" + hashlib.sha256(options.encode()).hexdigest()[:8]
    return base / "obsarch" / "thumbnails" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@dataclass(frozen=True)
class Item:
    """One file version to picture; ``size``, ``mtime_ns`` and ``header_hash``
    as the catalog has them tie its picture to this very file."""

    file_id: int
    version: int
    path: str
    size: int | None = None
    mtime_ns: int | None = None
    header_hash: str | None = None

    @property
    def key(self) -> str:
        """The cache's name for this picture: the catalog's ids and what identifies the file itself."""
        who = "\0".join(str(v) for v in (self.path, self.size, self.mtime_ns, self.header_hash))
        return f"{self.file_id}-v{self.version}-{hashlib.sha256(who.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"


def check_directory(directory: Path) -> None:
    """Refuse a cache directory that cannot be created or written, in one line (at start-up,
    not at the first picture: a worker that cannot write could only say so for each frame)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ObsarchError(f"thumbnail directory {directory}: cannot write there ({exc.strerror or exc})") from exc


@dataclass
class Progress:
    asked: int = 0
    made: int = 0
    failed: int = 0

    @property
    def waiting(self) -> int:
        return self.asked - self.made - self.failed


class ThumbnailCache:
    """Pictures of file versions, made by ``workers`` background threads.

    Pages ask for the frames they show (:meth:`request`); the worker makes
    the urgent ones first, then the rest in the order asked.
    """

    def __init__(self, directory: Path, workers: int = 1, size: int = THUMBNAIL_PX):
        self.directory = Path(directory)
        self.size = size
        self.progress = Progress()
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._queued: set[str] = set()
        self._done = threading.Condition()
        self._counter = 0
        self._threads = [threading.Thread(target=self._work, name=f"thumbnails-{i}", daemon=True) for i in range(workers)]
        self._stopping = False
        self._ready: set[str] = set()  # seen on disk: a night's page need not look at each file again
        self._unwritten: dict[str, str] = {}  # failures whose reason could not be written to the directory either
        if workers < 1:
            raise ValueError(f"workers: {workers}; at least one thread must make the thumbnails")
        for thread in self._threads:
            thread.start()

    def png(self, item: Item) -> Path:
        return self.directory / f"{item.key}.png"

    def _reason_file(self, item: Item) -> Path:
        return self.directory / f"{item.key}.txt"

    def state(self, item: Item) -> tuple[str, str | None]:
        """('ready', None), ('failed', reason) or ('pending', None)."""
        key = item.key
        if key in self._ready:
            return "ready", None
        if self.png(item).exists():
            self._ready.add(key)
            return "ready", None
        if key in self._unwritten:
            return "failed", self._unwritten[key]
        reason = self._reason_file(item)
        try:
            return "failed", reason.read_text(encoding="utf-8")
        except OSError:  # none kept, or the directory is unusable: the worker tries, and says why if it fails
            return "pending", None

    def forget(self, item: Item) -> None:
        """The picture of ``item`` is gone from the disk (the directory was removed): make it again when asked."""
        with self._done:
            self._ready.discard(item.key)
            self._queued.discard(item.key)

    def request(self, items: list[Item], urgent: bool = False) -> None:
        """Queue the pictures not made yet; ``urgent`` ones go first."""
        with self._done:
            for item in items:
                key = item.key
                if key in self._queued or self.state(item)[0] != "pending":
                    continue
                self._queued.add(key)
                self.progress.asked += 1
                self._counter += 1
                self._queue.put((0 if urgent else 1, self._counter, item))

    def wait(self, item: Item, timeout: float) -> tuple[str, str | None]:
        """Ask for one picture first in line and wait up to ``timeout`` seconds for it."""
        self.request([item], urgent=True)
        if item.key in self._queued and self.state(item)[0] == "pending":
            self._promote(item)
        with self._done:
            self._done.wait_for(lambda: self.state(item)[0] != "pending", timeout=timeout)
        return self.state(item)

    def _promote(self, item: Item) -> None:
        with self._done:
            self._counter += 1
            self._queue.put((0, self._counter, item))  # a second entry; the first finds it made

    def _work(self) -> None:
        while not self._stopping:
            _, _, item = self._queue.get()
            if item is None:
                return
            if self.state(item)[0] == "pending":
                self._make(item)

    def _make(self, item: Item) -> None:
        try:
            image = picture(item.path, self.size)
        except (QualityError, ValueError, OSError, MemoryError) as exc:
            outcome = self._failed(item, str(exc) or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001  one odd file must not stop the worker for every other one
            outcome = self._failed(item, f"cannot make a picture: {type(exc).__name__}: {exc}")
        else:
            try:
                write_png(image, self.png(item))
                outcome = "made"
            except OSError as exc:
                outcome = self._failed(item, f"cannot write the thumbnail in {self.directory}: {exc.strerror or exc}")
        with self._done:
            setattr(self.progress, outcome, getattr(self.progress, outcome) + 1)
            self._done.notify_all()

    def _failed(self, item: Item, reason: str) -> str:
        reason = " ".join(reason.split())
        target = self._reason_file(item)
        # written aside and renamed, as the PNGs are: a page asking meanwhile must not read an empty reason
        partial = target.with_name(f".{target.name}.{threading.get_ident()}.partial")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial.write_text(reason, encoding="utf-8")
            os.replace(partial, target)
        except OSError as exc:  # the directory went away or filled up: say so for this item, and go on
            self._unwritten[item.key] = f"{reason} (and the thumbnail directory {self.directory} cannot be written: {exc.strerror or exc})"
        return "failed"

    def close(self) -> None:
        self._stopping = True
        for i, _ in enumerate(self._threads):
            self._queue.put((-1, -1 - i, None))

"""Thumbnails made once per file version by a background worker and kept on
disk beside the catalog.

The cache is a directory of PNGs named ``FILEID-vVERSION.png`` (and
``FILEID-vVERSION.txt`` holding the reason a file has no picture). A file that
changes on disk gets a new version at its next ingest, hence a new picture.
Deleting the directory is always safe: pictures are made again on demand.

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
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

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
    """One file version to picture."""

    file_id: int
    version: int
    path: str


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
        self._queued: set[tuple[int, int]] = set()
        self._done = threading.Condition()
        self._counter = 0
        self._threads = [threading.Thread(target=self._work, name=f"thumbnails-{i}", daemon=True) for i in range(workers)]
        self._stopping = False
        self._ready: set[tuple[int, int]] = set()  # seen on disk: a night's page need not look at each file again
        for thread in self._threads:
            thread.start()

    def png(self, item: Item) -> Path:
        return self.directory / f"{item.file_id}-v{item.version}.png"

    def _reason_file(self, item: Item) -> Path:
        return self.directory / f"{item.file_id}-v{item.version}.txt"

    def state(self, item: Item) -> tuple[str, str | None]:
        """('ready', None), ('failed', reason) or ('pending', None)."""
        key = (item.file_id, item.version)
        if key in self._ready:
            return "ready", None
        if self.png(item).exists():
            self._ready.add(key)
            return "ready", None
        reason = self._reason_file(item)
        if reason.exists():
            return "failed", reason.read_text(encoding="utf-8")
        return "pending", None

    def forget(self, item: Item) -> None:
        """The picture of ``item`` is gone from the disk (the directory was removed): make it again when asked."""
        with self._done:
            self._ready.discard((item.file_id, item.version))
            self._queued.discard((item.file_id, item.version))

    def request(self, items: list[Item], urgent: bool = False) -> None:
        """Queue the pictures not made yet; ``urgent`` ones go first."""
        with self._done:
            for item in items:
                key = (item.file_id, item.version)
                if key in self._queued or self.state(item)[0] != "pending":
                    continue
                self._queued.add(key)
                self.progress.asked += 1
                self._counter += 1
                self._queue.put((0 if urgent else 1, self._counter, item))

    def wait(self, item: Item, timeout: float) -> tuple[str, str | None]:
        """Ask for one picture first in line and wait up to ``timeout`` seconds for it."""
        self.request([item], urgent=True)
        if (item.file_id, item.version) in self._queued and self.state(item)[0] == "pending":
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
            write_png(picture(item.path, self.size), self.png(item))
            outcome = "made"
        except (QualityError, ValueError, OSError, MemoryError) as exc:
            outcome = self._failed(item, str(exc) or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001  one odd file must not stop the worker for every other one
            outcome = self._failed(item, f"cannot make a picture: {type(exc).__name__}: {exc}")
        with self._done:
            setattr(self.progress, outcome, getattr(self.progress, outcome) + 1)
            self._done.notify_all()

    def _failed(self, item: Item, reason: str) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self._reason_file(item)
        # written aside and renamed, as the PNGs are: a page asking meanwhile must not read an empty reason
        partial = target.with_name(f".{target.name}.{threading.get_ident()}.partial")
        partial.write_text(" ".join(reason.split()), encoding="utf-8")
        os.replace(partial, target)
        return "failed"

    def close(self) -> None:
        self._stopping = True
        for i, _ in enumerate(self._threads):
            self._queue.put((-1, -1 - i, None))

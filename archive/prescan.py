"""The directories an ingest scans, read on a thread while it does something else.

A re-scan of an unchanged tree is mostly start-up and stats: ``obsarch
ingest`` spends ~0.2 s of one core importing SQLAlchemy before it can open
the catalog, and the 48,000 stats of the tree take ~0.1 s more. The stats
need nothing from the catalog, and :func:`archive._scan.read_directory`
makes them without the GIL, so the command starts them first
(:func:`start`) and hands them to ``Catalog.ingest(..., ahead=)``, whose
scan takes what was read (:meth:`Prescan.take`) once it has the stored rows
to compare with. Without one, ``Catalog.ingest`` starts its own around its
fetch of the stored rows.

A listing serves one scan, of the directories it was read for; each
directory's listing is found by its (st_dev, st_ino, st_mtime_ns,
st_ctime_ns), so a directory whose entries changed since it was read (a
file added, removed or renamed) is read again by the scan. Without the compiled
module nothing is read ahead. This module imports only the standard
library, to be ahead of the imports.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

try:
    from archive._scan import read_directory
except ImportError:  # built without a C compiler: the scan reads everything itself
    read_directory = None

__all__ = ["start", "Prescan", "LIMIT"]

# Entries read ahead at most (~100 bytes each): a bigger tree is read ahead
# up to here and the rest by the scan itself.
LIMIT = 500_000

# Threads that stat: one, beside the command's own (two cores here, and the
# imports keep one busy).
THREADS = 1

# A directory changed this recently (ns) before it was read is not kept:
# an entry added in the same tick of the file system's clock (1-2 s on some)
# would leave its mtime as it was read.
RACY_NS = 2_000_000_000


def _directories(paths: Iterable) -> tuple[str, ...]:
    """The directories among ``paths``, as ingest resolves them."""
    found = []
    for path in paths:
        try:
            text = os.fspath(path)
            if text.strip():
                real = os.path.realpath(os.path.expanduser(text))
                if os.path.isdir(real):
                    found.append(real)
        except (OSError, TypeError, ValueError):  # the ingest itself says what is wrong with it
            continue
    return tuple(found)


def _read(directories: tuple[str, ...], found: dict, stop: threading.Event, done: threading.Event) -> None:
    budget = LIMIT
    stack = list(reversed(directories))
    try:
        while stack and budget > 0 and not stop.is_set():
            directory = stack.pop()
            began = time.time_ns()
            listing = read_directory(os.fsencode(directory), THREADS)
            if listing is None:
                continue
            if listing.key[2] < began - RACY_NS:  # else an entry made in the same tick would go unseen: the scan reads it
                found.setdefault(listing.key, listing)
            budget -= 1 + len(listing)
            stack.extend(os.path.join(directory, os.fsdecode(name)) for name in reversed(listing.subdirectories()))
    except Exception:  # noqa: BLE001  (reading ahead is only a head start: the scan reads what is missing, and says why)
        return
    finally:
        done.set()


class Prescan:
    """The directories among some paths being read on a thread."""

    def __init__(self, directories: tuple[str, ...]):
        self.directories = directories
        self._found: dict = {}
        self._stop, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(
            target=_read, args=(directories, self._found, self._stop, self._done), name="obsarch-prescan", daemon=True
        )
        self._thread.start()

    def take(self, paths: Iterable) -> dict:
        """What was read, once the thread has ended ({(st_dev, st_ino,
        st_mtime_ns, st_ctime_ns): Listing}); empty when ``paths`` are not
        the directories it read, or it was taken before: a listing serves
        one scan. Interrupted while it waits (Ctrl-C), the thread is told to
        stop and the interrupt goes on at once: no reader is forked after it."""
        try:
            self._done.wait()
        except BaseException:
            self.stop()
            raise
        self._thread.join()
        found, self._found = self._found, {}
        return found if _directories(paths) == self.directories else {}

    def stop(self) -> None:
        """Tell the thread to stop after the directory it is reading, and
        drop what was read, without waiting: for an ingest that is ending
        anyway. :func:`join_stopped` waits for it, before anything forks."""
        self._stop.set()
        self._found = {}
        if self._thread.is_alive():
            _STOPPED.append(self._thread)


# Threads told to stop and not waited for (an ingest interrupted or failed).
_STOPPED: list[threading.Thread] = []


def join_stopped() -> None:
    """Wait for the threads told to stop: before an ingest forks its readers,
    no thread of an earlier one is left inside a system call."""
    while _STOPPED:
        _STOPPED.pop().join()


def start(paths: Iterable) -> Prescan | None:
    """Begin reading the directories among ``paths`` and those below them
    (not through links) on a thread; None when there is nothing to read
    ahead (no directory, or no compiled module)."""
    directories = _directories(paths)
    if read_directory is None or not directories:
        return None
    return Prescan(directories)

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
directory's listing is found by its (st_dev, st_ino). Without the compiled
module nothing is read ahead. This module imports only the standard
library, to be ahead of the imports.
"""

from __future__ import annotations

import os
import threading
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


def _read(directories: tuple[str, ...], found: dict) -> None:
    budget = LIMIT
    stack = list(reversed(directories))
    try:
        while stack and budget > 0:
            directory = stack.pop()
            listing = read_directory(os.fsencode(directory), THREADS)
            if listing is None:
                continue
            found.setdefault(listing.key, listing)
            budget -= len(listing)
            stack.extend(os.path.join(directory, os.fsdecode(name)) for name in reversed(listing.subdirectories()))
    except Exception:  # noqa: BLE001  (reading ahead is only a head start: the scan reads what is missing, and says why)
        return


class Prescan:
    """The directories among some paths being read on a thread."""

    def __init__(self, directories: tuple[str, ...]):
        self.directories = directories
        self._found: dict = {}
        self._thread = threading.Thread(target=_read, args=(directories, self._found), name="obsarch-prescan", daemon=True)
        self._thread.start()

    def take(self, paths: Iterable) -> dict:
        """What was read, once the thread has ended ({(st_dev, st_ino):
        Listing}); empty when ``paths`` are not the directories it read, or
        it was taken before: a listing serves one scan."""
        self._thread.join()  # never left running: ingest forks its readers later
        found, self._found = self._found, {}
        return found if _directories(paths) == self.directories else {}


def start(paths: Iterable) -> Prescan | None:
    """Begin reading the directories among ``paths`` and those below them
    (not through links) on a thread; None when there is nothing to read
    ahead (no directory, or no compiled module)."""
    directories = _directories(paths)
    if read_directory is None or not directories:
        return None
    return Prescan(directories)

"""Running a function over many items: in this process, or in a process pool.

Workers only compute; results come back to the main process, which writes
the catalog.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator

Progress = Callable[[int, int], None]


def parallel_map(
    function: Callable,
    items: list,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[int, object]]:
    """Yield ``(index, function(item))`` for every item, in completion order.

    ``workers`` 1 runs here; otherwise a pool of that many processes (default:
    all cores). ``function`` must be importable (a module-level function).
    """
    total = len(items)
    workers = workers or os.cpu_count() or 1
    if workers == 1 or total <= 1:
        for done, (index, item) in enumerate(enumerate(items), start=1):
            yield index, function(item)
            if progress:
                progress(done, total)
        return
    with multiprocessing.Pool(min(workers, total)) as pool:
        results: Iterable = pool.imap_unordered(_Indexed(function), list(enumerate(items)), chunksize=1)
        for done, (index, result) in enumerate(results, start=1):
            yield index, result
            if progress:
                progress(done, total)


class _Indexed:
    """Picklable wrapper that keeps each result's index."""

    def __init__(self, function: Callable):
        self.function = function

    def __call__(self, pair: tuple[int, object]) -> tuple[int, object]:
        index, item = pair
        return index, self.function(item)

"""Running a function over many items: in this process, or in a process pool.

Workers only compute; results come back to the main process, which writes
the catalog.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

Progress = Callable[[int, int], None]


EXECUTORS = ("pool", "serial", "dask")


def parallel_map(
    function: Callable,
    items: list,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    executor: str = "pool",
    scheduler: str | None = None,
) -> Iterator[tuple[int, object]]:
    """Yield ``(index, function(item))`` for every item, in completion order.

    ``executor``: ``pool`` (default) runs a pool of ``workers`` processes
    (default: all cores), ``serial`` runs here, ``dask`` submits to the
    dask.distributed scheduler at ``scheduler`` (``tcp://host:8786``), or to a
    local cluster of ``workers`` processes when none is given. ``function``
    must be importable (a module-level function).
    """
    from archive.exceptions import ObsarchError

    if executor not in EXECUTORS:
        raise ObsarchError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    total = len(items)
    if executor == "dask":
        yield from _dask_map(function, items, workers, scheduler, progress)
        return
    workers = 1 if executor == "serial" else (workers or os.cpu_count() or 1)
    if workers == 1 or total <= 1:
        for done, (index, item) in enumerate(enumerate(items), start=1):
            yield index, function(item)
            if progress:
                progress(done, total)
        return
    from archive.ingest import worker_pool

    with worker_pool(min(workers, total)) as pool:
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


def _dask_map(function, items, workers, scheduler, progress):
    from archive.exceptions import ObsarchError

    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise ObsarchError("the dask executor needs dask.distributed: pip install 'obsarch[dask]'") from exc
    cluster = None if scheduler else LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                                  processes=True, dashboard_address=None)
    try:
        client = Client(scheduler or cluster, timeout="30s")
    except OSError as exc:
        raise ObsarchError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from exc
    try:
        futures = {client.submit(function, item, pure=False): index for index, item in enumerate(items)}
        for done, future in enumerate(as_completed(futures), start=1):
            yield futures[future], future.result()
            if progress:
                progress(done, len(items))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

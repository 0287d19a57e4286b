"""Reading headers on the workers of a dask.distributed cluster.

The scan (a stat of every file) and every catalog write stay in the one
process that runs ``obsarch ingest``; only the reading and parsing of
headers moves to the workers, which open the files by the same absolute
paths over a shared file system. A chunk's cards come back as COPY text on
PostgreSQL (bytes, cheap to send over the network) or as tuples on SQLite.
At most a few chunks per worker are in flight, so a tree of millions of
files never piles its results up in the writer's memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from archive.exceptions import ObsarchError

IN_FLIGHT_PER_WORKER = 3
CONNECT_TIMEOUT = "10s"  # how long to keep trying a scheduler that does not answer


def read_chunk_on_worker(args: tuple, config: dict | None) -> tuple:
    """:func:`archive.ingest.read_chunk` on a dask worker, with the keyword
    maps of ``config`` (loaded once per worker process)."""
    from archive import ingest

    if ingest._MAPS is None or getattr(ingest, "_MAPS_CONFIG", None) != config:
        ingest._init_worker(config)
        ingest._MAPS_CONFIG = config
    return ingest.read_chunk(args)


def _client(scheduler: str | None, workers: int | None):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ObsarchError("the dask executor needs dask.distributed: pip install 'obsarch[dask]'") from exc
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT), None
    except (OSError, TimeoutError) as exc:
        raise ObsarchError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from exc


def read_on_dask(
    chunks: list[tuple], config: dict | None, scheduler: str | None, workers: int | None
) -> Iterator[tuple[int, tuple]]:
    """Yield ``(index of the chunk, read_chunk's result)`` in completion
    order, reading on the cluster at ``scheduler`` (``tcp://host:8786``), or
    on a local cluster of ``workers`` processes when none is given."""
    from dask.distributed import as_completed

    client, cluster = _client(scheduler, workers)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        limit = IN_FLIGHT_PER_WORKER * n_workers
        pending = iter(enumerate(chunks))
        index_of = {}

        def submit(index: int, args: tuple):
            future = client.submit(read_chunk_on_worker, args, config, pure=False)
            index_of[future] = index
            return future

        running = as_completed([submit(i, a) for i, a in _take(pending, limit)])
        for future in running:
            result = future.result()
            index = index_of.pop(future)
            future.release()
            for i, a in _take(pending, 1):
                running.add(submit(i, a))
            yield index, result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _take(iterator: Iterator, n: int) -> list:
    taken = []
    for item in iterator:
        taken.append(item)
        if len(taken) == n:
            break
    return taken

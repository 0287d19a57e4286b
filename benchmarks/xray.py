"""X-ray summaries: speed and memory next to the usual astropy script, and
what the after-ingest hook costs a scan of optical frames.

    python benchmarks/xray.py [--events 5000000] [--frames 2000]

1. Writes an event list of N events (TIME plus 9 other columns, as an
   EVENTS table with a GTI) and summarizes it: obsarch's chunked reader
   (``processing.xray.summarize_file``) next to what observers write today,
   ``Table.read`` of the EVENTS table and ``len`` / ``min`` / ``max`` of TIME
   (the whole table in memory), and ``fits.getdata(...)['TIME']`` (astropy
   converts the whole column). Peak memory is measured with tracemalloc.
2. Ingests M small optical frames into SQLite, then times the X-ray hook
   on that run (one indexed query, no file opened) next to the ingest itself.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from astropy.io import fits


def write_events(path: Path, n: int, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    columns = [fits.Column(name="TIME", format="D", array=np.sort(rng.uniform(0.0, 1e5, n)))]
    columns += [fits.Column(name=name, format="E", array=rng.normal(0, 1, n).astype(np.float32))
                for name in ("X", "Y", "DETX", "DETY", "ENERGY")]
    columns += [fits.Column(name=name, format="J", array=rng.integers(0, 4096, n, dtype=np.int32))
                for name in ("PI", "PHA", "GRADE", "CCDNR")]
    events = fits.BinTableHDU.from_columns(columns, name="EVENTS")
    events.header.update({"HDUCLAS1": "EVENTS", "EXPOSURE": 9.0e4, "TSTART": 0.0, "TSTOP": 1e5, "MJDREF": 50814.0,
                          "TIMESYS": "TT"})
    gti = fits.BinTableHDU.from_columns([fits.Column(name="START", format="D", array=[0.0, 5e4]),
                                         fits.Column(name="STOP", format="D", array=[4.5e4, 1e5])], name="GTI")
    fits.HDUList([fits.PrimaryHDU(), events, gti]).writeto(path, overwrite=True)


def measured(function) -> tuple[float, float, object]:
    """(seconds, peak MB, result)."""
    tracemalloc.start()
    start = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return seconds, peak, result


def astropy_table(path: Path):
    from astropy.table import Table

    table = Table.read(path, hdu="EVENTS")
    return len(table), float(table["TIME"].min()), float(table["TIME"].max())


def astropy_column(path: Path):
    times = fits.getdata(path, "EVENTS")["TIME"]
    return len(times), float(times.min()), float(times.max())


def events_benchmark(directory: Path, n: int) -> None:
    from processing import xray

    path = directory / "big.evt"
    write_events(path, n)
    size = path.stat().st_size / 1e6
    xray.summarize_file(str(path))  # imports outside the measurement
    astropy_column(path)
    rows = []
    for label, function in (
        ("obsarch summarize_file (chunked, memory-mapped)", lambda: xray.summarize_file(str(path))),
        ("astropy fits.getdata(...)['TIME']", lambda: astropy_column(path)),
        ("astropy Table.read(EVENTS)", lambda: astropy_table(path)),
    ):
        seconds, peak, _ = measured(function)
        rows.append((label, seconds, peak))
    print(f"event list: {n:,} events, {size:.0f} MB on disk (TIME column {n * 8 / 1e6:.0f} MB)")
    for label, seconds, peak in rows:
        print(f"  {label:<50} {seconds:7.3f} s   peak {peak:8.1f} MB")


def hook_benchmark(directory: Path, frames: int) -> None:
    from archive.catalog import Catalog
    from processing import xray_catalog

    rng = np.random.default_rng(1)
    data_dir = directory / "frames"
    data_dir.mkdir()
    for i in range(frames):
        hdu = fits.PrimaryHDU(rng.integers(0, 100, (8, 8), dtype=np.int16))
        hdu.header.update({"IMAGETYP": "Light Frame", "FILTER": "V", "EXPTIME": 60.0, "DATE-OBS": "2017-08-16T03:00:00"})
        hdu.writeto(data_dir / f"f{i:05d}.fits")
    catalog = Catalog.create(f"sqlite:///{directory / 'c.db'}")
    start = time.perf_counter()
    summary = catalog.ingest([data_dir], workers=1)
    ingest_s = time.perf_counter() - start
    start = time.perf_counter()
    result = xray_catalog.summarize(catalog.engine, run_id=summary.run_id, workers=1)
    hook_s = time.perf_counter() - start
    assert not result.summarized
    print(f"ingest of {frames:,} optical frames: {ingest_s:.3f} s; X-ray hook on that run: {hook_s * 1000:.1f} ms "
          f"({hook_s / ingest_s * 100:.1f} % of the ingest)")
    catalog.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="obsarch-xray-bench-"))
    try:
        events_benchmark(directory, args.events)
        hook_benchmark(directory, args.frames)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

"""How fast the review app answers, next to the same question asked of `obsarch query`.

    python benchmarks/web.py [--frames 300] [--size 2048] [--rounds 40] [--db URL] [--keep | --reuse DIR]

Writes a night of N 16-bit frames with stars, ingests and measures them, starts
`obsarch serve` (uvicorn, in this process) and prints:

- how fast the background worker makes thumbnails, when an open night view
  shows 10 %, half and all of them (its script asks every 2 s), and how fast
  the whole night's page answers meanwhile;
- the median and 95th-percentile answer time of each page once the thumbnails
  exist, over real HTTP;
- next to them, the same night's rows through `obsarch query --format csv`
  (a new process, as a user runs it) and through ``Catalog.query`` in-process.

Measured 2026-12-01, 300 frames of 2048x2048, three runs per backend (medians
of the runs) while 2 shared cores had a load average of 5.8-8.4, SQLite /
PostgreSQL, median (p95): night view of all 300 frames 64 (160) / 68 (142) ms,
one band 43 (64) / 47 (66), search 35 (62) / 29 (44), CSV 27 (50) / 20 (28),
frame page 33 (58) / 47 (71), thumbnail 10 (17) / 10 (14), grade POST
10 (14) / 11 (25); thumbnails 3.1-6.1 frames/s, all 300 shown by an open night
view after 49-96 s. The peer, `obsarch query --format csv` of the night:
1.8 / 2.0 s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
# This script's own directory would make `import web` find this file, not the package.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def make_night(directory: Path, n: int, size: int, seed: int = 11) -> None:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:15, 0:15]
    stars = np.column_stack([rng.uniform(10, size - 10, 60), rng.uniform(10, size - 10, 60), rng.uniform(3e3, 5e4, 60)])
    for i in range(n):
        image = rng.normal(1200.0, 12.0, (size, size)).astype(np.float32)
        sigma = rng.uniform(2.6, 3.6) / 2.3548
        for px, py, flux in stars:
            ix, iy = int(px) + i % 3, int(py)
            image[iy - 7 : iy + 8, ix - 7 : ix + 8] += flux / (2 * np.pi * sigma**2) * np.exp(
                -((x - 7) ** 2 + (y - 7) ** 2) / (2 * sigma**2))
        hdu = fits.PrimaryHDU(np.clip(image, 0, 65535).astype(np.uint16))
        minutes = 60 + i
        hdu.header.update({"IMAGETYP": "Light Frame", "FILTER": "BVR"[i % 3], "EXPTIME": 60.0, "OBJECT": "NGC 3293",
                           "DATE-OBS": f"2017-08-16T{minutes // 60:02d}:{minutes % 60:02d}:00"})
        hdu.writeto(directory / f"night-{4000 + i}.fits", overwrite=True)


def timed(function, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def row(label: str, times: list[float], note: str = "") -> None:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    print(f"  {label:<46} median {statistics.median(times) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms  {note}")


def start_server(app):
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--no-quality", action="store_true", help="skip measuring the frames (pages without metrics)")
    parser.add_argument("--db", help="catalog URL (default: a SQLite file in the scratch directory)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--reuse", type=Path, help="a scratch directory kept by --keep: its frames and catalog are used "
                                                   "again (its thumbnails are made again)")
    args = parser.parse_args()

    import httpx

    from archive.catalog import Catalog
    from processing import quality
    from web.app import create_app

    scratch = args.reuse or Path(tempfile.mkdtemp(prefix="obsarch-web-bench-"))
    try:
        url = args.db or f"sqlite:///{scratch / 'catalog.db'}"
        if args.reuse:
            shutil.rmtree(scratch / "thumbs", ignore_errors=True)
            catalog = Catalog(url)
            print(f"{len(catalog.exposure_ids())} frames of {scratch}, catalog {url.split('://')[0]}")
        else:
            print(f"{args.frames} frames of {args.size}x{args.size} (uint16), catalog {url.split('://')[0]}")
            make_night(scratch / "night", args.frames, args.size)
            catalog = Catalog.create(url)
            catalog.ingest([scratch / "night"])
            if not args.no_quality:
                start = time.perf_counter()
                quality.compute(catalog.engine, workers=2)
                quality.apply_rules(catalog.engine)
                print(f"  (ingested, and measured in {time.perf_counter() - start:.1f} s)")
        night = catalog.query(None, columns="night", limit=1)["night"][0]
        ids = catalog.exposure_ids()

        app = create_app(catalog=catalog, allow_write=True, thumbnails=scratch / "thumbs")
        server, base = start_server(app)
        http = httpx.Client(base_url=base, timeout=120)
        cache = app.state.review.thumbnails

        print(f"\nthumbnails, made by one background thread; the night view ({len(ids)} frames) opened once, its "
              "script asking which are made every 2 s (as review.js does), and the whole page asked again every second")
        start = time.perf_counter()
        first = http.get(f"/nights/{night}")
        assert first.status_code == 200, first.text[:200]
        pending = [int(i) for i in re.findall(r'data-pending="(\d+)"', first.text)]
        while_making, shown = [], []  # answer times of the page; (seconds since it opened, pictures it shows)
        next_poll = next_page = time.perf_counter()
        while pending:
            now = time.perf_counter()
            if now >= next_poll:  # the page's script: the first 200 placeholders
                states = http.get("/thumbnails/state", params={"ids": ",".join(map(str, pending[:200]))}).json()
                pending = [i for i in pending if states.get(str(i), {}).get("state", "pending") == "pending"]
                shown.append((time.perf_counter() - start, len(ids) - len(pending)))
                next_poll = now + 2.0
            if now >= next_page:  # a person reloading the whole night meanwhile
                while_making.append(timed(lambda: http.get(f"/nights/{night}"), 1)[0])
                next_page = now + 1.0
            time.sleep(0.05)
        made = time.perf_counter() - start
        print(f"  {cache.progress.made} made, {cache.progress.failed} failed in {made:.1f} s: "
              f"{(cache.progress.made + cache.progress.failed) / made:.1f} frames/s; the first night page answered in "
              f"{first.elapsed.total_seconds() * 1000:.0f} ms, with a placeholder for each of its "
              f"{first.text.count('data-pending=')} frames without a picture yet")
        for fraction in (0.1, 0.5, 1.0) if shown else ():
            seconds = next(t for t, count in shown if count >= fraction * len(ids))
            print(f"  the open night view showed {fraction:.0%} of its thumbnails after {seconds:.1f} s")
        if while_making:
            row(f"night view ({len(ids)} frames) while they were made", while_making, f"({len(while_making)} requests)")

        print(f"\npages once the thumbnails exist ({args.rounds} requests each, real HTTP, one client; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        selection = "band == 'V' and fwhm < 4 and exptime >= 60"
        pages = {
            f"GET /nights/{night}  ({len(ids)} frames)": f"/nights/{night}",
            f"GET /nights/{night}?band=V": f"/nights/{night}?band=V",
            "GET /nights": "/nights",
            "GET /exposures?q=... (search page)": f"/exposures?q={selection}",
            f"GET /exposures.csv?q=night == '{night}'": f"/exposures.csv?q=night == '{night}'",
            "GET /exposures/ID  (frame page)": f"/exposures/{ids[len(ids) // 2]}",
            "GET /exposures/ID/thumbnail.png": f"/exposures/{ids[0]}/thumbnail.png",
            "GET /processing": "/processing",
        }
        for label, path in pages.items():
            assert http.get(path).status_code == 200, path
            row(label, timed(lambda p=path: http.get(p), args.rounds))
        row("POST /exposures/ID/flags", timed(lambda: http.post(f"/exposures/{ids[1]}/flags", data={"grade": "ok"}), args.rounds))

        print("\nthe peer: the same night's rows")
        # what the `obsarch` console script runs, started as a new process
        command = [sys.executable, "-c", "from cli.main import run; run()", "--db", url, "query", f"night == '{night}'",
                   "--format", "csv"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cli_times = timed(lambda: subprocess.run(command, check=True, capture_output=True, env=env), min(args.rounds, 5))
        row(f"obsarch query \"night == '{night}'\" --format csv", cli_times, "(a new process each time)")
        row("Catalog.query (in-process, no HTTP)", timed(lambda: catalog.query(f"night == '{night}'"), args.rounds))
        server.should_exit = True
    finally:
        if args.keep or args.reuse:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

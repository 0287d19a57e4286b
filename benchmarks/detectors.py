"""A master of multi-detector files: time and peak memory as the number of
detectors grows, next to reading every detector into memory, in one run.

    python benchmarks/detectors.py [--files 11] [--size 512] [--detectors 4,24] [--memory 64MB]

Writes MUSE-like files (a header-only primary, one float32 image extension per
detector), catalogs them, and makes a master bias with ``obsarch calib bias``'s
library call (every detector, one after another, within --memory). The peer
is what a script does without a budget: read every detector of every file and
take numpy's median per detector, keeping the results until it writes them.
Each runs in its own process, so its peak resident memory (VmHWM, interpreter
and libraries included) can be read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time, warnings
from pathlib import Path
which, directory, memory = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
warnings.simplefilter("ignore")
import numpy as np
from astropy.io import fits
start = time.perf_counter()
if which == "obsarch":
    from archive.catalog import Catalog
    from processing.calibration import MasterParams, make_master
    catalog = Catalog(f"sqlite:///{directory / 'catalog.db'}")
    result = make_master(catalog.engine, "bias", out_dir=directory / "masters", params=MasterParams(memory=memory))
    assert result.exit_code == 0, result.last_line()
    (path,) = (directory / "masters").glob("*.fits")
    with fits.open(path) as hdul:
        checksum = float(sum(np.asarray(h.data[::31, ::29], dtype=np.float64).sum() for h in hdul[1:]))
else:
    paths = sorted((directory / "raw").glob("*.fits"))
    with fits.open(paths[0]) as first:
        names = [h.name for h in first[1:]]
    cubes = {name: [] for name in names}
    for path in paths:
        with fits.open(path, memmap=False) as hdul:
            for name in names:
                cubes[name].append(hdul[name].data.astype(np.float64))
    masters = {name: np.median(np.stack(planes), axis=0).astype(np.float32) for name, planes in cubes.items()}
    checksum = float(sum(np.asarray(m[::31, ::29], dtype=np.float64).sum() for m in masters.values()))
seconds = time.perf_counter() - start
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) * 1024
print(json.dumps({"seconds": seconds, "peak": peak, "checksum": checksum}))
"""


def _write(directory: Path, files: int, detectors: int, size: int) -> None:
    from astropy.io import fits

    rng = np.random.default_rng(12)
    (directory / "raw").mkdir(parents=True)
    for i in range(files):
        primary = fits.PrimaryHDU()
        primary.header["INSTRUME"], primary.header["IMAGETYP"] = "MUSE", "BIAS"
        primary.header["DATE-OBS"] = f"2014-07-27T10:{i:02d}:00"
        primary.header["HIERARCH ESO DET READ CURNAME"] = "SCI1.0"
        hdus = [primary] + [fits.ImageHDU(rng.normal(100 * (d + 1), 3, (size, size)).astype(np.float32), name=f"CHAN{d + 1:02d}")
                            for d in range(detectors)]
        fits.HDUList(hdus).writeto(directory / "raw" / f"bias_{i:02d}.fits")


def _run(which: str, directory: Path, memory: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(directory), memory], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=11)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--detectors", default="4,24")
    parser.add_argument("--memory", default="64MB")
    args = parser.parse_args()
    from archive.catalog import Catalog

    print(f"master bias of {args.files} files, detectors of {args.size}x{args.size} float32, --memory {args.memory}")
    print(f"{'detectors':>9} {'pixels MB':>9} | {'obsarch s':>9} {'peak MB':>8} | {'in memory s':>11} {'peak MB':>8} | same result")
    for count in (int(n) for n in args.detectors.split(",")):
        work = Path(tempfile.mkdtemp(prefix="obsarch-bench-detectors-"))
        try:
            _write(work, args.files, count, args.size)
            catalog = Catalog.create(f"sqlite:///{work / 'catalog.db'}")
            catalog.ingest([work / "raw"])
            catalog.engine.dispose()
            ours, peer = _run("obsarch", work, args.memory), _run("peer", work, args.memory)
            same = abs(ours["checksum"] - peer["checksum"]) <= 1e-6 * abs(peer["checksum"])
            pixels = args.files * count * args.size * args.size * 4 / 1e6
            print(f"{count:>9} {pixels:>9.0f} | {ours['seconds']:>9.2f} {ours['peak'] / 1e6:>8.0f} | "
                  f"{peer['seconds']:>11.2f} {peer['peak'] / 1e6:>8.0f} | {same}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

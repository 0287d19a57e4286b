"""Median combine speed and peak memory, next to ccdproc.combine, in one run.

    python benchmarks/combine.py [--frames 20] [--size 2048] [--memory 1GB]
    python benchmarks/combine.py --muse [--files 11] [--detectors 24] [--detector 4096x4112]
                                 [--memory 2GB] [--peer-detectors 2]

Writes N float32 frames and median-combines them with obsarch (within
--memory) and with ``ccdproc.combine(..., mem_limit=--memory)``, each in its
own process so that its peak resident memory (VmHWM, interpreter included)
can be read.

``--muse``: a master bias at instrument scale, as MUSE's 11 bias exposures
of 24 detectors of 4096x4112 16-bit pixels (8.9 GB of files). obsarch
combines every detector, one after another, within --memory; ccdproc and
numpy (every frame read into memory, ``numpy.median`` over the cube: the
floor) the first --peer-detectors; each prints seconds and peak resident
memory per detector. A disk without room for the files (and 2 GB to spare)
gets fewer detectors, said in the output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time, warnings
from pathlib import Path
which, directory, memory = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
paths = sorted(directory.glob("*.fits"))
warnings.simplefilter("ignore")
start = time.perf_counter()
if which == "obsarch":
    from processing.combine import combine_files
    result = combine_files(paths, method="median", memory_bytes=memory)
else:
    import ccdproc
    result = ccdproc.combine([str(p) for p in paths], method="median", mem_limit=memory, unit="adu").data
seconds = time.perf_counter() - start
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) * 1024
print(json.dumps({"seconds": seconds, "peak": peak, "checksum": float(result[::97, ::89].sum())}))
"""


MUSE_CHILD = r"""
import json, sys, time, warnings
import numpy as np
from pathlib import Path
which, directory, memory, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
paths = sorted(directory.glob("*.fits"))
warnings.simplefilter("ignore")

def peak():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) * 1024

def reset_peak():  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

if which == "ccdproc":
    import ccdproc
elif which == "obsarch":
    from processing.combine import combine_files
from astropy.io import fits
for detector in range(1, count + 1):
    name = f"CHAN{detector:02d}"
    reset_peak()
    start = time.perf_counter()
    median_s = None
    if which == "obsarch":
        result = combine_files(paths, method="median", memory_bytes=memory, hdu=name)
    elif which == "ccdproc":
        result = ccdproc.combine([str(p) for p in paths], method="median", mem_limit=memory, unit="adu", hdu=name).data
    else:
        cube = np.stack([fits.getdata(p, extname=name) for p in paths])
        begin = time.perf_counter()
        result = np.median(cube, axis=0)
        median_s = time.perf_counter() - begin
        del cube
    seconds = time.perf_counter() - start
    print(json.dumps({"detector": name, "seconds": seconds, "median_s": median_s, "peak": peak(),
                      "checksum": float(np.asarray(result, dtype=np.float64)[::97, ::89].sum())}), flush=True)
    del result
"""


def write_muse(directory: Path, files: int, detectors: int, shape: tuple[int, int]) -> None:
    """Bias-like 16-bit detectors: a level and column pattern per detector,
    read noise of 3 ADU (one noise image per file, shifted per detector)."""
    from astropy.io import fits

    rng = np.random.default_rng(16)
    directory.mkdir(parents=True, exist_ok=True)
    pattern = np.rint(rng.uniform(900, 1100, (detectors, 1)) + rng.normal(0, 2, (detectors, shape[1]))).astype(np.int16)
    for i in range(files):
        noise = np.rint(rng.normal(0, 3, shape)).astype(np.int16)
        hdus = [fits.PrimaryHDU(header=fits.Header({"INSTRUME": "MUSE", "HIERARCH ESO DPR TYPE": "BIAS"}))]
        for d in range(detectors):
            data = (np.roll(noise, 97 * d, axis=0) + pattern[d]).astype(np.uint16)
            hdus.append(fits.ImageHDU(data, name=f"CHAN{d + 1:02d}"))
        fits.HDUList(hdus).writeto(directory / f"MUSE_BIAS_{i:02d}.fits")
        del hdus


def muse(args) -> None:
    from processing.combine import parse_memory

    memory = parse_memory(args.memory)
    shape = tuple(int(v) for v in args.detector.lower().split("x"))[::-1]  # 4096x4112 = nx x ny
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="obsarch-bench-muse-"))
    work.mkdir(parents=True, exist_ok=True)
    per_detector = args.files * shape[0] * shape[1] * 2
    kept = sorted((work / "bias").glob("*.fits")) if args.keep else []
    free = shutil.disk_usage(work).free + sum(p.stat().st_size for p in kept) - 2 * 10**9
    detectors = min(args.detectors, max(1, free // per_detector))
    try:
        print(f"MUSE-sized master bias: {args.files} files of {detectors} detectors of {shape[1]}x{shape[0]} 16-bit "
              f"({detectors * per_detector / 1e9:.1f} GB), memory limit {memory / 1e9:.1f} GB")
        if detectors < args.detectors:
            print(f"(the disk holds {detectors} of the {args.detectors} detectors: {free / 1e9:.1f} GB free)")
        expected = (args.files, detectors, shape)
        made = work / "made.json"
        if not kept or not made.exists() or json.loads(made.read_text()) != json.loads(json.dumps(expected)):
            shutil.rmtree(work / "bias", ignore_errors=True)
            start = time.perf_counter()
            write_muse(work / "bias", args.files, detectors, shape)
            made.write_text(json.dumps(expected))
            print(f"written in {time.perf_counter() - start:.0f} s")
        for path in sorted((work / "bias").glob("*.fits")):  # into the page cache, for every tool alike
            with path.open("rb") as f:
                while f.read(1 << 24):
                    pass
        peers = min(args.peer_detectors, detectors)
        runs = {}
        for which, count in (("obsarch", detectors), ("numpy", peers), ("ccdproc", peers)):
            out = subprocess.run([sys.executable, "-c", MUSE_CHILD, which, str(work / "bias"), str(memory), str(count)],
                                 check=False, capture_output=True, text=True)
            lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode != 0:
                tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
                print(f"{which}: failed after {len(lines)} detectors: {tail}")
            runs[which] = {row["detector"]: row for row in lines}
        print(f"{'detector':10}{'obsarch s':>11}{'peak MB':>9}{'numpy s':>10}{'(median)':>10}{'peak MB':>9}"
              f"{'ccdproc s':>11}{'peak MB':>9}  same")
        for name, ours in runs["obsarch"].items():
            cells = [f"{name:10}{ours['seconds']:11.2f}{ours['peak'] / 1e6:9.0f}"]
            floor, theirs = runs["numpy"].get(name), runs["ccdproc"].get(name)
            cells.append(f"{floor['seconds']:10.2f}{floor['median_s']:10.2f}{floor['peak'] / 1e6:9.0f}" if floor else " " * 29)
            cells.append(f"{theirs['seconds']:11.2f}{theirs['peak'] / 1e6:9.0f}" if theirs else " " * 20)
            reference = floor or theirs
            if reference:
                cells.append(f"  {abs(ours['checksum'] - reference['checksum']) <= 1e-6 * abs(reference['checksum'])}")
            print("".join(cells))
        ours = [row["seconds"] for row in runs["obsarch"].values()]
        if ours:
            print(f"obsarch: {len(ours)} detectors in {sum(ours):.1f} s ({np.mean(ours):.2f} s each, "
                  f"{min(ours):.2f}-{max(ours):.2f}), peak {max(r['peak'] for r in runs['obsarch'].values()) / 1e6:.0f} MB "
                  f"under a {memory / 1e6:.0f} MB limit")
        for which in ("numpy", "ccdproc"):
            shared = [name for name in runs[which] if name in runs["obsarch"]]
            if shared:
                ratio = np.mean([runs["obsarch"][n]["seconds"] / runs[which][n]["seconds"] for n in shared])
                print(f"obsarch / {which} time on the same {len(shared)} detectors: {ratio:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--memory", default=None, help="default 1GB, with --muse 2GB")
    parser.add_argument("--muse", action="store_true", help="the MUSE-sized case instead")
    parser.add_argument("--files", type=int, default=11)
    parser.add_argument("--detectors", type=int, default=24)
    parser.add_argument("--detector", default="4096x4112", help="NAXIS1xNAXIS2 of a detector")
    parser.add_argument("--peer-detectors", type=int, default=2, help="detectors ccdproc and numpy combine")
    parser.add_argument("--keep", default=None, help="with --muse: write the files here once and keep them for next runs")
    args = parser.parse_args()
    if args.muse:
        args.memory = args.memory or "2GB"
        muse(args)
        return
    args.memory = args.memory or "1GB"
    from astropy.io import fits

    from processing.combine import parse_memory

    memory = parse_memory(args.memory)
    work = Path(tempfile.mkdtemp(prefix="obsarch-bench-combine-"))
    try:
        rng = np.random.default_rng(5)
        for i in range(args.frames):
            fits.PrimaryHDU(rng.normal(1000, 10, (args.size, args.size)).astype(np.float32)).writeto(work / f"f{i:03d}.fits")
        data_mb = args.frames * args.size * args.size * 4 / 1e6
        print(f"median of {args.frames} frames of {args.size}x{args.size} float32 ({data_mb:.0f} MB of pixels), "
              f"memory limit {memory / 1e6:.0f} MB")
        print(f"{'':34}{'seconds':>9}{'peak RSS MB':>13}")
        results = {}
        for which in ("obsarch", "ccdproc"):
            out = subprocess.run([sys.executable, "-c", CHILD, which, str(work), str(memory)], check=False, capture_output=True,
                                 text=True)
            if out.returncode != 0:
                print(f"{which}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
                continue
            results[which] = json.loads(out.stdout.strip().splitlines()[-1])
            label = "obsarch combine_files" if which == "obsarch" else "ccdproc.combine(mem_limit=...)"
            print(f"{label:34}{results[which]['seconds']:9.2f}{results[which]['peak'] / 1e6:13.0f}")
        if len(results) == 2:
            same = abs(results["obsarch"]["checksum"] - results["ccdproc"]["checksum"]) < 1e-3 * abs(results["ccdproc"]["checksum"])
            print(f"same result: {same}; obsarch peak {'under' if results['obsarch']['peak'] < memory else 'over'} the limit")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

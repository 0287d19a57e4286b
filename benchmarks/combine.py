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
which, directory, memory = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
detectors = [int(d) for d in sys.argv[4].split(",")]
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
for detector in detectors:
    name = f"CHAN{detector:02d}"
    reset_peak()
    cpu, start = time.process_time(), time.perf_counter()
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
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"detector": name, "seconds": seconds, "cpu": cpu, "median_s": median_s, "peak": peak(),
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
        peers = ",".join(str(d) for d in range(1, min(args.peer_detectors, detectors) + 1))

        def child(which: str, chosen: str) -> dict:
            out = subprocess.run([sys.executable, "-c", MUSE_CHILD, which, str(work / "bias"), str(memory), chosen],
                                 check=False, capture_output=True, text=True)
            lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode != 0:
                tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode
                print(f"{which}: failed after {len(lines)} detectors: {tail}")
            return {row["detector"]: row for row in lines}

        every = child("obsarch", ",".join(str(d) for d in range(1, detectors + 1)))
        ours = [row["seconds"] for row in every.values()]
        print(f"obsarch, every detector in one process: {len(ours)} in {sum(ours):.1f} s ({np.mean(ours):.2f} s each, "
              f"{min(ours):.2f}-{max(ours):.2f}; CPU {np.mean([r['cpu'] for r in every.values()]):.2f} s each), "
              f"peak RSS {max(r['peak'] for r in every.values()) / 1e6:.0f} MB under a {memory / 1e6:.0f} MB limit")
        print(f"the first {peers.count(',') + 1} detectors again, each tool right after the other:")
        print(f"{'':10}{'obsarch':>24}{'numpy in memory':>36}{'ccdproc.combine':>24}")
        print(f"{'detector':10}{'s':>8}{'CPU s':>8}{'peak MB':>8}{'s':>8}{'CPU s':>8}{'median s':>10}{'peak MB':>10}"
              f"{'s':>8}{'CPU s':>8}{'peak MB':>8}  same")
        ratios = {"numpy": [], "ccdproc": []}
        for round_ in range(args.rounds):
            floor, ours, theirs = child("numpy", peers), child("obsarch", peers), child("ccdproc", peers) if round_ == 0 else {}
            for name, row in ours.items():
                cells = [f"{name:10}{row['seconds']:8.2f}{row['cpu']:8.2f}{row['peak'] / 1e6:8.0f}"]
                low, high = floor.get(name), theirs.get(name)
                cells.append(f"{low['seconds']:8.2f}{low['cpu']:8.2f}{low['median_s']:10.2f}{low['peak'] / 1e6:10.0f}" if low else " " * 36)
                cells.append(f"{high['seconds']:8.2f}{high['cpu']:8.2f}{high['peak'] / 1e6:8.0f}" if high else " " * 24)
                reference = low or high
                if reference:
                    cells.append(f"  {abs(row['checksum'] - reference['checksum']) <= 1e-6 * abs(reference['checksum'])}")
                print("".join(cells))
                for which, peer in (("numpy", low), ("ccdproc", high)):
                    if peer:
                        ratios[which].append((row["seconds"] / peer["seconds"], row["cpu"] / peer["cpu"]))
        for which, pairs in ratios.items():
            if pairs:
                wall, cpu = np.array(pairs).T
                print(f"obsarch / {which}: time {np.mean(wall):.2f} ({wall.min():.2f}-{wall.max():.2f}), "
                      f"CPU time {np.mean(cpu):.2f} ({cpu.min():.2f}-{cpu.max():.2f}), over {len(pairs)} detector runs")
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
    parser.add_argument("--rounds", type=int, default=1, help="with --muse: rounds of obsarch next to numpy")
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

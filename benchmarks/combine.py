"""Median combine speed and peak memory, next to ccdproc.combine, in one run.

    python benchmarks/combine.py [--frames 20] [--size 2048] [--memory 1GB]

Writes N float32 frames and median-combines them with obsarch (within
--memory) and with ``ccdproc.combine(..., mem_limit=--memory)``, each in its
own process so that its peak resident memory (VmHWM, interpreter included)
can be read.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--memory", default="1GB")
    args = parser.parse_args()
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
            out = subprocess.run([sys.executable, "-c", CHILD, which, str(work), str(memory)], capture_output=True, text=True)
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

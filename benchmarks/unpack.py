"""Unpacking a tar: obsarch's planned extraction next to tarfile's own
extractall with the 'data' filter (the peer), on the same archive.

    python benchmarks/unpack.py [--files 2000] [--size 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from archive.unpack import safe_extract


def make_archive(path: Path, files: int, size: int) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    with tarfile.open(path, "w") as tar:
        for i in range(files):
            if i % 100 == 0:
                info = tarfile.TarInfo(f"obs/d{i // 100}")
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            info = tarfile.TarInfo(f"obs/d{i // 100}/f{i}.fits")
            info.size = size
            tar.addfile(info, io.BytesIO(payload[:size]))
            if i % 50 == 0:
                link = tarfile.TarInfo(f"obs/d{i // 100}/latest{i}.fits")
                link.type, link.linkname = tarfile.SYMTYPE, f"f{i}.fits"
                tar.addfile(link)


def best_of(rounds: int, run) -> float:
    times = []
    for _ in range(rounds):
        target = Path(tempfile.mkdtemp(prefix="obsarch-bench-unpack-"))
        started = time.perf_counter()
        run(target)
        times.append(time.perf_counter() - started)
        shutil.rmtree(target)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        archive = Path(work) / "a.tar"
        make_archive(archive, args.files, args.size)

        def peer(target: Path) -> None:
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")

        ours = best_of(args.rounds, lambda target: safe_extract(archive, target))
        theirs = best_of(args.rounds, peer)
    members = args.files + args.files // 100 + args.files // 50
    print(f"{members} members, {args.files} files of {args.size} bytes; best of {args.rounds}")
    print(f"  obsarch safe_extract (plan, then write)   {ours:7.3f} s  {members / ours:9.0f} members/s")
    print(f"  tarfile extractall(filter='data')         {theirs:7.3f} s  {members / theirs:9.0f} members/s")


if __name__ == "__main__":
    main()

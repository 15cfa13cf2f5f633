#!/usr/bin/env python3
"""Deterministic workload generator for the treecopy benchmarks.

    python3 bench/gen.py W1 DIR [--seed N] [--scale F] [--force]

Workloads (at --scale 1):
  W1  100,000 files of 1-16 KiB in 10 x 100 directories (metadata-bound)
  W2  2,000 files of 1 MiB in 10 directories              (mixed)
  W3  4 files of 1 GiB                                    (bandwidth-bound)
  W4  ~3 GiB of files with log-uniform sizes, 100 B - 256 MiB, in a nested
      3-level tree of 39 directories (~170 files; mixed)

Why it is built this way:
  * Same seed -> byte-identical tree, so an ext4 source and a tmpfs source
    generated separately hold the same data, and results are comparable
    across machines and over time.
  * Content is random-looking, never zeros: a filesystem or device that
    special-cases zero pages, or a tool that makes holes, must not get a
    free ride. Files are written densely (never seek past EOF), so they are
    not sparse.
  * Speed: instead of asking the RNG for every file's bytes, one random pool
    is drawn once and each file is a slice of it at a seeded offset, with a
    small per-file header so no two files are identical. W1 (~100k files)
    takes seconds, not minutes.
  * The tree is written into DIR.partial and renamed to DIR at the end, so
    the existence of DIR means "complete"; run.sh relies on that to cache.
"""

import argparse
import math
import os
import random
import shutil
import struct
import sys
import time

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Size of the shared random pool the file contents are sliced from. Larger
# than any single file in W1/W2 so that slices start anywhere in it.
POOL_SIZE = 64 * MIB


def header(workload: str, index: int, block: int = 0) -> bytes:
    """16 bytes that make each file (and each W3 block) distinct."""
    return struct.pack("<4sIQ", workload.encode(), index, block)


def write_sliced_files(root, rng, pool, workload, layout, size_of):
    """Write files whose contents are pool slices.

    layout: list of (relative_dir, number_of_files) pairs.
    size_of: function(rng) -> file size in bytes.
    Returns (files, bytes).
    """
    view = memoryview(pool)
    index = 0
    total = 0
    for rel_dir, count in layout:
        d = os.path.join(root, rel_dir)
        os.makedirs(d, exist_ok=True)
        for i in range(count):
            size = size_of(rng)
            head = header(workload, index)
            body = size - len(head)
            off = rng.randrange(0, len(pool) - body)
            with open(os.path.join(d, f"f{i:04d}.bin"), "wb") as f:
                f.write(head)
                f.write(view[off:off + body])
            index += 1
            total += size
    return index, total


def gen_w1(root, rng, pool, scale):
    # 10 top-level dirs x 100 subdirs x 100 files = 100,000 files in 1,010
    # dirs. --scale shrinks subdirs and files per subdir alike (square root
    # each), so a tiny test run still has the same nested shape.
    side = max(1, round(100 * scale ** 0.5))
    subdirs = files_per_dir = side
    layout = [(f"d{t:02d}/s{s:03d}", files_per_dir)
              for t in range(10) for s in range(subdirs)]
    return write_sliced_files(root, rng, pool, "W1", layout,
                              lambda r: r.randint(1 * KIB, 16 * KIB))


def gen_w2(root, rng, pool, scale):
    # 2,000 files of exactly 1 MiB, 200 per directory.
    per_dir = max(1, round(200 * scale))
    layout = [(f"d{t:02d}", per_dir) for t in range(10)]
    return write_sliced_files(root, rng, pool, "W2", layout, lambda r: MIB)


def gen_w3(root, rng, pool, scale):
    # 4 files of 1 GiB. Each is a 1 MiB random block repeated, with the first
    # 16 bytes of every block replaced by (file, block) counters: dense,
    # non-zero, no two blocks equal, and written at disk speed.
    size = max(MIB, int(GIB * scale) // MIB * MIB)
    block = bytearray(pool[:MIB])
    os.makedirs(root, exist_ok=True)
    total = 0
    for n in range(4):
        with open(os.path.join(root, f"big{n}.bin"), "wb") as f:
            for b in range(size // MIB):
                block[:16] = header("W3", n, b)
                f.write(block)
                total += MIB
    return 4, total


def write_chunked_file(path, rng, pool, workload, index, size):
    """A file of any size, dense and non-zero: 1 MiB slices of the pool at
    seeded offsets, each starting with a (workload, file, block) header, so
    no two blocks of any file are equal even when the file is larger than
    the pool."""
    view = memoryview(pool)
    with open(path, "wb") as f:
        block = 0
        left = size
        while left > 0:
            n = min(MIB, left)
            head = header(workload, index, block)[:n]
            body = n - len(head)
            off = rng.randrange(0, len(pool) - body)
            f.write(head)
            f.write(view[off:off + body])
            left -= n
            block += 1


def gen_w4(root, rng, pool, scale):
    # Mixed sizes: log-uniform between 100 B and 256 MiB (as many files per
    # decade of size: ~26 each of 100 B-1 KiB, 1-10 KiB, ..., 10-100 MiB),
    # drawn until the total reaches 3 GiB; the last file is cut to make the
    # total exact. Mean size ~18 MiB, so ~170 files, but most of the bytes
    # are in the few files above 64 MiB. --scale shrinks the total and the
    # largest size alike, which keeps roughly the same number of files and
    # the log-uniform shape (0.01: ~30 MiB, sizes up to 2.6 MiB).
    # Layout: 3 levels of 3 directories (d0/d1/d2, 39 in all); every file
    # goes to a random one of them, so files sit at depths 1 to 3 next to
    # subdirectories.
    total_target = int(3 * GIB * scale)
    lo, hi = 100, max(4 * KIB, int(256 * MIB * scale))
    sizes = []
    total = 0
    while total < total_target:
        size = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        size = min(size, total_target - total)
        sizes.append(size)
        total += size
    dirs = []
    for a in range(3):
        dirs.append(f"d{a}")
        for b in range(3):
            dirs.append(f"d{a}/d{b}")
            for c in range(3):
                dirs.append(f"d{a}/d{b}/d{c}")
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for index, size in enumerate(sizes):
        d = dirs[rng.randrange(len(dirs))]
        write_chunked_file(os.path.join(root, d, f"f{index:04d}.bin"),
                           rng, pool, "W4", index, size)
    return len(sizes), total


WORKLOADS = {"W1": gen_w1, "W2": gen_w2, "W3": gen_w3, "W4": gen_w4}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=sorted(WORKLOADS))
    ap.add_argument("dir", help="directory to create (must not exist)")
    ap.add_argument("--seed", type=int, default=20240601,
                    help="RNG seed (same seed -> identical tree)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="shrink the workload for quick tests, e.g. 0.01")
    ap.add_argument("--force", action="store_true",
                    help="replace DIR if it already exists")
    args = ap.parse_args()

    if not 0 < args.scale <= 1:
        ap.error("--scale must be in (0, 1]")
    dest = os.path.abspath(args.dir)
    if os.path.lexists(dest):
        if not args.force:
            print(f"gen.py: {dest} exists (use --force to replace)",
                  file=sys.stderr)
            return 1
        shutil.rmtree(dest)
    partial = dest + ".partial"
    if os.path.lexists(partial):
        shutil.rmtree(partial)  # leftover of an interrupted run

    # The seed is mixed with the workload name so W1 and W2 do not share a
    # pool, yet each is reproducible on its own.
    rng = random.Random(f"{args.seed}:{args.workload}")
    t0 = time.monotonic()
    pool = rng.randbytes(POOL_SIZE)
    os.makedirs(partial)
    files, nbytes = WORKLOADS[args.workload](partial, rng, pool, args.scale)
    os.rename(partial, dest)
    dt = time.monotonic() - t0
    print(f"gen.py: {args.workload} -> {dest}: {files} files, "
          f"{nbytes / MIB:.1f} MiB in {dt:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

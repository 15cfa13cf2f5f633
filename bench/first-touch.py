#!/usr/bin/env python3
"""Shows what a page costs the first time this VM's kernel hands it out: it
writes every page of a fresh anonymous mapping, then writes the same pages
again. On the 2-CPU VM of docs/benchmarks.md the first pass over 2 GiB took
6.0 s and the second 0.42 s: about 11 us per 4 KiB page is paid once, when
the page is first touched, whatever writes it. A copier's destination pages
in the page cache are such pages, which is why treecopy writes large files
behind and drops them (src/writeback.rs): its next writes reuse them.

    bench/first-touch.py [GIB] [PASSES]

GIB: size of the mapping [2]. PASSES: passes over it [3]. Prints the wall
seconds of each pass. Needs no root.
"""

import mmap
import sys
import time


def main():
    gib = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    size = gib << 30
    block = b"\x01" * (64 << 20)
    area = mmap.mmap(-1, size)
    for n in range(passes):
        area.seek(0)
        start = time.monotonic()
        for _ in range(size // len(block)):
            area.write(block)
        print(f"pass {n}: {time.monotonic() - start:.2f} s for {gib} GiB", flush=True)
    area.close()


if __name__ == "__main__":
    main()

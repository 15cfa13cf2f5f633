#!/usr/bin/env python3
"""Shows how long one large sendfile takes right after dropping caches, and
after a pause: on a VM with free page reporting (virtio-balloon) the pages
freed by the drop go back to the host about 2 s later, and a copy that
allocates them afterwards pays a host fault per page. Why bench/prepare.sh
ends with a wait (BENCH_QUIET).

    bench/page-reporting.py SRC_FILE DST_DIR [ROUNDS] [PAUSES]

SRC_FILE: a large file, e.g. 1 GiB on tmpfs (head -c 1G /dev/urandom >
/dev/shm/f). DST_DIR: a directory on the filesystem to write to. PAUSES:
comma-separated seconds to wait after the drop [0,1,3,5]. As root (it
writes /proc/sys/vm/drop_caches). Prints, per copy, the pause, the sendfile
chunk and the wall and system seconds.
"""

import os
import resource
import subprocess
import sys
import time

CHUNKS = {"64M": 64 << 20, "1M": 1 << 20, "2G": 0x7FFFF000}


def one_copy(src, dst, chunk, pause):
    if os.path.exists(dst):
        os.unlink(dst)
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)
    time.sleep(pause)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    fin = os.open(src, os.O_RDONLY)
    fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while os.sendfile(fout, fin, None, chunk) > 0:
            pass
    finally:
        os.close(fout)
        os.close(fin)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    os.unlink(dst)
    return wall, after.ru_stime - before.ru_stime


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src, dst_dir = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    pauses = [float(p) for p in (sys.argv[4] if len(sys.argv) > 4 else "0,1,3,5").split(",")]
    dst = os.path.join(dst_dir, "page-reporting.copy")
    print(f"{'pause_s':>7} {'chunk':>5} {'wall_s':>6} {'sys_s':>6}")
    for pause in pauses:
        for _ in range(rounds):
            for name, chunk in CHUNKS.items():
                wall, sys_s = one_copy(src, dst, chunk, pause)
                print(f"{pause:7g} {name:>5} {wall:6.2f} {sys_s:6.2f}", flush=True)


if __name__ == "__main__":
    main()

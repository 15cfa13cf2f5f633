#!/usr/bin/env bash
# Runs before EVERY timed run (hyperfine --prepare), identically for every
# tool, outside the timing:
#
#   prepare.sh SRC DST WARM_LIST [SETTLE_SECONDS] [KEEP]
#
# 1. Remove the previous destination.
# 2. sync: write back the previous run's dirty data and the metadata of the
#    deletion, so nothing of the previous run is flushed during this one.
# 3. Optional sleep (SETTLE_SECONDS, default 0).
# 4. Drop the page cache, dentries and inodes (echo 3 > drop_caches).
#    This step also dampens an ext4 effect measured on this machine (see
#    README.md, "Delete-then-create"): in no-journal mode ext4 refuses to
#    reuse an inode deleted less than 60 s ago (300 s more if its inode-table
#    block is dirty) and checks that by looking the inode-table block up in
#    the buffer cache, inode by inode. Right after deleting 100k files that
#    scan made `cp -a` of W1 3-10x slower. The check is skipped when the
#    block is not cached, so "sync, then drop caches" removed the effect for
#    cp -a; with two creators at a time part of it remains (README.md). The
#    order matters: dirty blocks cannot be dropped, so sync must come first.
# 5. Read the source once, so every tool starts with the same warm source
#    cache and a cold destination. `tar cf - SRC > /dev/null` is NOT used:
#    GNU tar notices /dev/null and skips reading file data.
# 6. Read the tools' binaries and shared libraries (WARM_LIST), which step 4
#    evicted, so no tool pays for loading itself from disk.
# 7. Write KEEP (default "all") to DST.keep, for verify.sh: what metadata the
#    tool about to run preserves. run.sh gives one --prepare per command.
# 8. Wait BENCH_QUIET seconds (default 5), so that the memory freed by the
#    delete and by step 4 has been handed back to the host (free page
#    reporting, virtio-balloon, about 2 s after it is freed) before the tool
#    starts. Without the wait the tool races the reporter: pages it takes
#    before they are reported are fast, pages taken after cost the host a
#    fault on first touch, and one 1 GiB sendfile from tmpfs to ext4 took
#    either 0.6 s or 2.0 s at random (bench/README.md, "Other things on this
#    VM"). After the wait every tool gets reported pages alike.
set -euo pipefail

if [[ $# -lt 3 ]]; then
    echo "usage: prepare.sh SRC DST WARM_LIST [SETTLE_SECONDS] [KEEP]" >&2
    exit 2
fi
src=$1 dst=$2 warm_list=$3 settle=${4:-0} keep=${5:-all}

# Guard against a misconfigured environment turning this into `rm -rf /`:
# run.sh always uses a destination whose last directory is "dst".
case $dst in
    */dst/*) ;;
    *) echo "prepare.sh: refusing to delete '$dst' (not under a dst/ dir)" >&2; exit 2 ;;
esac

rm -rf -- "$dst"
sync
if [[ $settle != 0 ]]; then
    sleep "$settle"
fi
echo 3 > /proc/sys/vm/drop_caches

# Two readers in parallel: the source may be 100k small files on a cold
# disk, and this keeps the prepare step short on a 2-core machine.
find "$src" -type f -print0 | xargs -0 -r -P 2 -n 1000 cat > /dev/null
xargs -r -a "$warm_list" -d '\n' cat > /dev/null
echo "$keep" > "$dst.keep"
# The destination's parent directory, for the same reason.
stat -- "$(dirname -- "$dst")" > /dev/null
sleep "${BENCH_QUIET:-5}"

#!/usr/bin/env bash
# Small files between two NFS-like mounts: treecopy at several -j values against cp -a and
# rsync -a, on two latencyfs mounts (FUSE passthrough, every operation delayed like a LAN
# round trip). This is the measurement behind treecopy's default worker count on remote
# filesystems (docs/benchmarks.md).
#
#   bench/latency.sh            # defaults below
#   LATENCY_US=1000 JOBS="1 8 16 32 64" FILES_SCALE=0.02 bench/latency.sh
#
# Needs root, /dev/fuse, fusermount3 (Debian fuse3), hyperfine, and
# `cargo build --release --workspace` (for target/release/latencyfs).
set -euo pipefail

main() {
    local here repo
    here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
    repo=$(dirname -- "$here")
    local latency=${LATENCY_US:-500} jobs=${JOBS:-"1 4 16 32 64"} scale=${FILES_SCALE:-0.02}
    local runs=${RUNS:-3} tools=${TOOLS:-"treecopy cp rsync"}
    local treecopy=$repo/target/release/treecopy latencyfs=$repo/target/release/latencyfs
    [[ -x $treecopy && -x $latencyfs ]] || { echo "latency.sh: build first: cargo build --release --workspace" >&2; exit 1; }

    # Global, not local: the EXIT trap runs after main has returned.
    work=${LATENCY_WORK:-/dev/shm/treecopy-latency}
    rm -rf "$work"
    mkdir -p "$work/back-src" "$work/back-dst" "$work/src" "$work/dst"
    cleanup() {
        umount "$work/src" 2>/dev/null || umount -l "$work/src" 2>/dev/null || true
        umount "$work/dst" 2>/dev/null || umount -l "$work/dst" 2>/dev/null || true
        rm -rf "$work"
    }
    trap cleanup EXIT

    # W1's shape (1-16 KiB files, 10 x 100 directories) at a fraction of its 100,000 files.
    python3 "$here/gen.py" W1 "$work/back-src/tree" --scale "$scale" >&2
    "$latencyfs" "$work/back-src" "$work/src" --latency-us "$latency"
    "$latencyfs" "$work/back-dst" "$work/dst" --latency-us "$latency"
    local nfiles
    nfiles=$(find "$work/back-src/tree" -type f | wc -l)
    echo "latency.sh: $nfiles files, ${latency} us per operation, $runs runs" >&2

    local cmds=()
    for tool in $tools; do
        case $tool in
            treecopy) for j in $jobs; do cmds+=(-n "treecopy -j$j" "$treecopy -q -j$j $work/src/tree $work/dst/copy"); done ;;
            cp) cmds+=(-n "cp -a" "cp -a $work/src/tree $work/dst/copy") ;;
            rsync) cmds+=(-n "rsync -a" "rsync -a $work/src/tree/ $work/dst/copy/") ;;
        esac
    done
    # The destination is removed through the backing directory (no latency), and caches are
    # dropped so every command starts with the same cold client-side metadata.
    hyperfine --runs "$runs" --style basic \
        --prepare "rm -rf $work/back-dst/copy; sync; echo 3 > /proc/sys/vm/drop_caches" \
        --export-markdown "${LATENCY_RESULTS:-/tmp/treecopy-latency.md}" \
        "${cmds[@]}"
}

main "$@"; exit

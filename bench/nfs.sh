#!/usr/bin/env bash
# treecopy against cp -a, rsync -a, xcp, fcp and cpz on NFS-like mounts: latencyfs (this
# repository's FUSE passthrough, every request delayed like a LAN round trip) serves the
# source and the destination from tmpfs backing directories.
#
#   bench/nfs.sh [small] [large] [capped] [within] [within-nossc]
#
#   small         10,000 files of 1-16 KiB (W1's shape at 10%) copied within one mount
#   large         one 1 GiB file from one mount to another
#   capped        the same with each open file capped at STREAM_BW (like one TCP stream)
#   within        the 1 GiB file copied within one mount (server-side copy, like NFSv4.2)
#   within-nossc  the same on a mount that refuses server-side copy (like NFSv3)
#
# No scenario means all. Settings: LATENCY_US (500), RUNS (3), STREAM_BW (100MiB),
# PEER_THREADS (16 64: xcp and fcp run once with each thread count),
# PEERS_ROOT (/work/bench-data/peers, from bench/peers.sh), TOOLS (treecopy cp rsync xcp
# fcp cpz; treecopy-no-xattrs adds treecopy --no-xattrs), NFS_WORK (/dev/shm/treecopy-nfs), RESULTS (/work/bench-data/results).
# Before every timed run, for every tool alike and outside the timing: the destination is
# removed through the backing directory (no latency), `sync`, caches dropped, so every
# command starts with the same cold client caches. Needs root, /dev/fuse, hyperfine and
# `cargo build --release --workspace`.
set -euo pipefail

main() {
    local here repo
    here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
    repo=$(dirname -- "$here")
    local latency=${LATENCY_US:-500} runs=${RUNS:-3} cap=${STREAM_BW:-100MiB}
    local peers=${PEERS_ROOT:-/work/bench-data/peers}/bin
    local tools=${TOOLS:-"treecopy cp rsync xcp fcp cpz"}
    # Global: read by commands(). Each peer that takes a thread count runs with each of these.
    peer_threads=${PEER_THREADS:-"16 64"}
    local tc=$repo/target/release/treecopy lfs=$repo/target/release/latencyfs
    [[ -x $tc && -x $lfs ]] || { echo "nfs.sh: build first: cargo build --release --workspace" >&2; exit 1; }
    local scenarios=("$@")
    [[ ${#scenarios[@]} -gt 0 ]] || scenarios=(small large capped within within-nossc)

    # Global, not local: the EXIT trap runs after main has returned.
    work=${NFS_WORK:-/dev/shm/treecopy-nfs}
    mounts=()
    cleanup() {
        local m
        for m in "${mounts[@]}"; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done
        rm -rf "$work"
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    rm -rf "$work"
    local results stamp
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    results=${RESULTS:-/work/bench-data/results}/nfs-$stamp
    mkdir -p "$results"
    {
        echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
        echo "latency: ${latency} us per request; runs: $runs; stream cap (capped): $cap"
        "$tc" --version
        for p in xcp fcp cpz; do [[ -x $peers/$p ]] && echo "$p: $("$peers/$p" --version 2>/dev/null | sed -n 1p)"; done
        cp --version | sed -n 1p; rsync --version | sed -n 1p; hyperfine --version
    } > "$results/meta.txt"

    local s
    for s in "${scenarios[@]}"; do
        run_scenario "$s"
    done
    echo "nfs.sh: results in $results" >&2
}

# mount NAME [latencyfs flags...]: serves $work/NAME-back at $work/NAME.
mount_lfs() {
    local name=$1
    shift
    mkdir -p "$work/$name-back" "$work/$name"
    "$lfs" "$work/$name-back" "$work/$name" --latency-us "$latency" "$@"
    mounts+=("$work/$name")
}

# The copy commands of every tool from SRC to DST (DST must not exist).
commands() {
    local src=$1 dst=$2 t
    cmds=()
    for t in $tools; do
        case $t in
            treecopy) cmds+=(-n "treecopy" "$tc -q $src $dst") ;;
            # Without the per-file xattr listing (one request each), which cp -a makes and fcp,
            # keeping no xattrs, does not.
            treecopy-no-xattrs) cmds+=(-n "treecopy --no-xattrs" "$tc -q --no-xattrs $src $dst") ;;
            cp) cmds+=(-n "cp -a" "cp -a $src $dst") ;;
            rsync) cmds+=(-n "rsync -a" "rsync -a $src/ $dst/") ;;
            xcp)
                for n in $peer_threads; do
                    [[ -x $peers/xcp ]] && cmds+=(-n "xcp -w$n" "$peers/xcp -r -o --no-progress --workers $n $src $dst")
                done
                ;;
            fcp)
                for n in $peer_threads; do
                    [[ -x $peers/fcp ]] && cmds+=(-n "fcp ($n threads)" "env RAYON_NUM_THREADS=$n $peers/fcp $src $dst")
                done
                ;;
            cpz) [[ -x $peers/cpz ]] && cmds+=(-n "cpz" "$peers/cpz $src $dst") ;;
        esac
    done
}

run_scenario() {
    local s=$1 srcdir dstdir back src_back
    case $s in
        small)
            mount_lfs one
            python3 "$here/gen.py" W1 "$work/one-back/src" --scale 0.1 >&2
            srcdir=$work/one/src dstdir=$work/one/copy back=$work/one-back/copy
            src_back=$work/one-back/src
            ;;
        large | capped)
            local flags=()
            [[ $s == capped ]] && flags=(--stream-bandwidth "$cap")
            mount_lfs "$s-a" "${flags[@]}"
            mount_lfs "$s-b" "${flags[@]}"
            mkdir -p "$work/$s-a-back/src"
            head -c 1G /dev/urandom > "$work/$s-a-back/src/field.grib"
            srcdir=$work/$s-a/src dstdir=$work/$s-b/copy back=$work/$s-b-back/copy
            src_back=$work/$s-a-back/src
            ;;
        within | within-nossc)
            local flags=()
            [[ $s == within-nossc ]] && flags=(--no-copy-file-range)
            mount_lfs "$s" "${flags[@]}"
            mkdir -p "$work/$s-back/src"
            head -c 1G /dev/urandom > "$work/$s-back/src/field.grib"
            srcdir=$work/$s/src dstdir=$work/$s/copy back=$work/$s-back/copy
            src_back=$work/$s-back/src
            ;;
        *) echo "nfs.sh: unknown scenario $s" >&2; exit 2 ;;
    esac
    commands "$srcdir" "$dstdir"
    echo "nfs.sh: $s: $srcdir -> $dstdir" >&2
    hyperfine --style basic --runs "$runs" \
        --prepare "rm -rf $back; sync; echo 3 > /proc/sys/vm/drop_caches" \
        --export-json "$results/$s.json" --export-markdown "$results/$s.md" \
        "${cmds[@]}"
    # The last timed copy (the last tool's) and one more by treecopy, outside the timing,
    # must equal the source (compared through the backing directories).
    diff -r "$src_back" "$back" >/dev/null || { echo "nfs.sh: $s: the last copy differs" >&2; exit 1; }
    rm -rf "$back"
    "$tc" -q "$srcdir" "$dstdir"
    diff -r "$src_back" "$back" >/dev/null || { echo "nfs.sh: $s: treecopy's copy differs" >&2; exit 1; }
    python3 - "$results/$s.json" "$s" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))["results"]
by = {r["command"]: r["median"] for r in runs}
tc = by.get("treecopy")
peers = {k: v for k, v in by.items() if k != "treecopy"}
best = min(peers, key=peers.get)
print(f"\n{sys.argv[2]}: median seconds; treecopy / tool (< 1: treecopy faster)")
for name, m in sorted(by.items(), key=lambda kv: kv[1]):
    print(f"  {name:18} {m:8.2f} s   {tc / m:5.2f}")
print(f"  best peer: {best}, {peers[best] / tc:.1f}x slower than treecopy")
PY
    local m
    for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m"; done
    mounts=()
    rm -rf "$work"
}

main "$@"; exit

#!/usr/bin/env bash
# Peak memory (max RSS, from GNU time) of treecopy:
#   - a tree of 1,000,000 files (1,000 directories of 1,000 one-byte files) on tmpfs,
#     copied to tmpfs, once fresh and once as a no-op rerun;
#   - W3 (4 x 1 GiB) on each data path: ext4 -> ext4 (copy_file_range), tmpfs -> ext4
#     (sendfile), and between two latencyfs mounts (chunked read/write).
#
#   bench/rss.sh [tree] [w3]
#
# Needs root, GNU time (/usr/bin/time, Debian package `time`), and the release build
# (cargo build --release --workspace). Writes what it measured on stdout.
set -euo pipefail

main() {
    local here repo
    here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
    repo=$(dirname -- "$here")
    tc=${TREECOPY:-$repo/target/release/treecopy}
    lfs=$repo/target/release/latencyfs
    data=${BENCH_DATA:-/work/bench-data}
    work=${RSS_WORK:-/dev/shm/treecopy-rss}
    [[ -x /usr/bin/time ]] || apt-get install -y -qq time >/dev/null
    mounts=()
    cleanup() {
        local m
        for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
        rm -rf "$work" "$data/dst/rss"
    }
    trap cleanup EXIT
    local what=("$@")
    [[ ${#what[@]} -gt 0 ]] || what=(tree w3)
    local w
    for w in "${what[@]}"; do "rss_$w"; done
}

# peak LABEL COMMAND...: runs the command under GNU time and prints its max RSS. The
# command's own output is discarded; time writes to a file of its own (-o), so that
# discarding stderr does not discard the measurement.
peak() {
    local label=$1
    shift
    local out=$work.time kib secs
    /usr/bin/time -o "$out" -f '%M %e' "$@" >/dev/null 2>&1 || {
        echo "rss.sh: $label: the command failed: $*" >&2
        exit 1
    }
    read -r kib secs < <(tail -1 "$out")
    rm -f "$out"
    printf '| %s | %d MiB | %s s |\n' "$label" $((kib / 1024)) "$secs"
}

rss_tree() {
    rm -rf "$work"
    mkdir -p "$work/src"
    python3 - "$work/src" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(1000):
    path = os.path.join(root, f"d{d:03d}")
    os.mkdir(path)
    for f in range(1000):
        fd = os.open(os.path.join(path, f"f{f:03d}"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x")
        os.close(fd)
PY
    echo "| run | max RSS | time |"
    echo "|---|---:|---:|"
    peak "1,000,000 files, tmpfs -> tmpfs, fresh copy" "$tc" -q "$work/src" "$work/dst"
    peak "1,000,000 files, tmpfs -> tmpfs, no-op rerun" "$tc" -q "$work/src" "$work/dst"
    rm -rf "$work"
}

rss_w3() {
    local w3=$data/src/W3
    [[ -d $w3 ]] || python3 "$here/gen.py" W3 "$w3"
    echo "| run | max RSS | time |"
    echo "|---|---:|---:|"
    rm -rf "$data/dst/rss"
    peak "W3 ext4 -> ext4 (copy_file_range)" "$tc" -q "$w3" "$data/dst/rss"
    rm -rf "$data/dst/rss" "$work"
    mkdir -p "$work/w3"
    cp -a "$w3"/. "$work/w3/"
    peak "W3 tmpfs -> ext4 (sendfile)" "$tc" -q "$work/w3" "$data/dst/rss"
    rm -rf "$data/dst/rss"
    mkdir -p "$work/a" "$work/b" "$work/b-back"
    "$lfs" "$work/w3" "$work/a" --latency-us 200
    mounts+=("$work/a")
    "$lfs" "$work/b-back" "$work/b" --latency-us 200
    mounts+=("$work/b")
    peak "W3 latencyfs -> latencyfs (chunked read/write, default workers, at most 16 streams)" "$tc" -q "$work/a" "$work/b/copy"
}

main "$@"; exit

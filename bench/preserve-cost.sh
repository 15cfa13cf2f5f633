#!/usr/bin/env bash
# What preserving everything (hard links, xattrs and ACLs, sparse files) costs on W1: two
# treecopy binaries, interleaved round by round with bench/prepare.sh before every run.
#
#   bench/preserve-cost.sh CORE_BINARY FULL_BINARY [ext4|tmpfs] [ROUNDS]
#
# CORE_BINARY is a build of the core copier without those features (commit 05c8481),
# FULL_BINARY the current one. Sources come from bench/run.sh's cache (run it once first).
set -euo pipefail

main() {
    local here core=$1 full=$2 pair=${3:-tmpfs} rounds=${4:-5}
    here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
    local data=${BENCH_DATA:-/work/bench-data} shm=${BENCH_SHM:-/dev/shm/treecopy-bench}
    local src=$data/src/W1
    [[ $pair == tmpfs ]] && src=$shm/src/W1
    [[ -d $src ]] || { echo "preserve-cost.sh: $src missing; run bench/run.sh W1 $pair first" >&2; exit 1; }
    local dst=$data/dst/preserve/copy out=${RESULTS:-/tmp/treecopy-preserve}
    mkdir -p "$out" "$data/dst/preserve"
    local warm=$out/warm.txt
    printf '%s\n' "$core" "$full" > "$warm"
    for round in $(seq 1 "$rounds"); do
        local a=core b=full
        (( round % 2 == 0 )) && { a=full; b=core; }
        local cmds=()
        for name in $a $b; do
            local bin=$core
            [[ $name == full ]] && bin=$full
            cmds+=(-n "$name" "$bin -q $src $dst")
        done
        hyperfine --runs 1 --style basic --export-json "$out/round$round.json" \
            --prepare "bash $here/prepare.sh $src $dst $warm" "${cmds[@]}" >&2
    done
    rm -rf "$data/dst/preserve"
    python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
times = {}
for r in range(1, rounds + 1):
    for res in json.load(open(f"{out}/round{r}.json"))["results"]:
        times.setdefault(res["command"], []).extend(res["times"])
core, full = statistics.median(times["core"]), statistics.median(times["full"])
print(f"core median {core:.3f} s, full median {full:.3f} s, full/core {full / core:.3f} ({rounds} runs each)")
PY
}

main "$@"; exit

#!/usr/bin/env bash
# The no-op rerun (issue 4): DST is already a complete copy of W1 (100,000 files of 1-16 KiB
# in 1,000 directories); every tool is timed re-running over it, so the time is the cost of
# deciding that nothing needs copying. treecopy against `rsync -a` and `cp -a -u`, in one
# hyperfine run, tools interleaved by hyperfine's own alternation of warm runs.
#
#   bench/noop.sh                 # W1 at full size under $BENCH_DATA (default /work/bench-data)
#   BENCH_SCALE=0.01 bench/noop.sh  # a quick smoke test
#   RUNS=20 JOBS="2 16" bench/noop.sh
#
# Needs hyperfine and rsync; builds nothing (cargo build --release first). Results go to
# $BENCH_DATA/results/noop-<UTC time>.{json,md}.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
data=${BENCH_DATA:-/work/bench-data}
scale=${BENCH_SCALE:-1}
runs=${RUNS:-15}
jobs_list=${JOBS:-16}
seed=${BENCH_SEED:-20240601}
tc=${TREECOPY:-$repo/target/release/treecopy}

suffix=""
[ "$scale" = 1 ] || suffix="@$scale"
src="$data/src/W1$suffix"
dst="$data/dst/noop-W1$suffix"
mkdir -p "$data/src" "$data/dst" "$data/results"
if [ ! -d "$src" ]; then
    python3 "$here/gen.py" W1 "$src" --seed "$seed" --scale "$scale"
fi
# One complete copy that every tool then re-runs over. treecopy makes it (exact, ns times);
# a first rsync pass confirms rsync sees nothing to do either (it prints no itemized line).
rm -rf "$dst"
"$tc" -q "$src" "$dst"
changes=$(rsync -ai --dry-run "$src/" "$dst/" | wc -l)
if [ "$changes" -ne 0 ]; then
    echo "noop.sh: rsync sees $changes differences after the first copy" >&2
    exit 1
fi
sync
# Warm caches on both sides, as a nightly rerun on a busy server would find them.
"$tc" -q "$src" "$dst"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$data/results/noop-$stamp"
cmds=()
names=()
for j in $jobs_list; do
    cmds+=("$tc -q -j$j $src $dst")
    names+=("treecopy -j$j")
done
cmds+=("rsync -a $src/ $dst/" "cp -a -u $src/. $dst/")
names+=("rsync -a" "cp -a -u")
args=()
for i in "${!cmds[@]}"; do
    args+=(--command-name "${names[$i]}" "${cmds[$i]}")
done
hyperfine --style basic --warmup 2 --runs "$runs" --export-json "$out.json" \
    --export-markdown "$out.md" "${args[@]}"
# The report proves the no-op: a treecopy rerun copies 0 bytes and updates nothing.
"$tc" --json -q "$src" "$dst" | tail -n 1 > "$out.report.json"
python3 - "$out.json" "$out.report.json" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))["results"]
report = json.load(open(sys.argv[2]))
by = {r["command"]: r for r in runs}
rs = by["rsync -a"]["median"]
cp = by["cp -a -u"]["median"]
print("\n| command | median | mean ± sd | / rsync -a | / cp -a -u |")
print("|---|---:|---:|---:|---:|")
for r in runs:
    m = r["median"]
    print(f"| {r['command']} | {m:.3f} s | {r['mean']:.3f} ± {r['stddev']:.3f} s | {m/rs:.2f} | {m/cp:.2f} |")
c = report["counts"]
print(f"\ntreecopy rerun report: copied={c['copied']} updated={c['updated']} "
      f"skipped={c['skipped']} bytes copied={report['bytes']['copied']}")
PY

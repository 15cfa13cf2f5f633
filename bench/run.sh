#!/usr/bin/env bash
# treecopy benchmark: treecopy vs `cp -a` vs `rsync -a`, timed by hyperfine.
#
#   bench/run.sh [W1] [W2] [W3] [ext4] [tmpfs]
#
# Workloads (bench/gen.py): W1 100k small files, W2 2,000 x 1 MiB,
# W3 4 x 1 GiB. Pairs: "ext4" = ext4 -> ext4, "tmpfs" = tmpfs -> ext4
# (the destination is always on ext4). No argument means all of them.
# Settings come from the environment; see usage() or bench/README.md.
set -euo pipefail

# Everything is inside main(), and the last line is `main "$@"; exit`: bash
# reads a script while running it, so editing or checking out this file
# during a 20-minute benchmark would otherwise make it execute garbage.
main() {
    here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
    repo=$(dirname -- "$here")

    usage() {
        cat <<EOF
usage: bench/run.sh [W1] [W2] [W3] [ext4] [tmpfs]

environment (defaults in brackets):
  BENCH_DATA      ext4 work dir: sources, destination, results [/work/bench-data]
  BENCH_SHM       tmpfs dir for the tmpfs sources [/dev/shm/treecopy-bench]
  BENCH_RESULTS   where hyperfine JSON/markdown go [\$BENCH_DATA/results/<UTC time>]
  TREECOPY        treecopy binary [$repo/target/release/treecopy]
  TREECOPY_JOBS   -j value(s), space separated, one command each ["" = built-in default]
  TREECOPY_ARGS   extra treecopy arguments [""]
  BENCH_TOOLS     tools to compare [treecopy cp rsync]
  BENCH_RUNS      runs per tool, overrides the per-workload defaults below
  BENCH_RUNS_W1 [5]  BENCH_RUNS_W2 [5]  BENCH_RUNS_W3 [3]
  BENCH_MODE      interleave: one hyperfine call per round, every tool once,
                  order rotated each round; batch: one hyperfine call with
                  --runs N (hyperfine runs all of tool A, then all of B) [interleave]
  BENCH_SYNC      1: time "tool && sync -f DST", i.e. include writeback [0]
  BENCH_SETTLE    seconds to sleep after deleting the old destination [0]
  BENCH_VERIFY    auto (full content check on round 1, metadata afterwards),
                  meta, full or none [auto]
  BENCH_SCALE     shrink workloads for a quick test, e.g. 0.01 [1]
  BENCH_SEED      gen.py seed [20240601]
  BENCH_KEEP_W3   0: also delete the 4 GiB ext4 W3 source after use (the
                  tmpfs one is always deleted, it holds RAM) [1]
EOF
    }

    die() { echo "run.sh: $*" >&2; exit 1; }
    log() { echo "run.sh: $*" >&2; }

    BENCH_DATA=${BENCH_DATA:-/work/bench-data}
    BENCH_SHM=${BENCH_SHM:-/dev/shm/treecopy-bench}
    BENCH_RESULTS=${BENCH_RESULTS:-$BENCH_DATA/results/$(date -u +%Y%m%dT%H%M%SZ)}
    TREECOPY=${TREECOPY:-$repo/target/release/treecopy}
    TREECOPY_JOBS=${TREECOPY_JOBS:-}
    TREECOPY_ARGS=${TREECOPY_ARGS:-}
    BENCH_TOOLS=${BENCH_TOOLS:-treecopy cp rsync}
    BENCH_MODE=${BENCH_MODE:-interleave}
    BENCH_SYNC=${BENCH_SYNC:-0}
    BENCH_SETTLE=${BENCH_SETTLE:-0}
    BENCH_VERIFY=${BENCH_VERIFY:-auto}
    BENCH_SCALE=${BENCH_SCALE:-1}
    BENCH_SEED=${BENCH_SEED:-20240601}
    BENCH_KEEP_W3=${BENCH_KEEP_W3:-1}

    workloads=() pairs=()
    for arg in "$@"; do
        case $arg in
            W1|W2|W3) workloads+=("$arg") ;;
            ext4|tmpfs) pairs+=("$arg") ;;
            all) ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument '$arg'" ;;
        esac
    done
    [[ ${#workloads[@]} -gt 0 ]] || workloads=(W1 W2 W3)
    [[ ${#pairs[@]} -gt 0 ]] || pairs=(ext4 tmpfs)

    runs_for() {
        local var=BENCH_RUNS_$1 def
        case $1 in W3) def=3 ;; *) def=5 ;; esac
        echo "${BENCH_RUNS:-${!var:-$def}}"
    }

    # ---- preconditions ------------------------------------------------------
    [[ $(id -u) == 0 ]] || die "must run as root (it writes /proc/sys/vm/drop_caches)"
    command -v hyperfine > /dev/null || die "hyperfine not found (apt-get install hyperfine)"
    case $BENCH_MODE in interleave|batch) ;; *) die "BENCH_MODE must be interleave or batch" ;; esac
    case $BENCH_VERIFY in auto|meta|full|none) ;; *) die "BENCH_VERIFY must be auto, meta, full or none" ;; esac
    for tool in $BENCH_TOOLS; do
        case $tool in
            treecopy) [[ -x $TREECOPY ]] || die "no treecopy binary at $TREECOPY;" \
                "run 'cargo build --release' in $repo, or set BENCH_TOOLS='cp rsync'" ;;
            cp) ;;
            rsync) command -v rsync > /dev/null || die "rsync not found" ;;
            *) die "unknown tool '$tool' in BENCH_TOOLS (treecopy, cp, rsync)" ;;
        esac
    done

    # Data at --scale 1 and the default seed lives in src/W1; other data gets a
    # suffix (src/W1@0.01, src/W1-seed7), so a quick test or another seed never
    # masquerades as the real workload.
    suffix=""
    [[ $BENCH_SCALE == 1 ]] || suffix+="@$BENCH_SCALE"
    [[ $BENCH_SEED == 20240601 ]] || suffix+="-seed$BENCH_SEED"
    mkdir -p "$BENCH_DATA/src" "$BENCH_DATA/dst"
    # One benchmark at a time: two would time each other. The lock does not
    # stop other programs from using the disk; verify.sh at least catches
    # anything that writes into our destination.
    exec 9> "$BENCH_DATA/.run.lock"
    flock -n 9 || die "another bench/run.sh holds $BENCH_DATA/.run.lock"
    mkdir -p "$BENCH_RESULTS"
    # A destination private to this run (prepare.sh only deletes under dst/),
    # removed whatever way the script ends.
    dst_root=$BENCH_DATA/dst/$(basename -- "$BENCH_RESULTS")
    dst=$dst_root/copy
    mkdir -p "$dst_root"
    trap 'rm -rf -- "$dst_root"' EXIT
    if [[ " ${pairs[*]} " == *" tmpfs "* ]]; then
        mkdir -p "$BENCH_SHM/src"
    fi

    fstype() { stat -f -c %T -- "$1"; }
    [[ $(fstype "$BENCH_DATA") == ext2/ext3 ]] ||
        log "warning: $BENCH_DATA is on $(fstype "$BENCH_DATA"), not ext4; the 'ext4' label will be wrong"
    if [[ " ${pairs[*]} " == *" tmpfs "* && $(fstype "$BENCH_SHM") != tmpfs ]]; then
        log "warning: $BENCH_SHM is on $(fstype "$BENCH_SHM"), not tmpfs"
    fi

    # ---- workload sources (generated once, then cached) ---------------------
    # gen.py writes DIR.partial and renames it, so an existing DIR is complete.
    src_dir() {  # src_dir W PAIR
        case $2 in
            ext4) echo "$BENCH_DATA/src/$1$suffix" ;;
            tmpfs) echo "$BENCH_SHM/src/$1$suffix" ;;
        esac
    }
    ensure_source() {  # ensure_source W PAIR
        local dir
        dir=$(src_dir "$1" "$2")
        if [[ -d $dir ]]; then
            return
        fi
        # W3 needs 4 GiB (x scale) for the source and as much again for the copy.
        local need_kib=$((4 * 1024 * 1024))
        case $1 in W1) need_kib=$((1200 * 1024)) ;; W2) need_kib=$((2100 * 1024)) ;; esac
        need_kib=$(awk -v n="$need_kib" -v s="$BENCH_SCALE" 'BEGIN { printf "%d", n * s * 2 }')
        local avail_kib
        avail_kib=$(df -Pk -- "$(dirname -- "$dir")" | awk 'NR == 2 { print $4 }')
        ((avail_kib > need_kib)) || die "not enough space for $1 in $(dirname -- "$dir")" \
            "(need ~$((need_kib / 1024)) MiB, have $((avail_kib / 1024)) MiB)"
        log "generating $1 in $dir"
        python3 "$here/gen.py" "$1" "$dir" --seed "$BENCH_SEED" --scale "$BENCH_SCALE"
    }

    # ---- commands -----------------------------------------------------------
    # Benchmark a private copy of the treecopy binary: `cargo build` running
    # during the benchmark must not swap the binary between rounds.
    treecopy_bin=
    if [[ " $BENCH_TOOLS " == *" treecopy "* ]]; then
        treecopy_bin=$BENCH_RESULTS/treecopy
        install -m 755 -- "$TREECOPY" "$treecopy_bin"
    fi

    # Files every tool needs to start (binaries and shared libraries): prepare.sh
    # reads them after dropping caches, so no tool is timed loading itself.
    warm_list=$BENCH_RESULTS/warm-files.txt
    {
        for bin in "$(command -v cp)" "$(command -v rsync || true)" "$treecopy_bin"; do
            [[ -n $bin && -f $bin ]] || continue
            echo "$bin"
            ldd "$bin" 2> /dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
        done
    } | sort -u > "$warm_list"

    q() { printf '%q' "$1"; }  # hyperfine splits commands with shell rules

    # Fill names[] and cmds[] for one source; rotate by $2 (interleave mode).
    build_commands() {  # build_commands SRC ROTATION
        local src=$1 rot=$2 tool j
        local -a n=() c=()
        for tool in $BENCH_TOOLS; do
            case $tool in
                treecopy)
                    for j in ${TREECOPY_JOBS:-default}; do
                        if [[ $j == default ]]; then
                            n+=("treecopy")
                            c+=("$(q "$treecopy_bin") $TREECOPY_ARGS $(q "$src") $(q "$dst")")
                        else
                            n+=("treecopy -j$j")
                            c+=("$(q "$treecopy_bin") -j $j $TREECOPY_ARGS $(q "$src") $(q "$dst")")
                        fi
                    done ;;
                cp) n+=("cp -a"); c+=("cp -a $(q "$src") $(q "$dst")") ;;
                # Trailing slashes: copy SRC's contents into DST, like the others.
                rsync) n+=("rsync -a"); c+=("rsync -a $(q "$src/") $(q "$dst/")") ;;
            esac
        done
        if [[ $BENCH_SYNC == 1 ]]; then
            local i
            for i in "${!c[@]}"; do
                c[i]="sh -c $(q "${c[i]} && sync -f $(q "$dst")")"
            done
        fi
        names=() cmds=()
        local k=${#n[@]} i
        for ((i = 0; i < k; i++)); do
            names+=("${n[(i + rot) % k]}")
            cmds+=("${c[(i + rot) % k]}")
        done
    }

    run_hyperfine() {  # run_hyperfine SRC OUT_BASENAME RUNS VERIFY_MODE ROTATION
        local src=$1 out=$2 runs=$3 vmode=$4 rot=$5 i
        build_commands "$src" "$rot"
        local -a args=(-N --runs "$runs" --style basic
            --export-json "$BENCH_RESULTS/$out.json"
            --export-markdown "$BENCH_RESULTS/$out.md"
            --prepare "bash $(q "$here/prepare.sh") $(q "$src") $(q "$dst") $(q "$warm_list") $BENCH_SETTLE"
            --cleanup "bash $(q "$here/verify.sh") $(q "$src") $(q "$dst") $vmode")
        for i in "${!names[@]}"; do
            args+=(-n "${names[i]}" "${cmds[i]}")
        done
        hyperfine "${args[@]}" 2>&1 | tee -a "$BENCH_RESULTS/hyperfine.log"
        return "${PIPESTATUS[0]}"
    }

    # ---- main loop ----------------------------------------------------------
    for w in "${workloads[@]}"; do
        for p in "${pairs[@]}"; do
            ensure_source "$w" "$p"
        done
    done

    meta_args=(--write-meta "$BENCH_RESULTS/meta.json" --treecopy "$TREECOPY" --repo "$repo"
        --treecopy-bin "$treecopy_bin"
        --path "Source (ext4 pair)=$BENCH_DATA/src" --path "Destination=$dst_root")
    if [[ " ${pairs[*]} " == *" tmpfs "* ]]; then
        meta_args+=(--path "Source (tmpfs pair)=$BENCH_SHM/src")
    fi
    for w in "${workloads[@]}"; do
        meta_args+=(--workload "$w=$(src_dir "$w" "${pairs[0]}")")
    done
    for kv in "mode=$BENCH_MODE" "sync_in_timing=$BENCH_SYNC" "settle_s=$BENCH_SETTLE" \
        "verify=$BENCH_VERIFY" "scale=$BENCH_SCALE" "seed=$BENCH_SEED" \
        "tools=$BENCH_TOOLS" "treecopy_jobs=${TREECOPY_JOBS:-default}" "treecopy_args=$TREECOPY_ARGS"; do
        meta_args+=(--setting "$kv")
    done
    python3 "$here/report.py" "${meta_args[@]}"

    log "results in $BENCH_RESULTS"
    start=$SECONDS
    for w in "${workloads[@]}"; do
        runs=$(runs_for "$w")
        for p in "${pairs[@]}"; do
            src=$(src_dir "$w" "$p")
            log "$w $p: $src -> $dst, $runs runs per tool ($BENCH_MODE)"
            if [[ $BENCH_MODE == batch ]]; then
                vmode=$BENCH_VERIFY
                [[ $vmode == auto ]] && vmode=full
                run_hyperfine "$src" "$w-$p" "$runs" "$vmode" 0
            else
                for ((r = 1; r <= runs; r++)); do
                    vmode=$BENCH_VERIFY
                    [[ $vmode == auto ]] && { ((r == 1)) && vmode=full || vmode=meta; }
                    log "$w $p: round $r/$runs"
                    run_hyperfine "$src" "$w-$p-r$r" 1 "$vmode" "$((r - 1))"
                done
            fi
        done
        # Leave no copy behind. The tmpfs W3 source holds 4 GiB of RAM and is
        # regenerated in seconds, so it is never kept; the ext4 one is kept
        # unless BENCH_KEEP_W3=0.
        rm -rf -- "$dst"
        if [[ $w == W3 ]]; then
            rm -rf -- "$(src_dir W3 tmpfs)"
            [[ $BENCH_KEEP_W3 == 1 ]] || rm -rf -- "$(src_dir W3 ext4)"
        fi
    done
    sync
    log "done in $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s; results in $BENCH_RESULTS"
    python3 "$here/report.py" "$BENCH_RESULTS"
}

main "$@"
exit

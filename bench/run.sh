#!/usr/bin/env bash
# treecopy benchmark: treecopy vs `cp -a` vs `rsync -a` (and the peer copiers
# xcp, fcp, cpz from bench/peers.sh), timed by hyperfine.
#
#   bench/run.sh [W1] [W2] [W3] [W4] [ext4] [tmpfs] [xfs]
#
# Workloads (bench/gen.py): W1 100k small files, W2 2,000 x 1 MiB,
# W3 4 x 1 GiB, W4 ~3 GiB of mixed sizes (100 B - 256 MiB, log-uniform).
# Pairs: "ext4" = ext4 -> ext4, "tmpfs" = tmpfs -> ext4, "xfs" = XFS -> the
# same XFS (a loop-mounted image with reflink=1, under BENCH_DATA). No
# workload means W1 W2 W3, no pair means ext4 tmpfs (W4 and xfs are opt-in).
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
usage: bench/run.sh [W1] [W2] [W3] [W4] [ext4] [tmpfs] [xfs]
       (default: W1 W2 W3 ext4 tmpfs)

environment (defaults in brackets):
  BENCH_DATA      ext4 work dir: sources, destination, results [/work/bench-data]
  BENCH_SHM       tmpfs dir for the tmpfs sources [/dev/shm/treecopy-bench]
  BENCH_RESULTS   where hyperfine JSON/markdown go [\$BENCH_DATA/results/<UTC time>]
  TREECOPY        treecopy binary [$repo/target/release/treecopy]
  TREECOPY_JOBS   -j value(s), space separated, one command each ["" = built-in default]
  TREECOPY_ARGS   extra treecopy arguments [""]
  BENCH_TOOLS     tools to compare, from treecopy cp rsync xcp fcp cpz
                  [treecopy cp rsync]
  PEERS_ROOT      where bench/peers.sh installed xcp, fcp, cpz [\$BENCH_DATA/peers]
  XCP_JOBS        xcp --workers value(s), one command each [16]
  XCP_ARGS        extra xcp arguments, e.g. "--driver parblock" [""]
  FCP_JOBS        fcp threads (RAYON_NUM_THREADS), one command each
                  ["" = rayon's default, one per CPU]
  BENCH_RUNS      runs per tool, overrides the per-workload defaults below
  BENCH_RUNS_W1 [5]  BENCH_RUNS_W2 [5]  BENCH_RUNS_W3 [3]  BENCH_RUNS_W4 [3]
  BENCH_MODE      interleave: one hyperfine call per round, every tool once,
                  order rotated each round; batch: one hyperfine call with
                  --runs N (hyperfine runs all of tool A, then all of B) [interleave]
  BENCH_SYNC      1: time "tool && sync -f DST", i.e. include writeback [0]
  BENCH_SETTLE    seconds to sleep after deleting the old destination [0]
  BENCH_QUIET     seconds to wait at the end of the preparation, for freed
                  memory to be handed back to the host (bench/prepare.sh) [5]
  BENCH_VERIFY    auto (full content check on round 1, metadata afterwards),
                  meta, full or none [auto]
  BENCH_SCALE     shrink workloads for a quick test, e.g. 0.01 [1]
  BENCH_SEED      gen.py seed [20240601]
  BENCH_KEEP_W3   0: also delete the 4 GiB ext4 (and xfs) W3 source after
                  use (the tmpfs W3 and W4 sources are always deleted, they
                  hold RAM) [1]
  BENCH_XFS_IMG   XFS image for the xfs pair, created (sparse) and
                  formatted if missing, kept between runs [\$BENCH_DATA/xfs.img]
  BENCH_XFS_SIZE  its size when created [16G]
  BENCH_XFS_MNT   where it is mounted during the run [\$BENCH_DATA/xfs]
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
    PEERS_ROOT=${PEERS_ROOT:-$BENCH_DATA/peers}
    XCP_JOBS=${XCP_JOBS:-16}
    XCP_ARGS=${XCP_ARGS:-}
    FCP_JOBS=${FCP_JOBS:-}
    BENCH_XFS_IMG=${BENCH_XFS_IMG:-$BENCH_DATA/xfs.img}
    BENCH_XFS_SIZE=${BENCH_XFS_SIZE:-16G}
    BENCH_XFS_MNT=${BENCH_XFS_MNT:-$BENCH_DATA/xfs}

    # The xfs pair: source and destination on one XFS filesystem (reflink=1,
    # so copiers that clone, via FICLONE or copy_file_range, can). The image
    # is a sparse file on BENCH_DATA's filesystem, made once and kept, so the
    # sources generated into it are cached like the others. Its loop device
    # uses direct I/O, so the image's data is not cached a second time in the
    # page cache of the filesystem below (drop_caches would cover both, but
    # the copy would pay for two caches).
    setup_xfs() {
        mkdir -p -- "$BENCH_XFS_MNT"
        # Left mounted by a run that was killed before its trap ran (we hold
        # the lock, so no other run.sh uses it).
        if mountpoint -q -- "$BENCH_XFS_MNT"; then
            log "unmounting $BENCH_XFS_MNT, left over from an earlier run"
            umount -- "$BENCH_XFS_MNT"
        fi
        if [[ -f $BENCH_XFS_IMG ]]; then
            local old
            for old in $(losetup -j "$BENCH_XFS_IMG" -O NAME -n); do
                log "detaching $old, left over from an earlier run"
                losetup -d "$old"
            done
        else
            log "creating $BENCH_XFS_SIZE XFS image $BENCH_XFS_IMG"
            rm -f -- "$BENCH_XFS_IMG.partial"
            truncate -s "$BENCH_XFS_SIZE" -- "$BENCH_XFS_IMG.partial"
            mkfs.xfs -q -m reflink=1 -L tcbench "$BENCH_XFS_IMG.partial"
            mv -- "$BENCH_XFS_IMG.partial" "$BENCH_XFS_IMG"
        fi
        xfs_dev=$(losetup --find --show --direct-io=on -- "$BENCH_XFS_IMG")
        mount -t xfs -- "$xfs_dev" "$BENCH_XFS_MNT"
        xfs_mounted=1
        [[ $(fstype "$BENCH_XFS_MNT") == xfs ]] || die "$BENCH_XFS_MNT is not XFS after mounting"
        [[ $(xfs_info "$BENCH_XFS_MNT") == *reflink=1* ]] || die "$BENCH_XFS_IMG has no reflink"
        # dst/ in the image is run.sh's alone (and we hold the lock): anything
        # in it was left by a killed run.
        rm -rf -- "$BENCH_XFS_MNT/dst"
        mkdir -p -- "$BENCH_XFS_MNT/src" "$xfs_dst_root"
        log "mounted $BENCH_XFS_IMG ($xfs_dev) on $BENCH_XFS_MNT"
    }
    fstype() { stat -f -c %T -- "$1"; }

    workloads=() pairs=()
    for arg in "$@"; do
        case $arg in
            W1|W2|W3|W4) workloads+=("$arg") ;;
            ext4|tmpfs|xfs) pairs+=("$arg") ;;
            all) ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument '$arg'" ;;
        esac
    done
    [[ ${#workloads[@]} -gt 0 ]] || workloads=(W1 W2 W3)
    [[ ${#pairs[@]} -gt 0 ]] || pairs=(ext4 tmpfs)

    runs_for() {
        local var=BENCH_RUNS_$1 def
        case $1 in W3|W4) def=3 ;; *) def=5 ;; esac
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
            xcp|fcp|cpz) [[ -x $PEERS_ROOT/bin/$tool ]] ||
                die "no $tool in $PEERS_ROOT/bin; run 'PEERS_ROOT=$PEERS_ROOT bench/peers.sh'" ;;
            *) die "unknown tool '$tool' in BENCH_TOOLS (treecopy, cp, rsync, xcp, fcp, cpz)" ;;
        esac
    done
    if [[ " ${pairs[*]} " == *" xfs "* ]]; then
        command -v mkfs.xfs > /dev/null || die "mkfs.xfs not found (apt-get install xfsprogs)"
    fi

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
    # removed whatever way the script ends; for the xfs pair a second one
    # inside the XFS image. cleanup() also unmounts the image and detaches
    # its loop device. The variables are global (the EXIT trap runs after
    # main has returned), and INT/TERM become a plain exit so that the EXIT
    # trap runs for them too.
    stamp=$(basename -- "$BENCH_RESULTS")
    dst_root=$BENCH_DATA/dst/$stamp
    xfs_dst_root=$BENCH_XFS_MNT/dst/$stamp
    xfs_dev='' xfs_mounted=0 hf_pid=''
    # shellcheck disable=SC2317  # called by the EXIT trap
    cleanup() {
        if [[ -n $hf_pid ]]; then
            kill -TERM -- "-$hf_pid" 2> /dev/null || true
            wait "$hf_pid" 2> /dev/null || true
            sleep 0.5  # let the killed tool's open files close before the umount
        fi
        rm -rf -- "$dst_root"
        if [[ $xfs_mounted == 1 ]]; then
            rm -rf -- "$xfs_dst_root"
            umount -- "$BENCH_XFS_MNT" 2> /dev/null || umount -l -- "$BENCH_XFS_MNT" ||
                echo "run.sh: could not unmount $BENCH_XFS_MNT" >&2
        fi
        if [[ -n $xfs_dev ]]; then
            losetup -d "$xfs_dev" || echo "run.sh: could not detach $xfs_dev" >&2
        fi
    }
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mkdir -p "$dst_root"
    if [[ " ${pairs[*]} " == *" tmpfs "* ]]; then
        mkdir -p "$BENCH_SHM/src"
    fi
    if [[ " ${pairs[*]} " == *" xfs "* ]]; then
        setup_xfs
    fi

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
            xfs) echo "$BENCH_XFS_MNT/src/$1$suffix" ;;
        esac
    }
    dst_for() {  # dst_for PAIR: the destination; on the source's filesystem for xfs
        case $1 in
            xfs) echo "$xfs_dst_root/copy" ;;
            *) echo "$dst_root/copy" ;;
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
        case $1 in
            W1) need_kib=$((1200 * 1024)) ;;
            W2) need_kib=$((2100 * 1024)) ;;
            W4) need_kib=$((3100 * 1024)) ;;
        esac
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
        for bin in "$(command -v cp)" "$(command -v rsync || true)" "$treecopy_bin" \
            "$(command -v env)" "$PEERS_ROOT"/bin/{xcp,fcp,cpz}; do
            [[ -n $bin && -f $bin ]] || continue
            echo "$bin"
            { ldd "$bin" 2> /dev/null || true; } | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
        done
    } | sort -u > "$warm_list"

    q() { printf '%q' "$1"; }  # hyperfine splits commands with shell rules

    # What each tool preserves, for verify.sh (KEEP; see verify.sh). Measured
    # on a test tree (modes 640/700/750, ns mtimes, a symlink, a hard link,
    # an xattr, another owner), as root, the versions from bench/peers.sh:
    #   xcp -r -o   file modes, file mtimes (ns), xattrs, owners (-o); NOT
    #               directory modes (umask) or mtimes, symlink mtimes, hard links
    #   fcp         file and directory modes only: no mtimes, owners, xattrs,
    #               hard links
    #   cpz         file and directory modes only: no mtimes, owners, xattrs,
    #               hard links (and it hangs on a FIFO; the workloads have none)
    # treecopy, cp -a and rsync -a keep everything verify.sh checks.
    keep_of() {
        case $1 in
            xcp) echo mode,mtime ;;
            fcp|cpz) echo mode,dirmode ;;
            *) echo all ;;
        esac
    }

    # Fill names[], cmds[] and keeps[] for one source and destination; rotate
    # by $3 (interleave mode).
    build_commands() {  # build_commands SRC DST ROTATION
        local src=$1 dst=$2 rot=$3 tool j
        local -a n=() c=() k=()
        local peers=$PEERS_ROOT/bin
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
                # xcp: parallel per file (one walker thread, N copy workers;
                # its default is 4, 0 = one per CPU). -o copies owners, as
                # cp -a does as root; no progress bar (hyperfine discards it).
                xcp)
                    for j in $XCP_JOBS; do
                        n+=("xcp -w$j")
                        c+=("$(q "$peers/xcp") -r -o --no-progress --workers $j $XCP_ARGS $(q "$src") $(q "$dst")")
                    done ;;
                # fcp: a rayon parallel iterator over each directory's entries;
                # no options, threads = rayon's default (one per CPU) unless
                # RAYON_NUM_THREADS is set.
                fcp)
                    for j in ${FCP_JOBS:-default}; do
                        if [[ $j == default ]]; then
                            n+=("fcp")
                            c+=("$(q "$peers/fcp") $(q "$src") $(q "$dst")")
                        else
                            n+=("fcp -t$j")
                            c+=("env RAYON_NUM_THREADS=$j $(q "$peers/fcp") $(q "$src") $(q "$dst")")
                        fi
                    done ;;
                # cpz: one thread per directory, up to available_parallelism()
                # (the CPUs it may run on); no option changes that.
                cpz) n+=("cpz"); c+=("$(q "$peers/cpz") $(q "$src") $(q "$dst")") ;;
            esac
            while ((${#k[@]} < ${#n[@]})); do k+=("$(keep_of "$tool")"); done
        done
        if [[ $BENCH_SYNC == 1 ]]; then
            local i
            for i in "${!c[@]}"; do
                c[i]="sh -c $(q "${c[i]} && sync -f $(q "$dst")")"
            done
        fi
        names=() cmds=() keeps=()
        local count=${#n[@]} i
        for ((i = 0; i < count; i++)); do
            names+=("${n[(i + rot) % count]}")
            cmds+=("${c[(i + rot) % count]}")
            keeps+=("${k[(i + rot) % count]}")
        done
    }

    # hyperfine takes one --cleanup for all commands but one --prepare per
    # command, so each command's prepare.sh records what its tool keeps in
    # DST.keep, and verify.sh checks that.
    run_hyperfine() {  # run_hyperfine SRC DST OUT_BASENAME RUNS VERIFY_MODE ROTATION
        local src=$1 dst=$2 out=$3 runs=$4 vmode=$5 rot=$6 i
        build_commands "$src" "$dst" "$rot"
        local -a args=(-N --runs "$runs" --style basic
            --export-json "$BENCH_RESULTS/$out.json"
            --export-markdown "$BENCH_RESULTS/$out.md"
            --cleanup "bash $(q "$here/verify.sh") $(q "$src") $(q "$dst") $vmode")
        for i in "${!names[@]}"; do
            args+=(--prepare "bash $(q "$here/prepare.sh") $(q "$src") $(q "$dst") $(q "$warm_list") $BENCH_SETTLE ${keeps[i]}")
        done
        for i in "${!names[@]}"; do
            args+=(-n "${names[i]}" "${cmds[i]}")
        done
        # In the background, in a process group of its own, and waited for:
        # bash runs an INT/TERM trap during `wait` at once, but not while a
        # foreground command runs, and for SIGINT not at all if that command
        # exits normally (hyperfine does, after a Ctrl-C). cleanup() kills the
        # group (hyperfine, the tool, prepare.sh), then unmounts.
        local status=0
        VERIFY_LOG=$BENCH_RESULTS/verify.log setsid hyperfine "${args[@]}" \
            > >(tee -a "$BENCH_RESULTS/hyperfine.log") 2>&1 &
        hf_pid=$!
        wait "$hf_pid" || status=$?
        hf_pid=''
        if ((status != 0)) && [[ -s $BENCH_RESULTS/verify.log ]]; then
            log "hyperfine failed; $BENCH_RESULTS/verify.log ends with:"
            tail -n 25 -- "$BENCH_RESULTS/verify.log" >&2
        fi
        return "$status"
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
    if [[ " ${pairs[*]} " == *" xfs "* ]]; then
        meta_args+=(--path "Source and destination (xfs pair)=$BENCH_XFS_MNT"
            --setting "xfs_image=$BENCH_XFS_IMG")
    fi
    for tool in xcp fcp cpz; do
        if [[ " $BENCH_TOOLS " == *" $tool "* ]]; then
            meta_args+=(--peer "$tool=$PEERS_ROOT/bin/$tool" --setting "keep_$tool=$(keep_of "$tool")")
        fi
    done
    for w in "${workloads[@]}"; do
        meta_args+=(--workload "$w=$(src_dir "$w" "${pairs[0]}")")
    done
    for kv in "mode=$BENCH_MODE" "sync_in_timing=$BENCH_SYNC" "settle_s=$BENCH_SETTLE" "quiet_s=${BENCH_QUIET:-5}" \
        "verify=$BENCH_VERIFY" "scale=$BENCH_SCALE" "seed=$BENCH_SEED" \
        "tools=$BENCH_TOOLS" "treecopy_jobs=${TREECOPY_JOBS:-default}" "treecopy_args=$TREECOPY_ARGS" \
        "xcp_jobs=$XCP_JOBS" "xcp_args=$XCP_ARGS" "fcp_jobs=${FCP_JOBS:-default}"; do
        meta_args+=(--setting "$kv")
    done
    python3 "$here/report.py" "${meta_args[@]}"

    log "results in $BENCH_RESULTS"
    start=$SECONDS
    for w in "${workloads[@]}"; do
        runs=$(runs_for "$w")
        for p in "${pairs[@]}"; do
            src=$(src_dir "$w" "$p")
            dst=$(dst_for "$p")
            log "$w $p: $src -> $dst, $runs runs per tool ($BENCH_MODE)"
            if [[ $BENCH_MODE == batch ]]; then
                vmode=$BENCH_VERIFY
                [[ $vmode == auto ]] && vmode=full
                run_hyperfine "$src" "$dst" "$w-$p" "$runs" "$vmode" 0
            else
                for ((r = 1; r <= runs; r++)); do
                    vmode=$BENCH_VERIFY
                    [[ $vmode == auto ]] && { ((r == 1)) && vmode=full || vmode=meta; }
                    log "$w $p: round $r/$runs"
                    run_hyperfine "$src" "$dst" "$w-$p-r$r" 1 "$vmode" "$((r - 1))"
                done
            fi
            # Leave no copy behind.
            rm -rf -- "$dst" "$dst.keep"
        done
        # The tmpfs W3 and W4 sources hold 3-4 GiB of RAM and are regenerated
        # in seconds, so they are never kept; the ext4 and xfs W3 sources are
        # kept unless BENCH_KEEP_W3=0.
        if [[ $w == W3 || $w == W4 ]]; then
            rm -rf -- "$(src_dir "$w" tmpfs)"
        fi
        if [[ $w == W3 && $BENCH_KEEP_W3 != 1 ]]; then
            rm -rf -- "$(src_dir W3 ext4)" "$(src_dir W3 xfs)"
        fi
    done
    sync
    log "done in $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s; results in $BENCH_RESULTS"
    python3 "$here/report.py" "$BENCH_RESULTS"
}

main "$@"
exit

#!/usr/bin/env bash
# Runs copiers alternately on one workload, one timed copy at a time, and
# says for each copy where ext4 put its inodes: the by-hand runs behind the
# "W1 on this ext4" section of docs/benchmarks.md.
#
#   bench/pair.sh [TOOL ...]          (default: treecopy cpz)
#
# Before every copy, for every tool alike and outside the timing, it does
# what bench/prepare.sh does for hyperfine (delete the old destination, sync,
# optional pause, drop caches, read the source, wait for freed memory to go
# back to the host), then times the copy with
# GNU time. Per copy it prints wall, user and system seconds, and how many
# inode groups the copy's directories and files landed in (from their inode
# numbers: ext4 gives a file an inode in its directory's flex group, so this
# tells packed placement from spread placement).
#
# Environment (defaults in brackets):
#   PAIR_SRC       source tree [/dev/shm/treecopy-bench/src/W1, from bench/run.sh W1 tmpfs]
#   PAIR_DST       destination, its last directory but one named dst
#                  [/work/bench-data/dst/pair/copy]
#   PAIR_ROUNDS    rounds, each tool once per round, in the order given [4]
#   PAIR_PAUSE     seconds between the delete (and sync) and the copy [0]
#   PAIR_QUIET     seconds to wait after reading the source, for freed memory
#                  to go back to the host, as bench/prepare.sh does [5]
#   PAIR_IPG       inodes per group of the destination's ext4 [8192: this
#                  machine's 16,777,216 inodes in 2,048 groups; dumpe2fs
#                  cannot open the disk from inside the VM's container]
#   PAIR_FLEX      groups per flex group [16]
#   TREECOPY       treecopy binary [target/release/treecopy]
#   PEERS_ROOT     where bench/peers.sh installed xcp, fcp, cpz [/work/bench-data/peers]
#   TOOL may also be a path to another treecopy build: it is run like treecopy.
set -euo pipefail

main() {
    here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
    repo=$(dirname -- "$here")
    src=${PAIR_SRC:-/dev/shm/treecopy-bench/src/W1}
    dst=${PAIR_DST:-/work/bench-data/dst/pair/copy}
    rounds=${PAIR_ROUNDS:-4}
    pause=${PAIR_PAUSE:-0}
    quiet=${PAIR_QUIET:-5}
    ipg=${PAIR_IPG:-8192}
    flex=${PAIR_FLEX:-16}
    treecopy=${TREECOPY:-$repo/target/release/treecopy}
    peers=${PEERS_ROOT:-/work/bench-data/peers}/bin
    tools=("$@")
    [[ ${#tools[@]} -gt 0 ]] || tools=(treecopy cpz)

    die() { echo "pair.sh: $*" >&2; exit 1; }
    [[ $(id -u) == 0 ]] || die "must run as root (it writes /proc/sys/vm/drop_caches)"
    [[ -d $src ]] || die "no source $src (bench/run.sh W1 tmpfs generates it)"
    case $dst in
        */dst/*) ;;
        *) die "refusing to delete '$dst' (not under a dst/ dir)" ;;
    esac
    [[ -x /usr/bin/time ]] || die "needs GNU time (apt-get install time)"

    command_of() {
        case $1 in
            treecopy) echo "$treecopy -q" ;;
            cp) echo "cp -a" ;;
            rsync) echo "rsync -a" ;;
            xcp) echo "$peers/xcp -r -o --no-progress --workers 16" ;;
            fcp) echo "$peers/fcp" ;;
            cpz) echo "$peers/cpz" ;;
            */*) [[ -x $1 ]] || die "$1 is not executable"; echo "$1 -q" ;;
            *) die "unknown tool $1 (treecopy cp rsync xcp fcp cpz, or a path)" ;;
        esac
    }
    for tool in "${tools[@]}"; do command_of "$tool" > /dev/null; done

    # Distinct inode groups (or flex groups) of the entries of one type.
    groups_of() {
        find "$dst" -type "$1" -printf '%i\n' |
            awk -v ipg="$ipg" -v per="$2" '{ seen[int(($1 - 1) / ipg / per)] = 1 }
                END { print length(seen) }'
    }

    mkdir -p "$(dirname -- "$dst")"
    printf '%-10s %5s %8s %8s %8s %10s %11s\n' tool round wall_s user_s sys_s dir_flex file_groups
    for round in $(seq 1 "$rounds"); do
        for tool in "${tools[@]}"; do
            rm -rf "$dst"
            sync
            sleep "$pause"
            echo 3 > /proc/sys/vm/drop_caches
            find "$src" -type f -exec cat {} + > /dev/null
            sleep "$quiet"
            # shellcheck disable=SC2046 # the command is words on purpose
            times=$(/usr/bin/time -f '%x %e %U %S' $(command_of "$tool") "$src" "$dst" 2>&1 \
                >/dev/null | tail -n 1)
            read -r status wall user sys <<< "$times"
            [[ $status == 0 ]] || die "$tool exited with status $status"
            printf '%-10s %5s %8s %8s %8s %10s %11s\n' "$(basename -- "$tool")" "$round" \
                "$wall" "$user" "$sys" "$(groups_of d "$flex")" "$(groups_of f 1)"
        done
    done
    rm -rf "$dst"
}

main "$@"; exit

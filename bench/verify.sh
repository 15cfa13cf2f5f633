#!/usr/bin/env bash
# Runs after a timed run (hyperfine --cleanup), outside the timing:
#
#   verify.sh SRC DST MODE [KEEP]      MODE: meta | full | none
#
# A tool that is fast because it copied the wrong thing must not produce a
# number, so every benchmarked copy is checked:
#   meta  same entries and types, same size for files, same symlink targets,
#         and the metadata in KEEP
#   full  meta, plus byte-for-byte content (diff -r)
# KEEP: what the tool preserves, comma separated, from
#   mode (file modes), dirmode (directory modes), mtime (file mtimes, ns),
#   linkmtime (symlink mtimes, ns); "all" means all four.
# Default: the file DST.keep if it exists (prepare.sh writes it, because
# hyperfine takes one --cleanup for all commands but one --prepare per
# command), else "all". treecopy, cp -a and rsync -a are checked with "all";
# peers that keep less (bench/run.sh: xcp mode,mtime; fcp and cpz
# mode,dirmode) are checked on what they keep, sizes and content. Without
# mtime in KEEP, "meta" is upgraded to "full": same sizes and mtimes are
# what makes the metadata check trustworthy between full checks, and a copy
# with fresh mtimes has only its content left to be checked on.
# Exit status non-zero makes hyperfine stop the benchmark. hyperfine does not
# show a cleanup command's output, so with VERIFY_LOG set (run.sh sets it)
# the messages go to that file, which run.sh prints when hyperfine fails.
set -euo pipefail
if [[ -n ${VERIFY_LOG:-} ]]; then
    exec 2>> "$VERIFY_LOG"
fi

if [[ $# -ne 3 && $# -ne 4 ]]; then
    echo "usage: verify.sh SRC DST meta|full|none [KEEP]" >&2
    exit 2
fi
src=$1 dst=$2 mode=$3
keep=${4:-}
if [[ -z $keep ]]; then
    keep=all
    [[ -f $dst.keep ]] && keep=$(< "$dst.keep")
fi
[[ $keep == all ]] && keep=mode,dirmode,mtime,linkmtime

[[ $mode == none ]] && exit 0

has() { [[ ,$keep, == *",$1,"* ]]; }
fmt_f='f' fmt_d='d' fmt_l='l'
for k in ${keep//,/ }; do
    case $k in mode|dirmode|mtime|linkmtime) ;;
        *) echo "verify.sh: unknown KEEP item '$k'" >&2; exit 2 ;;
    esac
done
if [[ $mode == meta ]] && ! has mtime; then mode=full; fi
if has mode; then fmt_f+=' %m'; fi
fmt_f+=' %s'
if has mtime; then fmt_f+=' %T@'; fi
if has dirmode; then fmt_d+=' %m'; fi
if has linkmtime; then fmt_l+=' %T@'; fi

# Directory sizes differ between tmpfs and ext4, so only files get sizes.
# With KEEP=all the listing is 'f MODE SIZE MTIME PATH', 'd MODE PATH',
# 'l MTIME PATH -> TARGET'.
listing() {
    (cd -- "$1" && find . \
        \( -type f -printf "$fmt_f %p\\n" \) -o \
        \( -type d -printf "$fmt_d %p\\n" \) -o \
        \( -type l -printf "$fmt_l %p -> %l\\n" \) -o \
        -printf '%y %m %p\n') | LC_ALL=C sort
}

if [[ ! -d $dst ]]; then
    echo "verify.sh: destination $dst missing" >&2
    exit 1
fi
# Show at most 20 lines of differences; the status is diff's, not head's.
if ! delta=$(diff <(listing "$src") <(listing "$dst") | head -20; exit "${PIPESTATUS[0]}"); then
    echo "verify.sh: $dst differs from $src (type/size/$keep):" >&2
    echo "$delta" >&2
    exit 1
fi
if [[ $mode == full ]] && ! diff -r --no-dereference -q -- "$src" "$dst" >&2; then
    echo "verify.sh: contents of $dst differ from $src" >&2
    exit 1
fi

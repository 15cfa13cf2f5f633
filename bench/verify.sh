#!/usr/bin/env bash
# Runs after a timed run (hyperfine --cleanup), outside the timing:
#
#   verify.sh SRC DST MODE        MODE: meta | full | none
#
# A tool that is fast because it copied the wrong thing must not produce a
# number, so every benchmarked copy is checked:
#   meta  same entries, types, modes; same size and mtime (ns) for files
#   full  meta, plus byte-for-byte content (diff -r)
# Exit status non-zero makes hyperfine stop the benchmark.
set -euo pipefail

if [[ $# -ne 3 ]]; then
    echo "usage: verify.sh SRC DST meta|full|none" >&2
    exit 2
fi
src=$1 dst=$2 mode=$3

[[ $mode == none ]] && exit 0

# Directory sizes differ between tmpfs and ext4, so only files get sizes.
listing() {
    (cd -- "$1" && find . \
        \( -type f -printf 'f %m %s %T@ %p\n' \) -o \
        \( -type d -printf 'd %m %p\n' \) -o \
        \( -type l -printf 'l %T@ %p -> %l\n' \) -o \
        -printf '%y %m %p\n') | LC_ALL=C sort
}

if [[ ! -d $dst ]]; then
    echo "verify.sh: destination $dst missing" >&2
    exit 1
fi
# Show at most 20 lines of differences; the status is diff's, not head's.
if ! delta=$(diff <(listing "$src") <(listing "$dst") | head -20; exit "${PIPESTATUS[0]}"); then
    echo "verify.sh: $dst differs from $src (type/mode/size/mtime):" >&2
    echo "$delta" >&2
    exit 1
fi
if [[ $mode == full ]] && ! diff -r --no-dereference -q -- "$src" "$dst" >&2; then
    echo "verify.sh: contents of $dst differ from $src" >&2
    exit 1
fi

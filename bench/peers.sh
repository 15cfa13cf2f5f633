#!/usr/bin/env bash
# Install the peer copiers benchmarked next to treecopy (BENCH_TOOLS="xcp fcp cpz"
# in run.sh) from crates.io into a private root, outside the repo:
#
#   bench/peers.sh                  # -> $PEERS_ROOT/bin/{xcp,fcp,cpz}
#   PEERS_ROOT=/tmp/peers bench/peers.sh
#
#   PEERS_ROOT   install root [/work/bench-data/peers]
#   PEERS_JOBS   cargo build jobs [cargo's default: all CPUs]; builds run under
#                `nice -n 19` either way, so they yield to anything else
#
# Idempotent: a peer whose binary is already in $PEERS_ROOT/bin at the wanted
# version is skipped. Prints every peer's version at the end.
#
# Crates (checked with `cargo info`; `cargo search` does not work through this
# machine's registry mirror):
#   xcp  crate `xcp`  (github.com/tarka/xcp), binary xcp
#   fcp  crate `fcp`  (github.com/Svetlitski/fcp), binary fcp
#   cpz  crate `cpz`  (github.com/SUPERCILEX/fuc; there is no crate `fuc`,
#        the repo publishes `cpz` and `rmz` over the library `fuc_engine`)
#
# Versions: each peer has a list, tried in order, newest first; the first one
# that builds is kept. What worked with rustc 1.95.0 on Debian 12 (2026-12):
#   xcp 0.24.9   nice -n 19 cargo install --locked --force --root $PEERS_ROOT xcp --version 0.24.9
#   fcp 0.2.2    nice -n 19 cargo install --locked --force --root $PEERS_ROOT fcp --version 0.2.2
#   cpz 3.2.1    nice -n 19 cargo install --locked --force --root $PEERS_ROOT cpz --version 3.2.1
# All three built at their newest version (no fallback was needed), in
# 2 min 12 s together on 2 CPUs (xcp 74 s, cpz 43 s, fcp 13 s).
set -euo pipefail

main() {
    PEERS_ROOT=${PEERS_ROOT:-/work/bench-data/peers}
    local jobs=()
    [[ -z ${PEERS_JOBS:-} ]] || jobs=(-j "$PEERS_JOBS")
    command -v cargo > /dev/null || { echo "peers.sh: cargo not found" >&2; exit 1; }
    mkdir -p "$PEERS_ROOT"

    # crate:binary:version [version ...]
    local peers=(
        "xcp:xcp:0.24.9 0.24.8 0.24.1"
        "fcp:fcp:0.2.2 0.2.1"
        "cpz:cpz:3.2.1 3.2.0 3.1.2"
    )
    local entry crate bin versions v ok failed=() cmd
    for entry in "${peers[@]}"; do
        IFS=: read -r crate bin versions <<< "$entry"
        if [[ -x $PEERS_ROOT/bin/$bin ]] && installed "$crate" "$versions"; then
            echo "peers.sh: $crate already installed in $PEERS_ROOT" >&2
            continue
        fi
        ok=
        for v in $versions; do
            # --force: replace an older version that `installed` did not accept.
            cmd=(nice -n 19 cargo install --locked --force --root "$PEERS_ROOT" "${jobs[@]}"
                "$crate" --version "$v")
            echo "peers.sh: + ${cmd[*]}" >&2
            if "${cmd[@]}"; then
                ok=$v
                break
            fi
            echo "peers.sh: $crate $v did not build, trying the previous version" >&2
        done
        [[ -n $ok ]] || failed+=("$crate")
    done

    echo "peers.sh: installed in $PEERS_ROOT/bin:"
    for entry in "${peers[@]}"; do
        IFS=: read -r crate bin versions <<< "$entry"
        if [[ -x $PEERS_ROOT/bin/$bin ]]; then
            printf '  %-4s %s (crate %s)\n' "$bin" \
                "$("$PEERS_ROOT/bin/$bin" --version 2>&1 | head -1)" "$(crate_version "$crate")"
        else
            printf '  %-4s MISSING\n' "$bin"
        fi
    done
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo "peers.sh: failed to build: ${failed[*]}" >&2
        exit 1
    fi
}

# The version of CRATE recorded in $PEERS_ROOT/.crates.toml by cargo install.
crate_version() {
    cargo install --list --root "$PEERS_ROOT" 2> /dev/null |
        awk -v c="$1" '$1 == c { sub(/^v/, "", $2); sub(/:$/, "", $2); print $2 }'
}

# True if cargo recorded CRATE in $PEERS_ROOT at one of VERSIONS.
installed() {
    local have v
    have=$(crate_version "$1")
    [[ -n $have ]] || return 1
    for v in $2; do
        [[ $have == "$v" ]] && return 0
    done
    return 1
}

main "$@"; exit

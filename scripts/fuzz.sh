#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer); the targets are in fuzz/ (fuzz/README.md).
#
#   scripts/fuzz.sh smoke               every target for FUZZ_SMOKE_SECONDS (5) each, from the
#                                       committed seeds into a throwaway corpus (scripts/test.sh)
#   scripts/fuzz.sh run TARGET SECONDS  one long run, growing fuzz/corpus/TARGET (not committed)
#   scripts/fuzz.sh list                the targets
#
# A crash stops the run with a non-zero exit; libFuzzer writes the input to
# fuzz/artifacts/TARGET/, and `cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...` replays it.
# Needs nightly for cargo-fuzz's -Z flags: the nightly toolchain when rustup has one (unless
# FUZZ_NIGHTLY=0), else the default toolchain with RUSTC_BOOTSTRAP=1. Installs cargo-fuzz
# (pinned) when it is missing. FUZZ_SANITIZER=address builds with AddressSanitizer; the default
# is none: amtgw denies unsafe code (one reviewed OpenSSL call aside) and its C dependencies are
# not instrumented either way, so ASan finds little here, and it slows the build and cuts the
# executions per second about tenfold (fuzz/README.md). Panics, hangs (-timeout) and memory
# growth (-rss_limit_mb) are caught without it.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
TARGETS=(config_toml config_env pin_store admin_request proxy_header http_head)
# libFuzzer's default per-input timeout is 20 minutes; nothing here should take a second.
LIBFUZZER_FLAGS=(-timeout=30 -rss_limit_mb=2048 -print_final_stats=1)
SANITIZER=${FUZZ_SANITIZER:-none}

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

ensure_cargo_fuzz() {
    if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
        echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
    fi
}

# cargo, on a toolchain that accepts -Z flags.
CARGO=(cargo)
choose_toolchain() {
    if [[ "${FUZZ_NIGHTLY:-1}" != 0 ]] && command -v rustup >/dev/null &&
        rustup toolchain list | grep -q '^nightly'; then
        CARGO=(cargo +nightly)
    else
        echo "fuzz: no nightly toolchain; using $(rustc --version) with RUSTC_BOOTSTRAP=1" >&2
        export RUSTC_BOOTSTRAP=1
    fi
}

run_target() { # TARGET SECONDS CORPUS_DIR...
    local target=$1 seconds=$2
    shift 2
    "${CARGO[@]}" fuzz run --sanitizer "$SANITIZER" "$target" "$@" -- -max_total_time="$seconds" "${LIBFUZZER_FLAGS[@]}"
}

[[ $# -ge 1 ]] || usage
case "$1" in
list)
    printf '%s\n' "${TARGETS[@]}"
    ;;
smoke)
    [[ $# -eq 1 ]] || usage
    ensure_cargo_fuzz
    choose_toolchain
    seconds=${FUZZ_SMOKE_SECONDS:-5}
    start=$SECONDS
    "${CARGO[@]}" fuzz build --sanitizer "$SANITIZER"
    built=$SECONDS
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    for target in "${TARGETS[@]}"; do
        mkdir "$scratch/$target"
        # New inputs go to the scratch corpus; the seeds are only read.
        run_target "$target" "$seconds" "$scratch/$target" "fuzz/corpus/$target" 2>"$scratch/$target.log" || {
            tail -n 60 "$scratch/$target.log" >&2
            echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
            exit 1
        }
        echo "fuzz smoke: $target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$scratch/$target.log")"
    done
    echo "fuzz smoke: ${#TARGETS[@]} targets, no crash; build $((built - start)) s, runs $((SECONDS - built)) s"
    ;;
run)
    [[ $# -eq 3 ]] || usage
    target=$2 seconds=$3
    printf '%s\n' "${TARGETS[@]}" | grep -qx "$target" || { echo "fuzz: no target $target" >&2; usage; }
    [[ "$seconds" =~ ^[0-9]+$ ]] || usage
    ensure_cargo_fuzz
    choose_toolchain
    mkdir -p "fuzz/corpus/$target"
    run_target "$target" "$seconds" "fuzz/corpus/$target"
    ;;
*)
    usage
    ;;
esac

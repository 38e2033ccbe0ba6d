#!/usr/bin/env bash
# The project's test command (README quick start; CI runs exactly this after fmt and clippy).
# Installs what the build, the tests and the benchmark smoke need and is missing (by program,
# never upgrading anything: the three scripts below list what and from which package), then
# runs every test of both packages (amtgw and the simulator, amtgw-sim); `--all-targets` also
# runs each benchmark once as a smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-build-deps.sh
scripts/install-test-deps.sh
benches/install-peers.sh   # stunnel4, haproxy, nginx for the benchmark smoke
cargo test --locked --workspace --all-targets "$@"
# Every fuzz target for a few seconds from its seeds (fuzz/README.md); FUZZ_SMOKE=0 skips it.
if [[ "${FUZZ_SMOKE:-1}" != 0 ]]; then
    scripts/fuzz.sh smoke
fi

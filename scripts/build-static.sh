#!/usr/bin/env bash
# Builds the binary the container image ships, and stages what the image copies: OUT/amtgw,
# statically linked (glibc, and Debian's OpenSSL for the legacy TLS backend), without the
# `sim` feature (no simulator, no `amtgw demo`, no demo password); and OUT/state, the empty
# directory that becomes the image's /var/lib/amtgw (the pin store's volume).
#
# The Dockerfile's builder stage runs this script, and so does scripts/container-build.sh on
# the host: the binary users build and the one the tests prove come from the same commands.
#
# Usage: scripts/build-static.sh OUT
# Environment: CARGO_TARGET_DIR (default: <repo>/target/static; kept apart from the usual
# target dir, since the crt-static RUSTFLAGS would invalidate the dev build cache),
# AMTGW_STATIC_PROFILE (default: release).
set -euo pipefail

out="${1:?usage: $0 OUT}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile="${AMTGW_STATIC_PROFILE:-release}"
target_dir="${CARGO_TARGET_DIR:-$repo/target/static}"
# --target is required: with it RUSTFLAGS apply only to the target's artifacts, not to build
# scripts and proc macros, which cannot be linked statically.
triple="$(rustc -vV | sed -n 's/^host: //p')"
die() { printf 'build-static: %s\n' "$*" >&2; exit 1; }

(
    cd "$repo"
    # A static binary cannot load libssl.so: OPENSSL_STATIC links libssl.a and libcrypto.a.
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
        CARGO_TARGET_DIR="$target_dir" OPENSSL_STATIC=1 \
        cargo build --profile "$profile" --locked --target "$triple" --bin amtgw \
        --no-default-features --features legacy-tls
)
profile_dir="$profile"
[[ "$profile" == dev ]] && profile_dir=debug
bin="$target_dir/$triple/$profile_dir/amtgw"
[[ -x "$bin" ]] || die "no binary at $bin"

if "$bin" demo --help >/dev/null 2>&1; then
    die "$bin has \`amtgw demo\`: it was built with the sim feature"
fi
# `file` and `readelf` are on the host (scripts/container-build.sh installs them), not
# necessarily in a builder image; the kernel refusing to run a dynamic binary in a FROM
# scratch image would be the later, clearer proof there.
if command -v file >/dev/null; then
    file "$bin" | grep -Eq 'statically linked|static-pie linked' || die "$bin is not statically linked: $(file "$bin")"
fi
if command -v readelf >/dev/null && readelf -d "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    die "$bin needs shared libraries: $(readelf -d "$bin" | grep '(NEEDED)')"
fi

mkdir -p "$out"
install -m 0755 "$bin" "$out/amtgw"
install -d -m 0700 "$out/state"
echo "build-static: $("$out/amtgw" --version), static, staged in $out"

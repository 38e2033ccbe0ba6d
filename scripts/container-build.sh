#!/usr/bin/env bash
# Builds the amtgw container image (see Dockerfile) and proves it: a statically linked glibc
# binary built on the host without the `sim` feature (no simulator, no `amtgw demo`, no demo
# password), copied into a FROM scratch image with `podman build --isolation chroot` (no
# container engine daemon, no base image pulled from a registry), then `amtgw --version` run
# from the image.
#
# Usage: scripts/container-build.sh            (from anywhere; paths are relative to the repo)
# Environment:
#   AMTGW_STATIC_TARGET_DIR  cargo target dir for the static build. Default: <repo>/target/static.
#                            Kept apart from the usual target dir: the crt-static RUSTFLAGS
#                            would otherwise invalidate the dev build cache.
#   IMAGE                    image name. Default: amtgw (tagged amtgw:<version of the binary>).
#   PODMAN                   podman command. Default: podman.
#   PODMAN_STORAGE_DRIVER    e.g. vfs, where overlay is unavailable (passed as --storage-driver;
#                            no global storage.conf is edited).
#   SKIP_CARGO=1             reuse the binary already in the target dir instead of building.
#
# Proving the image: first a plain `podman run --rm <image> --version`. Where the sandbox cannot
# run containers that way, it falls back, saying so, to (1) runc with explicit rlimits (crun
# 1.8 refuses hosts with a hybrid cgroup v1/v2 layout; without CAP_SYS_RESOURCE podman's
# default nofile/nproc limits cannot be set), then (2) running /amtgw from the mounted image
# with the host kernel, outside any container. Exit status 0 only if one of them printed
# "amtgw <version>".
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
triple=x86_64-unknown-linux-gnu
target_dir="${AMTGW_STATIC_TARGET_DIR:-$repo/target/static}"
image="${IMAGE:-amtgw}"
read -r -a podman <<<"${PODMAN:-podman}"
if [[ -n "${PODMAN_STORAGE_DRIVER:-}" ]]; then
    podman+=(--storage-driver "$PODMAN_STORAGE_DRIVER")
fi

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# 0. The tools, from Debian, when missing: podman builds the image; runc runs it where crun
# cannot (see above); file and binutils check that the binary is static.
"$repo/scripts/apt-install.sh" podman runc file binutils libssl-dev pkg-config

# 1. The static binary. --target is required: with it RUSTFLAGS apply only to the target
# artifacts, not to build scripts and proc macros, which cannot be linked statically.
bin="$target_dir/$triple/release/amtgw"
if [[ "${SKIP_CARGO:-0}" != 1 ]]; then
    step "cargo build (static glibc) into $target_dir"
    (
        cd "$repo"
        # The legacy TLS backend links Debian's OpenSSL statically (libssl.a, libcrypto.a from
        # libssl-dev): a static binary cannot load libssl.so.
        RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
            CARGO_TARGET_DIR="$target_dir" OPENSSL_STATIC=1 \
            cargo build --release --locked --target "$triple" --bin amtgw \
            --no-default-features --features legacy-tls
    )
fi
[[ -x "$bin" ]] || die "no binary at $bin"

step "checking that $bin carries no simulator"
if "$bin" demo --help >/dev/null 2>&1; then
    die "$bin has \`amtgw demo\`: it was built with the sim feature"
fi

step "checking that $bin is static"
if command -v file >/dev/null; then
    file "$bin" >&2
    file "$bin" | grep -Eq 'statically linked|static-pie linked' || die "$bin is not statically linked"
fi
if command -v readelf >/dev/null && readelf -d "$bin" 2>/dev/null | grep -q '(NEEDED)'; then
    readelf -d "$bin" | grep '(NEEDED)' >&2
    die "$bin needs shared libraries"
fi
ldd "$bin" >&2 || true # "not a dynamic executable" / "statically linked": exits 1, fine

version_line="$("$bin" --version)"
version="${version_line##* }"
[[ "$version_line" == "amtgw $version" && -n "$version" ]] || die "unexpected --version output: $version_line"
tag="$image:$version"

# 2. A context directory holding only what the Dockerfile copies.
context="$(mktemp -d "${TMPDIR:-/tmp}/amtgw-context.XXXXXX")"
trap 'rm -rf "$context"' EXIT
cp "$bin" "$context/amtgw"
cp "$repo/.dockerignore" "$context/.dockerignore"
step "build context $context ($(du -sh "$context" | cut -f1)):"
ls -la "$context" >&2

# 3. The image.
step "${podman[*]} build --isolation chroot -t $tag"
"${podman[@]}" build --isolation chroot -t "$tag" -f "$repo/Dockerfile" "$context"
"${podman[@]}" images "$tag" >&2
"${podman[@]}" image inspect "$tag" \
    --format 'size {{.Size}} bytes; user {{.Config.User}}; entrypoint {{.Config.Entrypoint}}; cmd {{.Config.Cmd}}; ports {{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' >&2

# 4. Proof that the binary in the image runs.
proved() {
    printf '\nOK: %s (%s)\n' "$1" "$2"
    exit 0
}
try_run() { # try_run <description> <podman args...>: succeeds if the output is the version line
    local description=$1 out
    shift
    step "$description: ${podman[*]} $*"
    if out="$("${podman[@]}" "$@" 2>&1)" && [[ "$out" == *"$version_line"* ]]; then
        printf '%s\n' "$out"
        proved "$description" "$version_line"
    fi
    printf 'did not work: %s\n' "$out" >&2
    return 0
}

try_run "podman run" run --rm "$tag" --version

nofile="$(ulimit -Hn)"
[[ "$nofile" == unlimited || "$nofile" -gt 1048576 ]] && nofile=1048576
limits=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)
try_run "podman run with explicit rlimits" run --rm "${limits[@]}" "$tag" --version
if command -v runc >/dev/null; then
    try_run "podman run under runc with explicit rlimits" --runtime "$(command -v runc)" run --rm "${limits[@]}" "$tag" --version
fi

step "fallback: no container could be started; running /amtgw from the mounted image with the host kernel"
mnt="$("${podman[@]}" image mount "$tag")"
out="$("$mnt/amtgw" --version 2>&1)" || true
"${podman[@]}" image unmount "$tag" >/dev/null || true
printf '%s\n' "$out"
[[ "$out" == "$version_line" ]] || die "the binary in the image did not run: $out"
printf '\nPARTLY PROVED: the image builds and its /amtgw runs (%s), but NOT inside a container.\n' "$out"

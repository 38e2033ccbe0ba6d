#!/usr/bin/env bash
# Builds the amtgw container image from the Dockerfile's shipped stage, without a registry: the
# static binary is built on the host by scripts/build-static.sh (the commands the Dockerfile's
# builder stage runs), staged with the empty state directory as the build context, and handed to
# the `prebuilt` stage (`--build-arg AMTGW_BINARY=prebuilt`) of `podman build --isolation chroot`
# (no daemon, no base image pulled). Prints the image's tag as the last line on stdout.
#
# Proving the image is tests/container.rs's job (the test script runs it): podman cannot run
# containers on every machine (crun refuses hybrid cgroup layouts, rlimits need
# CAP_SYS_RESOURCE), so it runs the image's own filesystem, user and environment in a chroot
# against the simulator. Here only a quick check: the image's /amtgw prints its version.
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
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
triple="$(rustc -vV | sed -n 's/^host: //p')"
target_dir="${AMTGW_STATIC_TARGET_DIR:-$repo/target/static}"
image="${IMAGE:-amtgw}"
read -r -a podman <<<"${PODMAN:-podman}"
if [[ -n "${PODMAN_STORAGE_DRIVER:-}" ]]; then
    podman+=(--storage-driver "$PODMAN_STORAGE_DRIVER")
fi

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# 0. The tools, from Debian, when missing: podman builds the image; file and binutils check
# that the binary is static; OpenSSL's static libraries for the legacy backend.
"$repo/scripts/apt-install.sh" podman=podman file=file readelf=binutils libssl-dev pkg-config=pkg-config

# 1. The static binary and the state directory, staged as the build context.
context="$(mktemp -d "${TMPDIR:-/tmp}/amtgw-context.XXXXXX")"
trap 'rm -rf "$context"' EXIT
if [[ "${SKIP_CARGO:-0}" == 1 ]]; then
    [[ -x "$target_dir/$triple/release/amtgw" ]] || die "SKIP_CARGO=1 but no binary in $target_dir"
    install -m 0755 "$target_dir/$triple/release/amtgw" "$context/amtgw"
    install -d -m 0700 "$context/state"
else
    step "scripts/build-static.sh (static glibc, release) into $target_dir"
    CARGO_TARGET_DIR="$target_dir" "$repo/scripts/build-static.sh" "$context"
fi
bin="$context/amtgw"
file "$bin" >&2
ldd "$bin" >&2 || true # "not a dynamic executable" / "statically linked": exits 1, fine

version_line="$("$bin" --version)"
version="${version_line##* }"
[[ "$version_line" == "amtgw $version" && -n "$version" ]] || die "unexpected --version output: $version_line"
tag="$image:$version"

step "build context $context ($(du -sh "$context" | cut -f1)):"
ls -la "$context" >&2

# 3. The image.
step "${podman[*]} build --isolation chroot --build-arg AMTGW_BINARY=prebuilt -t $tag"
# The docker format keeps HEALTHCHECK (OCI images have no field for it).
"${podman[@]}" build --isolation chroot --format docker --build-arg AMTGW_BINARY=prebuilt \
    --build-arg VERSION="$version" -t "$tag" -f "$repo/Dockerfile" "$context"
"${podman[@]}" images "$tag" >&2
"${podman[@]}" image inspect "$tag" \
    --format 'size {{.Size}} bytes; user {{.Config.User}}; entrypoint {{.Config.Entrypoint}}; cmd {{.Config.Cmd}}; ports {{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' >&2

# 4. The image's binary runs (the chroot test in tests/container.rs proves the rest).
mnt="$("${podman[@]}" image mount "$tag")"
out="$("$mnt/amtgw" --version 2>&1)" || true
"${podman[@]}" image unmount "$tag" >/dev/null || true
[[ "$out" == "$version_line" ]] || die "the image's /amtgw did not run: $out"
step "built $tag: /amtgw in it prints \"$out\""
echo "$tag"

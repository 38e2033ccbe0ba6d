#!/usr/bin/env bash
# Installs the given Debian packages if they are missing; shared by the scripts that set up
# what the tests and benchmarks drive. Idempotent and non-interactive: installed packages are
# skipped and `apt-get update` runs only when something is missing. Run as root (CI) or with
# sudo available.
#
# Usage: scripts/apt-install.sh PACKAGE...
set -euo pipefail

missing=()
for pkg in "$@"; do
  # `dpkg -s` also succeeds for removed-but-not-purged packages ("Status: deinstall ok
  # config-files"), so check the status line, not the exit code. Captured first:
  # `dpkg -s | grep -q` could die of SIGPIPE under pipefail.
  info="$(dpkg -s "$pkg" 2>/dev/null || true)"
  if ! grep -qx 'Status: install ok installed' <<<"$info"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "apt-install: all present: $*"
  exit 0
fi

if ((EUID == 0)); then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo --non-interactive)
else
  echo "apt-install: missing ${missing[*]}; run as root or install sudo" >&2
  exit 1
fi

echo "apt-install: installing ${missing[*]}"
# Debian may start packaged services (nginx on :80, haproxy): harmless, the tests and the
# benchmark start their own instances on free 127.0.0.1 ports.
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null

#!/usr/bin/env bash
# Installs the Debian packages the interop tests (tests/interop.rs) drive as
# real, unmodified clients: curl (WS-Man/HTTP digest), amtterm (SOL over the
# redirection protocol), script from bsdutils (gives amtterm the terminal it
# insists on) and stunnel4 (an independent TLS client for the simulator).
#
# Idempotent and non-interactive: packages already installed are skipped, and
# `apt-get update` runs only when something is missing. Run as root (CI) or
# with sudo available.
#
# Usage: scripts/install-test-deps.sh
set -euo pipefail

packages=(curl amtterm stunnel4 bsdutils)

missing=()
for pkg in "${packages[@]}"; do
  # `dpkg -s` also succeeds for removed-but-not-purged packages ("Status:
  # deinstall ok config-files"), so check the status line, not the exit code.
  # Captured first: `dpkg -s | grep -q` could die of SIGPIPE under pipefail.
  info="$(dpkg -s "$pkg" 2>/dev/null || true)"
  if ! grep -qx 'Status: install ok installed' <<<"$info"; then
    missing+=("$pkg")
  fi
done

# Fail loudly if a package is installed but the program the tests spawn is
# still not on PATH (Debian names the stunnel binary stunnel4; others stunnel).
check_programs() {
  local program
  for program in curl amtterm script; do
    if ! command -v "$program" >/dev/null 2>&1; then
      echo "install-test-deps: $program not found on PATH" >&2
      return 1
    fi
  done
  if ! command -v stunnel4 >/dev/null 2>&1 && ! command -v stunnel >/dev/null 2>&1; then
    echo "install-test-deps: neither stunnel4 nor stunnel found on PATH" >&2
    return 1
  fi
}

if ((${#missing[@]} == 0)); then
  check_programs
  echo "install-test-deps: all present: ${packages[*]}"
  exit 0
fi

if ((EUID == 0)); then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo --non-interactive)
else
  echo "install-test-deps: missing ${missing[*]}; run as root or install sudo" >&2
  exit 1
fi

echo "install-test-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null

check_programs
echo "install-test-deps: done"

#!/usr/bin/env bash
# Installs what building amtgw needs from Debian, when it is missing (never upgrading anything:
# scripts/apt-install.sh):
#   pkg-config   the program, which openssl-sys uses to find OpenSSL
#   libssl-dev   OpenSSL's headers and libraries for the legacy TLS backend (also the static
#                libraries the container image links); looked for as pkg-config's `openssl`
#                module, so an OpenSSL installed otherwise (OPENSSL_DIR, another package) counts
# .ci/run calls it before clippy, scripts/test.sh before the tests.
#
# Usage: scripts/install-build-deps.sh
set -euo pipefail
wanted=(pkg-config=pkg-config)
if [[ -z "${OPENSSL_DIR:-}" ]] && ! pkg-config --exists openssl 2>/dev/null; then
  wanted+=(libssl-dev)
fi
"$(dirname "$0")/apt-install.sh" "${wanted[@]}"

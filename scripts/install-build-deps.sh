#!/usr/bin/env bash
# Installs the Debian packages needed to build amtgw at all: OpenSSL's headers and libraries for
# the legacy TLS backend (openssl-sys; libssl-dev also carries the static libraries the
# container image links) and pkg-config, which openssl-sys uses to find them. .ci/run calls it
# before clippy, scripts/test.sh before the tests.
#
# Usage: scripts/install-build-deps.sh
set -euo pipefail
"$(dirname "$0")/apt-install.sh" libssl-dev pkg-config

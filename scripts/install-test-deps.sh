#!/usr/bin/env bash
# Installs the Debian packages the interop tests (tests/interop.rs) drive as
# real, unmodified clients: curl (WS-Man/HTTP digest), amtterm (SOL over the
# redirection protocol), script from bsdutils (gives amtterm the terminal it
# insists on), stunnel4 (an independent TLS client for the simulator) and the
# openssl command (s_client), which the simulator's profile tests run; PostgreSQL
# (tests/shared_pin_store.rs starts its own servers from /usr/lib/postgresql/*/bin in
# temporary directories, never the packaged service); and for the transparent-routing tests
# (tests/transparent.rs), which build network namespaces, `ip` (iproute2) and `nft`
# (nftables), installed only when the program is missing; HAProxy, the load balancer in front
# of amtgw in tests/proxy_protocol.rs (send-proxy-v2), likewise; and kubernetes-validate from
# PyPI (tests/kubernetes.rs validates deploy/kubernetes/ with it, offline), in a virtualenv of
# its own (scripts/install-kubernetes-validate.sh). What the build itself needs (OpenSSL's
# development files) is scripts/install-build-deps.sh.
#
# Idempotent and non-interactive (scripts/apt-install.sh). Run as root (CI) or
# with sudo available.
#
# Usage: scripts/install-test-deps.sh
set -euo pipefail

"$(dirname "$0")/apt-install.sh" curl amtterm stunnel4 bsdutils openssl

# PostgreSQL: the server binaries, whichever major version Debian ships. Installed only when no
# version is there. Debian's package would create and start a "main" cluster; the tests need
# none, so tell postgresql-common not to create it (the tests run their own servers).
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  "$(dirname "$0")/apt-install.sh" postgresql-common
  as_root=()
  ((EUID == 0)) || as_root=(sudo --non-interactive)
  "${as_root[@]}" mkdir -p /etc/postgresql-common/createcluster.d
  echo 'create_main_cluster = false' |
    "${as_root[@]}" tee /etc/postgresql-common/createcluster.d/amtgw-tests.conf >/dev/null
  "$(dirname "$0")/apt-install.sh" postgresql
fi

# By program: a host may have them from elsewhere (iptables-nft setups, a newer iproute2).
for pair in ip:iproute2 nft:nftables haproxy:haproxy; do
  if ! command -v "${pair%%:*}" >/dev/null 2>&1; then
    "$(dirname "$0")/apt-install.sh" "${pair#*:}"
  fi
done

# Python packages never go into the system's Python: a venv under the user's cache.
"$(dirname "$0")/install-kubernetes-validate.sh"

# Fail loudly if a package is installed but the program the tests spawn is still not on PATH
# (Debian names the stunnel binary stunnel4; others stunnel).
for program in curl amtterm script openssl ip nft haproxy; do
  if ! command -v "$program" >/dev/null 2>&1; then
    echo "install-test-deps: $program not found on PATH" >&2
    exit 1
  fi
done
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  echo "install-test-deps: no /usr/lib/postgresql/*/bin/initdb after installing postgresql" >&2
  exit 1
fi
if ! command -v stunnel4 >/dev/null 2>&1 && ! command -v stunnel >/dev/null 2>&1; then
  echo "install-test-deps: neither stunnel4 nor stunnel found on PATH" >&2
  exit 1
fi

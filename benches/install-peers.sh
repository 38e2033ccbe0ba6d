#!/usr/bin/env bash
# Installs the Debian packages the end-to-end benchmark (benches/e2e/) compares amtgw with:
# stunnel4 (client mode), HAProxy (mode tcp, ssl verify required) and nginx with the stream
# module (proxy_ssl_verify). prlimit (util-linux) raises the descriptor limit for the idle-
# connection figure.
#
# Idempotent and non-interactive (scripts/apt-install.sh). Run as root or with sudo available.
#
# Usage: benches/install-peers.sh && cargo bench --bench e2e
set -euo pipefail

"$(dirname "$0")/../scripts/apt-install.sh" stunnel4 haproxy nginx-light libnginx-mod-stream util-linux

ok=0
if ! command -v stunnel4 >/dev/null 2>&1 && ! command -v stunnel >/dev/null 2>&1; then
  echo "install-peers: neither stunnel4 nor stunnel found" >&2
  ok=1
fi
for program in haproxy nginx prlimit; do
  if ! command -v "$program" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$program" ]]; then
    echo "install-peers: $program not found" >&2
    ok=1
  fi
done
if [[ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]]; then
  echo "install-peers: /usr/lib/nginx/modules/ngx_stream_module.so missing (libnginx-mod-stream)" >&2
  ok=1
fi
exit "$ok"

#!/usr/bin/env bash
# Installs the Debian packages the end-to-end benchmark (benches/e2e.rs) compares amtgw with:
# stunnel4 (client mode), HAProxy (mode tcp, ssl verify required) and nginx with the stream
# module (proxy_ssl_verify). prlimit (util-linux) raises the descriptor limit for the idle-
# connection figure.
#
# Idempotent and non-interactive, like scripts/install-test-deps.sh: packages already
# installed are skipped, and `apt-get update` runs only when something is missing. Run as root
# or with sudo available.
#
# Usage: benches/install-peers.sh && cargo bench --bench e2e
set -euo pipefail

packages=(stunnel4 haproxy nginx-light libnginx-mod-stream util-linux)

missing=()
for pkg in "${packages[@]}"; do
  # `dpkg -s` also succeeds for removed-but-not-purged packages, so check the status line.
  info="$(dpkg -s "$pkg" 2>/dev/null || true)"
  if ! grep -qx 'Status: install ok installed' <<<"$info"; then
    missing+=("$pkg")
  fi
done

check_programs() {
  local ok=0
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
  return "$ok"
}

if ((${#missing[@]} == 0)); then
  check_programs
  echo "install-peers: all present: ${packages[*]}"
  exit 0
fi

if ((EUID == 0)); then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo --non-interactive)
else
  echo "install-peers: missing ${missing[*]}; run as root or install sudo" >&2
  exit 1
fi

echo "install-peers: installing ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
# Debian may start the packaged services (nginx on :80, haproxy): harmless, the benchmark
# starts its own instances with temporary configurations on free 127.0.0.1 ports.
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null

check_programs
echo "install-peers: done"

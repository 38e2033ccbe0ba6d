#!/usr/bin/env bash
# Installs, from Debian, the proxies the end-to-end benchmark (benches/e2e/) compares amtgw
# with, each only when no such program is there, never upgrading anything
# (scripts/apt-install.sh). Program, and the package installed when it is missing:
#   stunnel4|stunnel  stunnel4     client mode
#   haproxy           haproxy      mode tcp, ssl verify required
#   prlimit           util-linux   raises the descriptor limit for the idle-connection figure
#   nginx             nginx, and libnginx-mod-stream unless the nginx found has the stream
#                     module (compiled in, `nginx -V` saying --with-stream, or Debian's
#                     loadable module already there): proxy_ssl_verify
# A peer that cannot be installed without upgrading something is left out with a warning;
# the benchmark skips a column whose program is missing.
#
# Idempotent and non-interactive. Run as root or with sudo available.
#
# Usage: benches/install-peers.sh && cargo bench --bench e2e
set -euo pipefail
apt_install="$(dirname "$0")/../scripts/apt-install.sh"

for wanted in 'stunnel4|stunnel=stunnel4' haproxy=haproxy prlimit=util-linux; do
  "$apt_install" "$wanted" || echo "install-peers: ${wanted#*=} not installed; its column is skipped" >&2
done

nginx_path() {
  command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; }
}
# 0 if this nginx has the stream module, compiled in or loadable from Debian's package.
has_stream() {
  local flags
  flags="$("$1" -V 2>&1 | tr ' ' '\n')"
  grep -qx -- '--with-stream' <<<"$flags" ||
    { grep -qx -- '--with-stream=dynamic' <<<"$flags" &&
      [[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]]; }
}

nginx="$(nginx_path || true)"
if [[ -z "$nginx" ]]; then
  "$apt_install" nginx libnginx-mod-stream || echo "install-peers: nginx not installed; its column is skipped" >&2
elif ! has_stream "$nginx"; then
  if dpkg -S "$(readlink -f "$nginx")" >/dev/null 2>&1; then
    # Debian's nginx, built --with-stream=dynamic: add its module package.
    "$apt_install" libnginx-mod-stream || echo "install-peers: libnginx-mod-stream not installed; the nginx column is skipped" >&2
  else
    echo "install-peers: $nginx has no stream module and is not Debian's; the nginx column is skipped" >&2
  fi
fi

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
nginx="$(nginx_path || true)"
if [[ -n "$nginx" ]] && ! has_stream "$nginx"; then
  echo "install-peers: $nginx has no stream module" >&2
  ok=1
fi
exit "$ok"

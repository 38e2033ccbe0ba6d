#!/usr/bin/env bash
# Sends the two WS-Man requests in scripts/wsman/ with curl: a WS-Identify
# (no authentication) and a digest-authenticated Get of AMT_GeneralSettings.
#
# Usage: scripts/try-wsman.sh [host] [port]
# Environment (arguments win over environment, environment over defaults):
#   AMT_HOST      default 127.0.0.1
#   AMT_PORT      default 16992 (amtgw's plain-TCP WS-Man listener)
#   AMT_USER      default admin
#   AMT_PASSWORD  default P@ssw0rd-demo1 (the simulator's demo password)
#   AMT_SCHEME    http (default) or https; https skips certificate checks,
#                 since AMT serves a self-signed certificate: for trying only
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
host="${1:-${AMT_HOST:-127.0.0.1}}"
port="${2:-${AMT_PORT:-16992}}"
user="${AMT_USER:-admin}"
password="${AMT_PASSWORD:-P@ssw0rd-demo1}"
scheme="${AMT_SCHEME:-http}"
url="${scheme}://${host}:${port}/wsman"

curl_opts=(--silent --show-error --fail-with-body
  --header 'Content-Type: application/soap+xml;charset=UTF-8')
if [[ "$scheme" == https ]]; then
  curl_opts+=(--insecure)
fi

echo "==> WS-Identify, no authentication: POST $url"
curl "${curl_opts[@]}" --data-binary "@${here}/wsman/identify.xml" "$url"
echo
echo

echo "==> Get AMT_GeneralSettings, HTTP digest as '${user}': POST $url"
# Credentials go through a curl config on stdin so the password does not
# show up in the process list.
esc() { local s="${1//\\/\\\\}"; printf '%s' "${s//\"/\\\"}"; }
printf 'user = "%s:%s"\n' "$(esc "$user")" "$(esc "$password")" |
  curl "${curl_opts[@]}" --config - --digest \
    --data-binary "@${here}/wsman/get-general-settings.xml" "$url"
echo

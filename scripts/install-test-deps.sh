#!/usr/bin/env bash
# Installs, from Debian, each program the tests drive that is not already there (looked for by
# program, never upgrading anything: scripts/apt-install.sh). Program, and the package
# installed when it is missing:
#   curl             curl        WS-Man/HTTP digest client (tests/interop.rs, demo, ...)
#   amtterm          amtterm     serial-over-LAN client
#   script           bsdutils    gives amtterm the terminal it insists on
#   stunnel4|stunnel stunnel4    an independent TLS client for the simulator
#   openssl          openssl     s_client, which the simulator's profile tests run
#   initdb           postgresql  /usr/lib/postgresql/*/bin (tests/shared_pin_store.rs starts
#                                its own servers in temporary directories, never the service)
#   ip               iproute2    network namespaces (tests/transparent.rs)
#   nft              nftables    the transparent-routing rules
#   systemd-analyze  systemd     `systemd-analyze verify` of deploy/systemd (tests/systemd.rs)
#   promtool         prometheus  checks deploy/prometheus's rules (tests/monitoring.rs)
#   haproxy          haproxy     the load balancer in front of amtgw (tests/proxy_protocol.rs)
#   podman           podman      builds the container image (tests/container.rs runs
#                                scripts/container-build.sh); apt may want to move login and
#                                passwd to a newer point release for it: they are kept
#   file, readelf    file, binutils  check that the image's binary is static
#   chromium         chromium    headless, renders the admin status page (tests/status_page.rs)
#   vncsnapshot      vncsnapshot a VNC client (RFB 3.3) that screenshots KVM through the VNC
#                                bridge (tests/vnc_bridge.rs)
# and from PyPI, each in a virtualenv of its own: kubernetes-validate (tests/kubernetes.rs
# validates deploy/kubernetes/ with it, offline; scripts/install-kubernetes-validate.sh) and the
# `amt` package's amtctrl, a WS-Man console (tests/console_clients.rs;
# scripts/install-amt-client.sh).
# What the build itself needs (OpenSSL's development files) is scripts/install-build-deps.sh.
#
# Idempotent and non-interactive. Run as root (CI) or with sudo available.
#
# Usage: scripts/install-test-deps.sh
set -euo pipefail

"$(dirname "$0")/apt-install.sh" curl=curl amtterm=amtterm 'stunnel4|stunnel=stunnel4' \
  script=bsdutils openssl=openssl ip=iproute2 nft=nftables systemd-analyze=systemd \
  promtool=prometheus haproxy=haproxy podman=podman file=file readelf=binutils \
  chromium=chromium vncsnapshot=vncsnapshot

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

# Python packages never go into the system's Python: a venv under the user's cache.
"$(dirname "$0")/install-kubernetes-validate.sh"
"$(dirname "$0")/install-amt-client.sh"

# Fail loudly if a package is installed but the program the tests spawn is still not on PATH
# (Debian names the stunnel binary stunnel4; others stunnel).
for program in curl amtterm script openssl ip nft systemd-analyze promtool haproxy podman file \
  readelf chromium vncsnapshot; do
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

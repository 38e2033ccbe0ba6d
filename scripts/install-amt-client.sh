#!/usr/bin/env bash
# Installs the PyPI `amt` package (Sean Dague's, derived from OpenStack Ironic's AMT driver):
# its `amtctrl` command and `amt.client.Client` are a WS-Management console nobody here wrote.
# It goes into a virtualenv of its own:
#   ${AMTGW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amtgw-tools}/amt
# tests/console_clients.rs runs bin/amtctrl from there (or $AMTCTRL) through amtgw to the
# simulated device: power status, off, on, cycle, PXE next boot, KVM status and enabling.
#
# Idempotent: nothing is done when the pinned version is already there. Needs python3 with
# venv and ensurepip (Debian: python3-venv, installed through scripts/apt-install.sh when
# missing) and PyPI. The package is pure Python (requests, six, appdirs) and runs unchanged on
# Python 3.11 and later.
#
# Usage: scripts/install-amt-client.sh
set -euo pipefail

version=0.8.0
venv="${AMTGW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amtgw-tools}/amt"

if [[ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("amt"))' 2>/dev/null || true)" == "$version" ]] &&
  [[ -x "$venv/bin/amtctrl" ]]; then
  echo "install-amt-client: amt $version present in $venv"
  exit 0
fi

if ! command -v python3 >/dev/null 2>&1; then
  "$(dirname "$0")/apt-install.sh" python3
fi
# Debian splits venv and ensurepip out of python3 into python3-venv.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  "$(dirname "$0")/apt-install.sh" python3-venv
fi

rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "amt==$version"
"$venv/bin/python" -c 'import importlib.metadata as m; print("amt", m.version("amt"))'

#!/usr/bin/env bash
# Installs one pinned PyPI package into a virtualenv of its own (never the system's Python):
#   ${AMTGW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amtgw-tools}/NAME
# and checks that bin/PROGRAM is there. Shared by the scripts that pin a Python tool the tests
# drive (install-kubernetes-validate.sh, install-amt-client.sh).
#
# Idempotent: nothing is done when PACKAGE==VERSION and bin/PROGRAM are already there. Needs
# python3 with venv and ensurepip (Debian: python3-venv, installed through
# scripts/apt-install.sh when missing) and PyPI.
#
# Usage: scripts/install-pypi-tool.sh NAME PACKAGE VERSION PROGRAM
set -euo pipefail

[[ $# -eq 4 ]] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
name=$1 package=$2 version=$3 program=$4
venv="${AMTGW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amtgw-tools}/$name"
installed() {
  "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$package'))" 2>/dev/null || true
}

if [[ "$(installed)" == "$version" && -x "$venv/bin/$program" ]]; then
  echo "install-pypi-tool: $package $version present in $venv"
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
"$venv/bin/pip" install --quiet --disable-pip-version-check "$package==$version"
[[ -x "$venv/bin/$program" ]] || { echo "install-pypi-tool: no $venv/bin/$program after installing $package" >&2; exit 1; }
echo "install-pypi-tool: $package $(installed) installed in $venv"

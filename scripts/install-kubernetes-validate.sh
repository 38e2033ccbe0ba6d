#!/usr/bin/env bash
# Installs kubernetes-validate (PyPI), which validates Kubernetes manifests offline against the
# JSON schemas it bundles, into a virtualenv of its own:
#   ${AMTGW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amtgw-tools}/kubernetes-validate
# tests/kubernetes.rs runs bin/kubernetes-validate from there (or $KUBERNETES_VALIDATE) on
# every manifest of deploy/kubernetes/, strictly, for Kubernetes 1.33 and 1.37 (the versions
# the README states; the pinned release bundles schemas for 1.25 to 1.37).
#
# Idempotent: nothing is done when the pinned version is already there. Needs python3 with
# venv and ensurepip (Debian: python3-venv, installed through scripts/apt-install.sh when
# missing) and PyPI.
#
# Usage: scripts/install-kubernetes-validate.sh
set -euo pipefail

version=1.37.0
venv="${AMTGW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amtgw-tools}/kubernetes-validate"

if [[ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null || true)" == *"$version"* ]]; then
  echo "install-kubernetes-validate: $version present in $venv"
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
"$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version"
"$venv/bin/kubernetes-validate" --version

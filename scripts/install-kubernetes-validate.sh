#!/usr/bin/env bash
# Installs kubernetes-validate (PyPI), which validates Kubernetes manifests offline against the
# JSON schemas it bundles, into a virtualenv of its own:
#   ${AMTGW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amtgw-tools}/kubernetes-validate
# tests/kubernetes.rs runs bin/kubernetes-validate from there (or $KUBERNETES_VALIDATE) on
# every manifest of deploy/kubernetes/, strictly, for Kubernetes 1.33 and 1.37 (the versions
# the README states; the pinned release bundles schemas for 1.25 to 1.37).
#
# Idempotent, through scripts/install-pypi-tool.sh (the venv scheme and what it needs).
#
# Usage: scripts/install-kubernetes-validate.sh
set -euo pipefail

exec "$(dirname "$0")/install-pypi-tool.sh" kubernetes-validate kubernetes-validate 1.37.0 kubernetes-validate

#!/usr/bin/env bash
# Installs the PyPI `amt` package (Sean Dague's, derived from OpenStack Ironic's AMT driver):
# its `amtctrl` command and `amt.client.Client` are a WS-Management console nobody here wrote.
# It goes into a virtualenv of its own:
#   ${AMTGW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amtgw-tools}/amt
# tests/console_clients.rs runs bin/amtctrl from there (or $AMTCTRL) through amtgw to the
# simulated device: power status, off, on, cycle, PXE next boot, KVM status and enabling.
#
# Idempotent, through scripts/install-pypi-tool.sh (the venv scheme and what it needs). The
# package is pure Python (requests, six, appdirs) and runs unchanged on Python 3.11 and later.
#
# Usage: scripts/install-amt-client.sh
set -euo pipefail

exec "$(dirname "$0")/install-pypi-tool.sh" amt amt 0.8.0 amtctrl

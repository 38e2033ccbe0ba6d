#!/usr/bin/env bash
# Installs what is missing, and only that, from Debian's packages; shared by the scripts that
# set up what the build, the tests and the benchmarks need. Each argument is either
#   PROGRAM=PACKAGE          install PACKAGE unless PROGRAM is found (on PATH or in an sbin
#                            directory); PROG1|PROG2=PACKAGE: unless either is found
#   PACKAGE                  install PACKAGE unless dpkg has it installed (for what is no
#                            program: libraries, development files)
# so a program that came from elsewhere (another package, /usr/local, a newer build) counts.
#
# It never upgrades anything already installed: `apt-get install --no-upgrade`, and before
# that a dry run; if installing the missing packages would upgrade an installed one (a newer
# dependency), nothing is installed and the packages concerned are named. Idempotent and
# non-interactive; `apt-get update` runs only when something is missing. Prints what it
# installs. Run as root (CI) or with sudo available.
#
# Usage: scripts/apt-install.sh [PROGRAM=]PACKAGE...
set -euo pipefail

found_program() {
  local program
  IFS='|' read -r -a programs <<<"$1"
  for program in "${programs[@]}"; do
    if command -v "$program" >/dev/null 2>&1; then
      return 0
    fi
    for dir in /usr/sbin /sbin /usr/local/sbin; do
      [[ -x "$dir/$program" ]] && return 0
    done
  done
  return 1
}

missing=()
for arg in "$@"; do
  if [[ "$arg" == *=* ]]; then
    found_program "${arg%%=*}" || missing+=("${arg#*=}")
  else
    # `dpkg -s` also succeeds for removed-but-not-purged packages ("Status: deinstall ok
    # config-files"), so check the status line, not the exit code. Captured first:
    # `dpkg -s | grep -q` could die of SIGPIPE under pipefail.
    info="$(dpkg -s "$arg" 2>/dev/null || true)"
    grep -qx 'Status: install ok installed' <<<"$info" || missing+=("$arg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "apt-install: nothing to install (${*})"
  exit 0
fi

if ((EUID == 0)); then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo --non-interactive)
else
  echo "apt-install: missing ${missing[*]}; run as root or install sudo" >&2
  exit 1
fi
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q)

"${apt[@]}" update
install=(install -y --no-upgrade --no-install-recommends)
# The dry run lists each package it would unpack as "Inst NAME [INSTALLED-VERSION] (NEW ...)":
# a bracketed version is an upgrade of something already there.
would_upgrade() {
  "${apt[@]}" "${install[@]}" --simulate "$@" </dev/null |
    sed -n 's/^Inst \([^ ]*\) \[\([^]]*\)\].*/\1=\2/p'
}
upgrades="$(would_upgrade "${missing[@]}")"
# apt's resolver may prefer upgrading an installed package it could keep (podman's libsubid4
# pulls login and passwd to the newest point release although the installed ones satisfy
# it): ask again with each of them held at its installed version.
if [[ -n "$upgrades" ]]; then
  mapfile -t held <<<"$upgrades"
  if [[ -z "$(would_upgrade "${missing[@]}" "${held[@]}" 2>/dev/null)" ]] &&
    "${apt[@]}" "${install[@]}" --simulate "${missing[@]}" "${held[@]}" </dev/null >/dev/null 2>&1; then
    echo "apt-install: keeping ${held[*]} at the installed version"
    missing+=("${held[@]}")
    upgrades=""
  fi
fi
if [[ -n "$upgrades" ]]; then
  upgrades="$(sed 's/=\(.*\)/ (installed \1)/' <<<"$upgrades")"
  echo "apt-install: installing ${missing[*]} would upgrade installed packages:" >&2
  echo "$upgrades" | sed 's/^/  /' >&2
  echo "apt-install: nothing installed; install ${missing[*]} yourself if that is acceptable" >&2
  exit 1
fi
echo "apt-install: installing ${missing[*]}"
# Debian may start packaged services (nginx on :80, haproxy): harmless, the tests and the
# benchmark start their own instances on free 127.0.0.1 ports.
"${apt[@]}" "${install[@]}" "${missing[@]}" </dev/null

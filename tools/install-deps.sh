#!/bin/bash
# Install everything this project needs on a Debian machine, as root.
#
#   tools/install-deps.sh          what the main job needs (bindep default)
#   tools/install-deps.sh test     ... plus what the tests need
#
# 1. pip for the python3 on PATH (apt-get python3-pip python3-venv if absent);
# 2. bindep and tox, with that pip;
# 3. exactly the Debian packages `bindep -b default PROFILE...` reports
#    missing from bindep.txt.
# apt-get update runs only when something has to be installed from apt.
# Idempotent: a second run installs nothing and prints nothing.
# Quiet on success; on failure it names the step and shows its output.

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

die() {
    echo "install-deps: ERROR: $*" >&2
    if [ -s "$LOG" ]; then
        echo "install-deps: output of the failed step:" >&2
        tail -n 60 "$LOG" >&2
    fi
    exit 1
}

# Run a command, keeping its output for the error message only.
run() {
    : >"$LOG"
    "$@" >>"$LOG" 2>&1 || die "'$*' failed (exit $?)"
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root to $1"
}

APT_UPDATED=0
apt_install() {
    need_root "apt-get install $*"
    command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian"
    # Update the package lists once, and only when something is installed:
    # a fresh machine may have none, or stale ones.
    if [ "$APT_UPDATED" -eq 0 ]; then
        run apt-get update -q
        APT_UPDATED=1
    fi
    run apt-get install -y -q --no-install-recommends "$@"
}

# --- 1. python3 and pip ----------------------------------------------------
if ! command -v python3 >/dev/null; then
    apt_install python3 python3-pip python3-venv
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip python3-venv
fi
python3 -m pip --version >/dev/null 2>&1 ||
    die "python3 -m pip does not work for $(command -v python3)"

# --- 2. bindep and tox -----------------------------------------------------
PIP_ARGS=(--quiet)
# Debian's own python3 refuses pip installs (PEP 668) unless told; outside
# a venv that is what we want here: root installs tools to /usr/local.
if python3 - <<'EOF'
import os, sys, sysconfig
managed = os.path.exists(
    os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED'))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)
EOF
then
    PIP_ARGS+=(--break-system-packages)
fi

missing_py=()
python3 -c 'import bindep' >/dev/null 2>&1 || missing_py+=(bindep)
python3 -c 'import tox' >/dev/null 2>&1 || missing_py+=(tox)
if [ "${#missing_py[@]}" -gt 0 ]; then
    run python3 -m pip install "${PIP_ARGS[@]}" "${missing_py[@]}"
    # pyenv only puts new console scripts on PATH after a rehash.
    if command -v pyenv >/dev/null; then
        pyenv rehash >/dev/null 2>&1 || true
    fi
fi

# --- 3. Debian packages from bindep.txt ------------------------------------
[ -f bindep.txt ] || die "bindep.txt not found in $(pwd)"
profiles=(default "$@")

bindep_missing() {
    local out rc=0
    out=$(python3 -m bindep -b "${profiles[@]}" 2>&1) || rc=$?
    # bindep exits 1 when packages are missing and lists them, one a line.
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
        echo "$out" >"$LOG"
        die "bindep failed (exit $rc)"
    fi
    if [ -n "$out" ] && grep -qvE '^[a-z0-9][a-z0-9+.-]*$' <<<"$out"; then
        echo "$out" >"$LOG"
        die "unexpected output from bindep -b ${profiles[*]}"
    fi
    echo "$out"
}

missing_deb=$(bindep_missing)
if [ -n "$missing_deb" ]; then
    # shellcheck disable=SC2086  # one package a word
    apt_install $missing_deb
    still=$(bindep_missing)
    [ -z "$still" ] || die "still missing after apt-get install: $still"
fi

exit 0

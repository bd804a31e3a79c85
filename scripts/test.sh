#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh Debian/Ubuntu machine: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/apt.sh  # apt_install: "apt-get update" once, sudo only when not root

# The integration tests start their own Orthanc and dcmtk storescp on free loopback ports.
# (pynetdicom also installs a "storescp" on PATH, so look for dcmtk's by its path.)
if [ ! -x /usr/sbin/Orthanc ] || [ ! -x /usr/bin/storescp ] || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
    apt_install orthanc dcmtk orthanc-dicomweb
    # The package may start a system Orthanc on 4242/8042; the tests do not need it, so stop the one we installed.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
        $SUDO systemctl stop orthanc || true
    elif command -v service >/dev/null 2>&1 && service orthanc status >/dev/null 2>&1; then
        $SUDO service orthanc stop || true
    fi
fi

# Debian's own Python refuses "pip install" outside a virtual environment (PEP 668); use .venv then.
PYTHON="${PYTHON:-python3}"
if [ -z "${VIRTUAL_ENV:-}" ] && "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv 2>/dev/null || { apt_install python3-venv && "$PYTHON" -m venv .venv; }
    fi
    PYTHON=.venv/bin/python
fi
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
fi

"$PYTHON" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
exec "$PYTHON" -m pytest -q "$@"

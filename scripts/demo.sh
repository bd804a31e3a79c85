#!/usr/bin/env bash
# Make .venv (with the packages of requirements.txt) and run the demo, on a fresh Debian/Ubuntu machine too:
#   bash scripts/demo.sh
# Debian's Python refuses "pip install" outside a virtual environment (PEP 668) and ships venv apart
# (python3-venv), which is installed with apt when "python3 -m venv" fails. The watcher then runs with
# .venv/bin/python dicom_zip_watcher.py config.yaml
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/apt.sh  # apt_install: "apt-get update" once, sudo only when not root

if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-venv
fi
# A venv made without ensurepip has a python but no pip: make it again once python3-venv is there.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    if ! python3 -m venv .venv >/dev/null 2>&1; then
        rm -rf .venv
        apt_install python3-venv
        python3 -m venv .venv
    fi
fi

.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
exec .venv/bin/python dicom_zip_watcher.py --demo

#!/usr/bin/env bash
# Re-resolve the project's dependencies and write constraints.txt: the exact versions that
# `pip install -c constraints.txt ...` (the README's install, scripts/test.sh, CI) installs, so
# a new release of diffusers, prefect or torch reaches a nightly worker only through a reviewed
# commit of this file. Run it to take newer versions, then run the tests and commit the file.
#
#   ./scripts/refresh_constraints.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -qq --disable-pip-version-check -e '.[test]'
{
    echo "# Exact versions for reproducible installs: pip install -c constraints.txt -e '.[test]'."
    echo "# Written by ./scripts/refresh_constraints.sh on $(date -u +%F) (Python $("$scratch/venv/bin/python" -c 'import platform; print(platform.python_version())'), $(uname -m)); do not edit by hand."
    "$scratch/venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check
} >constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages"

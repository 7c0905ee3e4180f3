#!/usr/bin/env bash
# The project's checks in its virtual environment, created on first use: lint and format
# (ruff), then the tests (pytest).
#   ./scripts/test.sh                      everything (CI runs this)
#   ./scripts/test.sh -m "not slow"        the fast tier: no real Prefect server, workers or training runs
#   ./scripts/test.sh tests/test_cli.py -x  arguments go to pytest
# Exits non-zero when ruff finds a problem, else with pytest's exit code.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# Editable install: the tests import the packages and run the `fpdm` CLI from this checkout.
# constraints.txt pins every dependency's version (./scripts/refresh_constraints.sh renews it).
# -qq: errors only (-q still shows setuptools' editable-install notice).
.venv/bin/python -m pip install -qq --disable-pip-version-check -c constraints.txt -e '.[test]'

.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
# -rs: every skipped test is listed with its reason (the production model's tests skip where the disk is short).
exec .venv/bin/python -m pytest -q -rs "$@"

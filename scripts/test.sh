#!/usr/bin/env bash
# Run the test suite in the project's virtual environment, creating it on first use.
#   ./scripts/test.sh                      all tests
#   ./scripts/test.sh tests/test_cli.py -x  arguments go to pytest
# Exits with pytest's exit code.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# Editable install: the tests import the packages and run the `fpdm` CLI from this checkout.
# -qq: errors only (-q still shows setuptools' editable-install notice).
.venv/bin/python -m pip install -qq --disable-pip-version-check -e '.[test]'

exec .venv/bin/python -m pytest -q "$@"

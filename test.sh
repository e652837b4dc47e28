#!/usr/bin/env bash
# The whole check, as CI runs it: makes .venv (once), installs yieldio with its test extra, then
# lints (ruff), checks formatting (ruff format), type-checks (mypy --strict) and runs pytest.
# Any finding fails it. Arguments go to pytest (./test.sh -q tests/test_kernel.py).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv 2>/dev/null || test -x .venv/bin/python
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy --strict src
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Run the whole test suite: makes .venv (once), installs yieldio with its test extras, runs pytest.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv 2>/dev/null || test -x .venv/bin/python
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"

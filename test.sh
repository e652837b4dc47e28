#!/usr/bin/env bash
# The whole check, as CI runs it: makes .venv (once), installs yieldio with its test extra, then
# lints (ruff), checks formatting (ruff format), type-checks (mypy --strict) and runs pytest.
# Any finding fails it. Arguments go to pytest (./test.sh -q tests/test_kernel.py). CI runs it
# twice: as it is (pure Python), then with YIELDIO_COMPILE=1 (the optional compiled build).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv 2>/dev/null || test -x .venv/bin/python
# YIELDIO_COMPILE=1 ./test.sh tests the optional compiled build (made in place by the install);
# without it, one left by an earlier compiled run is removed, so that the pure build is what runs.
[ "${YIELDIO_COMPILE:-}" = 1 ] || rm -f src/yieldio/_speedups.*.so
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy --strict src
exec .venv/bin/python -m pytest "$@"

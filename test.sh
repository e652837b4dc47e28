#!/usr/bin/env bash
# The whole check, as CI runs it: makes .venv (once), installs yieldio with its test extra, then
# lints (ruff), checks formatting (ruff format), type-checks src and tests (mypy --strict) and runs pytest.
# Any finding fails it. Run whole (no arguments), pytest also measures coverage (pytest-cov; see
# [tool.coverage] in pyproject.toml) and fails under its floor; arguments go to pytest instead
# (./test.sh -q tests/test_kernel.py), which then measures nothing.
#
# The install is editable and builds the default way: the compiled echo step is built in place
# (src/yieldio/_speedups.*.so, git-ignored), and the tests expect it to run. So a C compiler and
# Python's headers are needed (apt-get install gcc python3-dev); CI runs the suite twice:
#   YIELDIO_REQUIRE_EXTENSIONS=1 ./test.sh   the compiled build; a C file that fails to compile fails it
#   YIELDIO_NO_EXTENSIONS=1 ./test.sh        the pure-Python build (the install removes the in-place module)
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv 2>/dev/null || test -x .venv/bin/python
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# the build that runs is the one asked for (tests/harness.py's rule), before any test depends on it
.venv/bin/python -c '
import sys
from tests.harness import expected_echo_loop
from yieldio.compiled import ECHO_LOOP
if ECHO_LOOP != expected_echo_loop():
    sys.exit(
        f"test.sh: the {expected_echo_loop()} echo loop was asked for, but the install runs the {ECHO_LOOP} one."
        " No C compiler, or no Python.h? apt-get install gcc python3-dev;"
        " YIELDIO_REQUIRE_EXTENSIONS=1 ./test.sh shows why the compile failed;"
        " YIELDIO_NO_EXTENSIONS=1 ./test.sh tests the pure-Python build."
    )
'
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy --strict src tests
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# the coverage data in a directory of this run's, not in the tree another run may be using
coverage_data=$(mktemp -d)
trap 'rm -rf "$coverage_data"' EXIT
COVERAGE_FILE="$coverage_data/coverage" .venv/bin/python -m pytest --cov --cov-report=term

#!/usr/bin/env bash
# Start the echo server on 127.0.0.1:25000 (flags are passed on: ./serve.sh --port 9000).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/yieldio ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
exec .venv/bin/yieldio serve "$@"

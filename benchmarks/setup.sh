#!/usr/bin/env bash
# Prepare the benchmark environment: benchmarks/.venv with the pinned peer
# frameworks and yieldio installed editable, plus the two C programs.
# Idempotent: safe to run again (e.g. after requirements.txt changes).
#
# Usage: benchmarks/setup.sh        (PYTHON=/path/to/python3.11 to choose the interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-python3}"

# System tools: gcc builds the load generator and the C server, taskset
# (util-linux) pins processes to CPUs, libssl-dev gives the load generator
# its TLS (OpenSSL headers and libraries), and the openssl command makes the
# TLS scenarios' throw-away certificate.  Install only what is missing.
missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
printf '#include <openssl/ssl.h>\n' | cpp >/dev/null 2>&1 || missing+=(libssl-dev)
if ((${#missing[@]})); then
    echo "installing missing system packages: ${missing[*]}"
    apt-get update -q && apt-get install -y -q "${missing[@]}"
fi

if [[ ! -x "$here/.venv/bin/python" ]]; then
    "$python" -m venv "$here/.venv"
fi
venv_py="$here/.venv/bin/python"
"$venv_py" -m pip install -q -r "$here/requirements.txt"
# yieldio itself, editable, so `python -m yieldio` in the venv runs the
# working tree.  A failure here is not fatal: run.py and micro.py also put
# src/ on PYTHONPATH, so a half-finished checkout can still be measured.
if [[ -f "$repo/pyproject.toml" ]] && "$venv_py" -m pip install -q -e "$repo"; then
    :
else
    echo "warning: editable install of yieldio from $repo failed; run.py falls back to src/" >&2
fi

mkdir -p "$here/build"
gcc -O2 -Wall -Wextra -o "$here/build/loadgen" "$here/loadgen.c" -lssl -lcrypto
gcc -O2 -Wall -Wextra -o "$here/build/c_epoll" "$here/servers/c_epoll.c"

"$venv_py" - <<'PY'
from importlib import metadata
for dist in ("yieldio", "uvloop", "trio", "curio", "gevent", "matplotlib"):
    try:
        print(f"  {dist:11s} {metadata.version(dist)}")
    except metadata.PackageNotFoundError:
        print(f"  {dist:11s} NOT INSTALLED")
PY
echo "ready: $here/.venv/bin/python $here/run.py"

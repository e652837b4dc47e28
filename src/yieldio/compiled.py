"""Which echo loop runs: the compiled step, when the build made it, or the pure-Python loop.

The compiled step (:mod:`yieldio._speedups`, built from ``_speedups.c`` at install time when
a C compiler is there) does the plain echo's per-message receive and send in one C call.
The pure-Python loop is the reference: both make the same system calls and behave the same.
``YIELDIO_PURE=1`` in the environment chooses the pure loop at run time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

EchoStep = Callable[[int, memoryview, int], int | tuple[int, int] | None]

echo_step: EchoStep | None = None
if os.environ.get("YIELDIO_PURE") != "1":
    with contextlib.suppress(ImportError):
        from ._speedups import echo_step

ECHO_LOOP = "pure" if echo_step is None else "compiled"

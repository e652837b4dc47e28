"""What the environment may start with the kernel of any program that ``yieldio.run`` runs.

A learner runs the tutorial's file, which calls ``run()`` and nothing else; to
watch it, there is no code to change: a variable is enough. ``YIELDIO_TRACE_FILE``
is read here when ``run()`` starts a kernel. The runner, in the core, cannot
import what watches it from up here, so ``yieldio/__init__.py`` registers these
functions with it (:func:`yieldio.core.runner.extend_from_environment`); what
they start is imported only when a variable asks for it, so a program that
sets none loads nothing more.

``yieldio serve`` does not come here: its flags, which the same variables set,
say what it starts.
"""

from __future__ import annotations

import contextlib
import os

from ..core.kernel import Kernel


def trace_file_from_environment(kernel: Kernel) -> contextlib.AbstractContextManager[object]:
    """``YIELDIO_TRACE_FILE=FILE``: the scheduling events written to FILE as a Chrome trace."""
    path = os.environ.get("YIELDIO_TRACE_FILE", "")
    if not path:
        return contextlib.nullcontext()
    from .tracefile import trace_file  # only when asked for

    return trace_file(path)(kernel)

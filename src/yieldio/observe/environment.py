"""What the environment may start with the kernel of any program that ``yieldio.run`` runs.

A learner runs the tutorial's file, which calls ``run()`` and nothing else; to
watch it, there is no code to change: a variable is enough. ``YIELDIO_MONITOR``
(with ``YIELDIO_MONITOR_TOKEN`` and ``YIELDIO_MONITOR_READ_ONLY``) and
``YIELDIO_TRACE_FILE`` are read here when ``run()`` starts a kernel. The
monitor says where it listens on stderr, in one line (``yieldio: monitor on
http://127.0.0.1:48802/``): the program asked for no logging, but whoever set
the variable needs to know the port. The runner, in the core, cannot
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
import sys

from ..core.kernel import Kernel


def monitor_from_environment(kernel: Kernel) -> contextlib.AbstractContextManager[object]:
    """``YIELDIO_MONITOR=[HOST:]PORT``: the monitor's endpoint (:mod:`.monitor_web`), while the kernel runs.

    A bad address, or one that cannot be listened on, is an error of ``run()``, naming the variable.
    """
    text = os.environ.get("YIELDIO_MONITOR", "").strip()
    if not text:
        return contextlib.nullcontext()
    from .monitor_address import BadAddress, open_monitor_socket, parse_monitor_address, token_for
    from .monitor_web import monitor_extension

    try:
        host, port = parse_monitor_address(text)
    except BadAddress as error:
        raise ValueError(f"YIELDIO_MONITOR={text!r}: {error}") from None
    try:
        sock = open_monitor_socket(host, port)
    except OSError as error:
        raise OSError(error.errno, f"YIELDIO_MONITOR={text!r}: cannot listen on it: {error.strerror}") from None
    read_only = os.environ.get("YIELDIO_MONITOR_READ_ONLY", "").strip().lower() in ("1", "true", "yes", "on")
    token = token_for(host, os.environ.get("YIELDIO_MONITOR_TOKEN"))
    extension = monitor_extension(
        sock,
        token=token,
        read_only=read_only,
        about={},
        say=lambda endpoint: print(f"yieldio: monitor on {endpoint.url()}", file=sys.stderr, flush=True),
    )
    return extension(kernel)


def trace_file_from_environment(kernel: Kernel) -> contextlib.AbstractContextManager[object]:
    """``YIELDIO_TRACE_FILE=FILE``: the scheduling events written to FILE as a Chrome trace."""
    path = os.environ.get("YIELDIO_TRACE_FILE", "")
    if not path:
        return contextlib.nullcontext()
    from .tracefile import trace_file  # only when asked for

    return trace_file(path)(kernel)

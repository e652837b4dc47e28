"""Which loops run: the compiled steps, when the build made them, or the pure-Python loops.

The compiled module (:mod:`yieldio._speedups`, built from ``_speedups.c`` at install time when
a C compiler is there; ``YIELDIO_NO_EXTENSIONS=1`` at install time builds without it) has two
parts: the plain echo's per-message receive and send (``echo_step``, one C call), and the load
client's loop over one connection while its echoes come back exact (``RequestChain``, an
iterator a task delegates to). The pure-Python loops are the reference: both make the same
system calls and behave the same.
``YIELDIO_PURE=1`` in the environment chooses the pure loops at run time.

A module that is there but is not the build of this Python and this source is never used
silently: one built for another Python (another ``EXT_SUFFIX``, or one that fails to load), or,
in a source tree (an editable install, where ``_speedups.c`` sits beside it), one compiled from
another version of ``_speedups.c`` than the one there (the build compiles the source's SHA-256
into it). The pure loop runs then, and a :class:`StaleBuildWarning` says why and how to rebuild.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sysconfig
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import _speedups

EchoStep = Callable[[int, memoryview, int], int | tuple[int, int] | None]

HERE = Path(__file__).resolve().parent
REBUILD = "Rebuild it with this Python: `pip install -e .` in the source tree (./test.sh does), or reinstall yieldio"


class StaleBuildWarning(RuntimeWarning):
    """A compiled module is there but is not this Python's, or not this source's: the pure loop runs instead."""


def _compiled_modules() -> list[str]:
    """The compiled modules in the package's directory, whichever Python they were built for."""
    return sorted(path.name for path in HERE.glob("_speedups.*") if path.suffix in (".so", ".pyd"))


def _load() -> ModuleType | None:
    if os.environ.get("YIELDIO_PURE") == "1":
        return None
    try:
        _speedups = importlib.import_module("._speedups", __package__)  # missing: ModuleNotFoundError, else ImportError
    except ImportError as error:
        found = _compiled_modules()
        if found or not isinstance(error, ModuleNotFoundError):
            wanted = "_speedups" + str(sysconfig.get_config_var("EXT_SUFFIX"))
            warnings.warn(
                f"yieldio: {', '.join(found) or 'the compiled module'} in {HERE} cannot be loaded by this Python"
                f" (it would load {wanted}: {error}); the pure-Python loops run. Built for another Python?"
                f" {REBUILD}",
                StaleBuildWarning,
                stacklevel=2,
            )
        return None
    source = HERE / "_speedups.c"
    if source.is_file():  # a source tree: the module must have been compiled from this very file
        built_from = getattr(_speedups, "SOURCE_SHA256", None)
        if built_from != hashlib.sha256(source.read_bytes()).hexdigest():
            warnings.warn(
                f"yieldio: {_speedups.__file__} was compiled from another version of {source} (older?);"
                f" the pure-Python loops run. {REBUILD}",
                StaleBuildWarning,
                stacklevel=2,
            )
            return None
    return _speedups


_module = _load()
echo_step: EchoStep | None = None if _module is None else _module.echo_step
RequestChain: type[_speedups.RequestChain] | None = None if _module is None else _module.RequestChain

ECHO_LOOP = "pure" if echo_step is None else "compiled"

"""yieldio's build hook (hatchling): compiles the echo step, src/yieldio/_speedups.c, when it can.

The conventional optional C extension, as msgpack, multidict or PyYAML build theirs:

- a C compiler is found: the wheel carries ``yieldio/_speedups<EXT_SUFFIX>`` and is tagged for
  this Python and platform (``cp311-cp311-linux_x86_64``);
- no C compiler, or ``YIELDIO_NO_EXTENSIONS=1``: the pure-Python wheel (``py3-none-any``), and
  one line saying so;
- a compiler that fails: the pure-Python wheel too, with a warning; ``YIELDIO_REQUIRE_EXTENSIONS=1``
  makes that (and a missing compiler) an error. CI and the container image set it, so that a C
  file that does not compile cannot pass as a pure build. ``YIELDIO_NO_EXTENSIONS=1`` wins over it.

The compiler, its flags and the linker are the ones Python's own build configuration names
(sysconfig's CC, CFLAGS, CCSHARED, LDSHARED...), set up by setuptools' compiler machinery, which
is what builds any setuptools extension and honours CC, CFLAGS, LDFLAGS... from the environment
the same way. The SHA-256 of the C source is compiled into the module (``SOURCE_SHA256``), so that
yieldio.compiled can tell a module built from an older _speedups.c.

A normal build compiles in a temporary directory and writes nothing into the source tree. An
editable install (``pip install -e .``) builds the module in place, as
``src/yieldio/_speedups<EXT_SUFFIX>`` (git-ignored), which the editable install then imports; a
pure editable install removes it, so that it is not loaded instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE = Path("src/yieldio")
SOURCE = PACKAGE / "_speedups.c"
MODULE = "_speedups" + str(sysconfig.get_config_var("EXT_SUFFIX"))
NO_EXTENSIONS = "YIELDIO_NO_EXTENSIONS"
REQUIRE_EXTENSIONS = "YIELDIO_REQUIRE_EXTENSIONS"


def say(message: str) -> None:
    # stderr: pip shows a backend's output with -v, and always when the build fails
    print(f"yieldio: {message}", file=sys.stderr, flush=True)


def is_set(name: str) -> bool:
    return os.environ.get(name) == "1"


class CompilerMissing(Exception):
    """No C compiler (or no linker) where Python's configuration says it is."""


def c_compiler() -> Any:
    """The C compiler Python was configured with, as setuptools sets it up for an extension."""
    from setuptools._distutils.ccompiler import new_compiler  # setuptools is in build-system.requires
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    for role in ("compiler_so", "linker_so"):  # the Unix compiler's commands (argv lists); MSVC has none
        command = getattr(compiler, role, None)
        if command and shutil.which(command[0]) is None:
            raise CompilerMissing(
                f"no C compiler: {command[0]!r} ({role}, from Python's configuration or $CC) not found"
            )
    return compiler


def compile_module(compiler: Any, source: Path, scratch: Path) -> Path:
    """Compile and link ``source`` into ``scratch``/_speedups<EXT_SUFFIX>; raises what the compiler raises."""
    from setuptools._distutils.sysconfig import get_python_inc

    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    include_dirs = list(dict.fromkeys([get_python_inc(), get_python_inc(plat_specific=True)]))
    objects = compiler.compile(
        [str(source)],
        output_dir=str(scratch / "objects"),
        macros=[("YIELDIO_SOURCE_SHA256", digest)],
        include_dirs=include_dirs,
    )
    target = scratch / MODULE
    compiler.link_shared_object(objects, str(target))
    return target


class CustomBuildHook(BuildHookInterface[Any]):
    PLUGIN_NAME = "custom"

    scratch: Path | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        in_place = root / PACKAGE / MODULE
        editable = version == "editable"

        def pure(message: str) -> None:
            say(message)
            if editable:  # an older in-place module would be imported instead of the pure loop
                in_place.unlink(missing_ok=True)

        if is_set(NO_EXTENSIONS):
            pure(f"{NO_EXTENSIONS}=1: building the pure-Python package, without the compiled echo step")
            return
        from setuptools._distutils.errors import CCompilerError, DistutilsError

        scratch = Path(tempfile.mkdtemp(prefix="yieldio-build-"))
        try:
            built = compile_module(c_compiler(), root / SOURCE, scratch)
        except (CompilerMissing, CCompilerError, DistutilsError, OSError) as error:
            shutil.rmtree(scratch, ignore_errors=True)
            if is_set(REQUIRE_EXTENSIONS):
                raise RuntimeError(f"{REQUIRE_EXTENSIONS}=1, and compiling {SOURCE} failed: {error}") from error
            if isinstance(error, CompilerMissing):
                pure(f"{error}: building the pure-Python package, without the compiled echo step")
            else:
                pure(
                    f"WARNING: compiling {SOURCE} failed ({error}; the compiler's messages are above): "
                    f"building the pure-Python package instead. {REQUIRE_EXTENSIONS}=1 makes this an error."
                )
            return
        if editable:
            os.replace(built, in_place)  # a rename: a process may have the old module loaded
            shutil.rmtree(scratch, ignore_errors=True)
            say(f"compiled {SOURCE} in place: {in_place.relative_to(root)}")
        else:
            build_data["force_include"][str(built)] = f"yieldio/{MODULE}"
            self.scratch = scratch
            say(f"compiled {SOURCE}: the wheel carries yieldio/{MODULE}")
        build_data["pure_python"] = False
        build_data["infer_tag"] = True  # cp311-cp311-<platform>

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

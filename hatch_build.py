"""The optional compiled build: ``YIELDIO_COMPILE=1 pip install .`` (or ``-e .``) compiles
src/yieldio/_speedups.c with the C compiler Python was built with, and the wheel carries it.

Without the variable the build is pure Python: a compiled module left in src/yieldio by an
earlier compiled editable install is ignored by git, so no wheel carries it, but an editable
install would still import it (test.sh removes it for a pure run). yieldio uses the module when
it can import it (see yieldio.apps.echo); it behaves the same either way, and the test suite
runs against both builds.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src/yieldio/_speedups.c")


class CustomBuildHook(BuildHookInterface[Any]):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        target = root / SOURCE.with_name("_speedups" + str(sysconfig.get_config_var("EXT_SUFFIX")))
        if os.environ.get("YIELDIO_COMPILE") != "1":
            return
        scratch = target.with_name(target.name + ".tmp")  # then renamed: a process may have the old one loaded
        compiler = shlex.split(str(sysconfig.get_config_var("CC") or "cc"))
        command = [
            *compiler,
            "-O2",
            "-fPIC",
            "-shared",
            "-Wall",
            "-Werror",
            "-I",
            str(sysconfig.get_paths()["include"]),
            str(root / SOURCE),
            "-o",
            str(scratch),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"YIELDIO_COMPILE=1: compiling {SOURCE} failed:\n{shlex.join(command)}\n{result.stderr}")
        scratch.replace(target)
        build_data["artifacts"].append(str(target.relative_to(root)))
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

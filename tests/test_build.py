"""The build (hatch_build.py): the compiled echo step by default, the pure package when asked or when
it cannot compile, and a compiled module that is not this build's never loaded silently.

Each test builds from a copy of what a wheel is made of (pyproject.toml, README.md, hatch_build.py,
src/), offline and bounded: ``pip wheel --no-deps --no-build-isolation`` with the build system's own
tools, which the test extra installs (hatchling, setuptools; editables for the editable build). The
builds get this process's environment without its YIELDIO_* variables (CI runs the suite with
YIELDIO_REQUIRE_EXTENSIONS=1, then with YIELDIO_NO_EXTENSIONS=1), and with what each test sets.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename

from yieldio import compiled

from .harness import ROOT, expected_echo_loop

MODULE = "_speedups" + str(sysconfig.get_config_var("EXT_SUFFIX"))
ANOTHER_PYTHONS = "_speedups.cpython-399-x86_64-linux-gnu.so"  # a name no Python here loads
BUILD_TIMEOUT = 180  # seconds; a build takes a few


def test_this_process_runs_the_build_the_environment_names() -> None:
    # ./test.sh checks it before the tests, and tests/harness.py checks each `yieldio serve` child
    running = compiled.ECHO_LOOP
    assert running == expected_echo_loop()
    assert (compiled.echo_step is None) == (running == "pure")


# --- building ---------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the files a wheel is built from, without anything a build or a run left in src/."""
    for tool in ("hatchling", "setuptools", "editables"):
        if importlib.util.find_spec(tool) is None:
            pytest.fail(f"{tool} is not installed: pip install -e '.[test]' (the test extra pins it)")
    copy = tmp_path / "tree"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md", "hatch_build.py"):
        shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so*"))
    return copy


def build_env(**variables: str) -> dict[str, str]:
    """This environment without YIELDIO_* (and without a PYTHONPATH to the checkout), plus ``variables``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("YIELDIO_") and key != "PYTHONPATH"}
    return env | variables


def pip_wheel(tree: Path, out: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """``pip wheel -v`` (-v: the build's own lines are shown) of ``tree`` into ``out``; never raises for its status."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-v",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(out),
        str(tree),
    ]
    return subprocess.run(
        command, env=build_env(**variables), capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT
    )


def built_wheel(result: subprocess.CompletedProcess[str], out: Path) -> Path:
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


def is_pure(wheel: Path) -> bool:
    """Whether the wheel says it is pure Python, in its name and in its WHEEL file alike."""
    tags = {str(tag) for tag in parse_wheel_filename(wheel.name)[3]}
    with zipfile.ZipFile(wheel) as archive:
        (wheel_file,) = [name for name in archive.namelist() if name.endswith(".dist-info/WHEEL")]
        purelib = re.search(r"^Root-Is-Purelib: (\w+)$", archive.read(wheel_file).decode(), re.MULTILINE)
    assert purelib is not None
    if tags == {"py3-none-any"}:
        assert purelib.group(1) == "true", wheel.name
        return True
    assert tags & {str(tag) for tag in sys_tags()}, f"{wheel.name} is not installable here"
    assert purelib.group(1) == "false", wheel.name
    return False


def speedups_in(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return sorted(name for name in archive.namelist() if name.startswith("yieldio/_speedups"))


def said(result: subprocess.CompletedProcess[str], pattern: str) -> list[str]:
    """The lines of the build's output (pip -v indents them) that hatch_build.py wrote and match ``pattern``."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line.strip() for line in lines if re.search(r"^\s*yieldio: .*" + pattern, line)]


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def break_c_source(tree: Path) -> None:
    source = tree / "src" / "yieldio" / "_speedups.c"
    source.write_text(source.read_text() + "\nstatic int broken_on_purpose(void) { return }\n")


def run_python(code: str, *path: Path) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that imports from ``path`` first (-I: no PYTHONPATH, no user site)."""
    prelude = f"import sys; sys.path[:0] = {[str(p) for p in path]!r}\n"
    command = [sys.executable, "-I", "-W", "always", "-c", prelude + code]
    return subprocess.run(command, env=build_env(), capture_output=True, text=True, check=False, timeout=60)


def test_the_default_build_is_compiled_and_writes_nothing_into_the_tree(tree: Path, tmp_path: Path) -> None:
    before = snapshot(tree)
    result = pip_wheel(tree, tmp_path / "out")
    wheel = built_wheel(result, tmp_path / "out")
    assert not is_pure(wheel), wheel.name
    assert speedups_in(wheel) == sorted(["yieldio/_speedups.pyi", f"yieldio/{MODULE}"])  # not the .c
    assert said(result, f"compiled src/yieldio/_speedups.c: the wheel carries yieldio/{MODULE}"), result.stdout
    assert snapshot(tree) == before, "a normal build wrote into the tree"

    # the module in the wheel is the one the tree's source makes, and yieldio runs it
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    probe = run_python(
        "import yieldio._speedups as s, yieldio.compiled as c; print(s.__file__, s.SOURCE_SHA256, c.ECHO_LOOP)",
        unpacked,
    )
    assert probe.returncode == 0, probe.stderr
    digest = hashlib.sha256((tree / "src" / "yieldio" / "_speedups.c").read_bytes()).hexdigest()
    assert probe.stdout.split() == [str(unpacked / "yieldio" / MODULE), digest, "compiled"]
    assert probe.stderr == ""


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        ({"YIELDIO_NO_EXTENSIONS": "1"}, "YIELDIO_NO_EXTENSIONS=1: building the pure-Python package"),
        # asked for both: the pure build, as asked last (CI's pure run may inherit the other)
        (
            {"YIELDIO_NO_EXTENSIONS": "1", "YIELDIO_REQUIRE_EXTENSIONS": "1"},
            "YIELDIO_NO_EXTENSIONS=1: building the pure-Python package",
        ),
        ({"CC": "/nonexistent/cc"}, "no C compiler: '/nonexistent/cc' .* not found: building the pure-Python package"),
    ],
    ids=["no-extensions", "no-extensions-wins", "no-compiler"],
)
def test_pure_wheel_when_asked_or_without_a_compiler_and_one_line_says_so(
    tree: Path, tmp_path: Path, variables: dict[str, str], line: str
) -> None:
    before = snapshot(tree)
    result = pip_wheel(tree, tmp_path / "out", **variables)
    wheel = built_wheel(result, tmp_path / "out")
    assert is_pure(wheel), wheel.name
    assert speedups_in(wheel) == ["yieldio/_speedups.pyi"]
    assert len(said(result, line)) == 1, result.stdout + result.stderr
    assert len(said(result, "")) == 1, "one line, and nothing else from the build"
    assert snapshot(tree) == before


def test_no_compiler_with_extensions_required_fails_the_build(tree: Path, tmp_path: Path) -> None:
    result = pip_wheel(tree, tmp_path / "out", CC="/nonexistent/cc", YIELDIO_REQUIRE_EXTENSIONS="1")
    assert result.returncode != 0
    assert "YIELDIO_REQUIRE_EXTENSIONS=1, and compiling src/yieldio/_speedups.c failed: no C compiler" in result.stderr
    assert not list((tmp_path / "out").glob("*.whl"))


def test_a_c_file_that_does_not_compile_gives_the_pure_wheel_with_a_warning(tree: Path, tmp_path: Path) -> None:
    break_c_source(tree)
    result = pip_wheel(tree, tmp_path / "out")
    wheel = built_wheel(result, tmp_path / "out")
    assert is_pure(wheel), wheel.name
    assert speedups_in(wheel) == ["yieldio/_speedups.pyi"]
    output = result.stdout + result.stderr
    assert "broken_on_purpose" in output, "the compiler's own message is shown"
    warning = said(result, "WARNING: compiling src/yieldio/_speedups.c failed .*building the pure-Python package")
    assert len(warning) == 1, output
    assert "YIELDIO_REQUIRE_EXTENSIONS=1 makes this an error" in warning[0]


def test_a_c_file_that_does_not_compile_fails_the_build_when_extensions_are_required(
    tree: Path, tmp_path: Path
) -> None:
    break_c_source(tree)
    result = pip_wheel(tree, tmp_path / "out", YIELDIO_REQUIRE_EXTENSIONS="1")
    assert result.returncode != 0
    assert "broken_on_purpose" in result.stderr, "the compiler's own message is shown"
    assert "YIELDIO_REQUIRE_EXTENSIONS=1, and compiling src/yieldio/_speedups.c failed" in result.stderr
    assert not list((tmp_path / "out").glob("*.whl"))


# --- the editable build, and modules that are not this build's --------------------------------


def build_editable(tree: Path, out: Path, **variables: str) -> None:
    """What ``pip install -e`` asks of the backend (PEP 660), without installing the result anywhere."""
    command = [sys.executable, "-c", f"import hatchling.build as b; b.build_editable({str(out)!r})"]
    result = subprocess.run(
        command,
        cwd=tree,
        env=build_env(**variables),
        capture_output=True,
        text=True,
        check=False,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def loop_in(tree: Path) -> tuple[str, str]:
    """The echo loop yieldio imported from ``tree``/src runs, and what it warned."""
    result = run_python("import yieldio.compiled as c; print(c.ECHO_LOOP)", tree / "src")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result.stderr


def test_the_editable_build_compiles_in_place_and_a_stale_module_is_not_loaded_silently(
    tree: Path, tmp_path: Path
) -> None:
    package = tree / "src" / "yieldio"
    source = package / "_speedups.c"
    build_editable(tree, tmp_path / "editable")
    assert (package / MODULE).is_file()
    assert loop_in(tree) == ("compiled", "")

    # the source changed since the module was built: the pure loop, and a warning that says so
    source.write_text(source.read_text() + "\n/* a change the module was not built from */\n")
    loop, warned = loop_in(tree)
    assert loop == "pure"
    assert "StaleBuildWarning" in warned and "was compiled from another version of" in warned, warned
    assert "pip install -e ." in warned, "the warning says how to rebuild"
    build_editable(tree, tmp_path / "editable")  # the rebuild
    assert loop_in(tree) == ("compiled", "")

    # only another Python's module (another EXT_SUFFIX): the pure loop, and a warning that says so
    (package / MODULE).rename(package / ANOTHER_PYTHONS)
    loop, warned = loop_in(tree)
    assert loop == "pure"
    assert "StaleBuildWarning" in warned and f"{ANOTHER_PYTHONS} in {package} cannot be loaded" in warned, warned
    (package / ANOTHER_PYTHONS).unlink()

    # a module that is this Python's by name but does not load
    (package / MODULE).write_bytes(b"not a shared object")
    loop, warned = loop_in(tree)
    assert loop == "pure"
    assert "StaleBuildWarning" in warned and "cannot be loaded by this Python" in warned, warned

    # a pure editable build removes the in-place module: the pure loop, with nothing to warn about
    build_editable(tree, tmp_path / "editable", YIELDIO_NO_EXTENSIONS="1")
    assert not (package / MODULE).exists()
    assert loop_in(tree) == ("pure", "")


def test_yieldio_pure_at_run_time_chooses_the_pure_loop_without_a_warning(tree: Path, tmp_path: Path) -> None:
    build_editable(tree, tmp_path / "editable")
    result = run_python(
        "import os; os.environ['YIELDIO_PURE'] = '1'\nimport yieldio.compiled as c; print(c.ECHO_LOOP)", tree / "src"
    )
    assert (result.stdout.strip(), result.stderr) == ("pure", "")

"""The documentation stays true to the tree: its links lead somewhere, the names it gives import.

- every relative link (``[text](path)``, ``[text](path#heading)``, ``[text](#heading)``) in the
  documents below leads to a file or folder of the repository, and its ``#heading`` to a heading
  of that Markdown file, named as GitHub names it;
- every ``yieldio.`` name written in backticks (``yieldio.core.traps``, ``yieldio.ServerOptions``,
  ``yieldio.servers.stream.serve``), or used in a Python code block, imports as a module or
  resolves as an attribute;
- every flag of ``yieldio serve`` and ``yieldio connect``, and every variable that sets one, is in
  docs/serve.md; the README's tutorial code is examples/tutorial_server.py's; the README stays a
  front door (at most 200 lines).

Links to other sites are not followed (the tests run offline).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from yieldio.cli import connect, serve
from yieldio.cli.flags import CommandParser, FromEnvironment

from .harness import ROOT

DOCUMENTS = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        ROOT / "CHANGELOG.md",
        ROOT / "benchmarks" / "README.md",
        ROOT / "deploy" / "README.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})\s*(\w*)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^\s)>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
NAME = re.compile(r"(?<![\w./-])yieldio(?:\.[A-Za-z_]\w*)+")


def short(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def split_fences(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(the prose, with each fenced code block blanked out; the blocks as (language, code))."""
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    language = ""
    code: list[str] = []
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence, language, code = opened.group(1), opened.group(2), []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            blocks.append((language, "\n".join(code)))
            fence = None
            prose.append("")
        elif fence is not None:
            code.append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every ``#anchor`` a link may name in the Markdown file ``path``."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    found: set[str] = set(HTML_ANCHOR.findall(prose))
    seen: Counter[str] = Counter()
    for line in prose.splitlines():
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        found.add(base if not seen[base] else f"{base}-{seen[base]}")  # GitHub numbers repeated headings
        seen[base] += 1
    return found


def links(path: Path) -> list[str]:
    """The link targets written in ``path``'s prose (not in code blocks or code spans)."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    prose = CODE_SPAN.sub("", prose)
    return LINK.findall(prose) + REFERENCE.findall(prose)


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if not target:
            problems.append("an empty link")
            continue
        if SCHEME.match(target):
            continue  # http:, https:, mailto:: another site's business
        where, _, anchor = target.partition("#")
        if where.startswith("/"):
            problems.append(f"{target}: an absolute path (write it relative to {short(path)})")
            continue
        linked = (path.parent / where).resolve() if where else path
        if not linked.exists():
            problems.append(f"{target}: no such file or folder")
        elif where and not linked.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: {short(linked)} has no heading whose anchor is #{anchor}")
    return problems


def resolve(dotted: str) -> object:
    """The module or attribute ``dotted`` names; raises ImportError or AttributeError if there is none."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            found: object = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name) and split > 1:
                continue  # not a module: perhaps an attribute of its parent
            raise
        for attribute in parts[split:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(dotted)


def names(path: Path) -> set[str]:
    """The ``yieldio.`` names in ``path``'s code spans and Python code blocks."""
    prose, blocks = split_fences(path.read_text(encoding="utf-8"))
    written = {name for _, span in CODE_SPAN.findall(prose) for name in NAME.findall(span)}
    written |= {name for language, code in blocks if language in ("python", "py") for name in NAME.findall(code)}
    return written


@pytest.mark.parametrize("path", DOCUMENTS, ids=short)
def test_every_relative_link_leads_to_a_file_and_heading(path: Path) -> None:
    assert path.exists(), f"{short(path)} is missing"
    problems = broken_links(path)
    assert not problems, f"broken links in {short(path)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DOCUMENTS, ids=short)
def test_every_yieldio_name_imports(path: Path) -> None:
    unresolved = []
    for name in sorted(names(path)):
        try:
            resolve(name)
        except (ImportError, AttributeError) as error:
            unresolved.append(f"{name}: {type(error).__name__}: {error}")
    assert not unresolved, f"names in {short(path)} that yieldio does not have:\n" + "\n".join(unresolved)


def options(add_parser: Callable[[Any], FromEnvironment]) -> tuple[set[str], set[str]]:
    """(the long flags, the variables that may set them) of a subcommand, from its own parser."""
    parser = CommandParser(prog="yieldio")
    commands = parser.add_subparsers(dest="command", parser_class=CommandParser)
    environment = add_parser(commands)
    subcommand: argparse.ArgumentParser = next(iter(commands.choices.values()))
    flags = {flag for action in subcommand._actions for flag in action.option_strings if flag.startswith("--")}
    variables = {variable for _, variable, _ in environment.options}
    return flags - {"--help"}, variables


@pytest.mark.parametrize("add_parser", [serve.add_parser, connect.add_parser], ids=["serve", "connect"])
def test_every_flag_and_variable_is_documented(add_parser: Callable[[Any], FromEnvironment]) -> None:
    reference = (ROOT / "docs" / "serve.md").read_text(encoding="utf-8")
    flags, variables = options(add_parser)
    assert flags, "no flags found: has the parser changed shape?"
    missing = sorted(word for word in flags | variables if not re.search(rf"`{re.escape(word)}\b", reference))
    assert not missing, f"not in docs/serve.md (in backticks): {', '.join(missing)}"


def test_the_readmes_tutorial_code_is_the_example() -> None:
    _, blocks = split_fences((ROOT / "README.md").read_text(encoding="utf-8"))
    example = (ROOT / "examples" / "tutorial_server.py").read_text(encoding="utf-8")
    code = example.split("\n", 1)[1]  # its first line is a comment saying what it is
    assert ("python", code.rstrip("\n")) in blocks


def test_the_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 200, f"README.md has {lines} lines: move reference to docs/"


# -- the checks themselves ----------------------------------------------------------------------


def test_slugs_are_githubs() -> None:
    assert slug("The `yieldio` command") == "the-yieldio-command"
    assert slug("11. The compiled echo step") == "11-the-compiled-echo-step"
    assert slug("Behind HAProxy: the PROXY protocol") == "behind-haproxy-the-proxy-protocol"
    assert slug("[Unreleased — 0.2.0]") == "unreleased--020"
    assert slug("Tasks and time") == "tasks-and-time"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = os.path.relpath(ROOT / "docs" / "library.md", tmp_path)
    (tmp_path / "page.md").write_text(
        "# Title\n\n## A section\n\n"
        f"[fine]({page}) [fine]({page}#streams) [fine](#a-section) [fine](#title) [web](https://example.org/x)\n"
        "[gone](no-such-file.md) [no heading](#nowhere) `[in code](ignored.md)` [absolute](/etc/passwd)\n"
        f"[no heading there]({page}#nowhere)\n\n"
        "```\n[in a block](ignored.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(tmp_path / "page.md")
    assert len(problems) == 4, problems
    assert [problem.split(":")[0] for problem in problems] == [
        "no-such-file.md",
        "#nowhere",
        "/etc/passwd",
        f"{page}#nowhere",
    ]


def test_a_name_that_does_not_import_is_found() -> None:
    assert resolve("yieldio.servers.stream.serve") is not None
    assert resolve("yieldio.ServerOptions") is not None
    for wrong in ("yieldio.apps.echo", "yieldio.sockets", "yieldio.servers.tcp", "yieldio.NoSuchName"):
        with pytest.raises((ImportError, AttributeError)):
            resolve(wrong)

"""The README is a short user guide whose examples run against the current code.

It stays under 12,000 bytes, opens (after the title and a short intro) with the two
set-up commands and imports only names the package defines; it and the pages in
``docs/`` name only CLI subcommands and options that exist, and none of their relative
links points to a missing file.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from lrsvqa.app.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_BYTES = 12_000

FENCE = re.compile(r"^```([\w+-]*)\s*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`\n]+`")
# `lrsvqa` as a command word: not `lrsvqa.x` (a module) nor `lrsvqa[geo]` (an extra).
COMMAND = re.compile(r"(?<![\w./-])lrsvqa\)?\"?(?![\w.\[/-])")


def _markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _without_code(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _cli() -> Any:
    """The click group typer builds (typer may carry its own copy of click: duck-typed)."""
    command = typer.main.get_command(app)
    assert hasattr(command, "commands"), "the lrsvqa app is a group of subcommands"
    return command


def _option_names(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def _invocations(text: str) -> list[list[str]]:
    """Each ``lrsvqa ...`` command line in the fenced shell blocks and inline code of ``text``.

    A command is the words after ``lrsvqa`` up to the end of its line (continuations
    joined), a pipe, ``;`` or ``&&``; shell comments are left out.
    """
    snippets = []
    for match in FENCE.finditer(text):
        if match.group(1) in ("", "bash", "sh", "shell", "console"):
            snippets.extend(match.group(2).replace("\\\n", " ").splitlines())
    snippets.extend(code.strip("`") for code in INLINE_CODE.findall(_without_fences(text)))
    found = []
    for line in snippets:
        line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0]  # drop a shell comment
        for start in COMMAND.finditer(line):
            rest = re.split(r"[|;]|&&", line[start.end() :], maxsplit=1)[0]
            try:
                words = shlex.split(rest)
            except ValueError:
                words = rest.split()
            found.append(words)
    return found


def _without_fences(text: str) -> str:
    return FENCE.sub("", text)


def test_readme_is_at_most_12000_bytes() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, (
        f"README.md is {size:,} bytes (at most {MAX_README_BYTES:,}); move detail to docs/"
    )


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.startswith("# "), "README.md starts with its title"
    first_fence = FENCE.search(text)
    assert first_fence is not None, "README.md has no code block"
    before = text[: first_fence.start()]
    assert "\n## " not in before, "the two commands come before the first section"
    assert len(before.encode()) <= 2_000, "the intro before the two commands stays short"
    lines = [
        line.split("#", 1)[0].strip()
        for line in first_fence.group(2).splitlines()
        if line.split("#", 1)[0].strip()
    ]
    assert lines[:2] == ["make demo", "make test"], (
        f"the first code block opens with `make demo` and `make test`, not {lines[:2]}"
    )


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path: Path) -> None:
    missing = []
    for target in LINK.findall(_without_code(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (path.parent / file_part).resolve()
        if not resolved.exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_registered_commands_and_their_options_are_named(path: Path) -> None:
    cli = _cli()
    invocations = _invocations(path.read_text(encoding="utf-8"))
    if path == README:
        assert invocations, "README.md shows no lrsvqa command"
    global_options = _option_names(cli)
    problems = []
    for words in invocations:
        while words and words[0].startswith("-"):
            if words[0].split("=", 1)[0] not in global_options:
                problems.append(f"unknown global option {words[0]}")
            words = words[1:]
        if not words:
            continue
        name = words[0]
        command = cli.commands.get(name)
        if command is None:
            problems.append(f"`lrsvqa {name}` is not a registered command ({sorted(cli.commands)})")
            continue
        options = _option_names(command)
        for word in words[1:]:
            option = word.strip("[]").split("=", 1)[0]
            if option.startswith("--") and option not in options:
                problems.append(f"`lrsvqa {name}` has no option {option}")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_readme_python_examples_import_names_the_package_defines() -> None:
    blocks = [m.group(2) for m in FENCE.finditer(README.read_text(encoding="utf-8"))]
    python = [
        block for lang, block in zip(_fence_languages(), blocks, strict=True) if lang == "python"
    ]
    assert python, "README.md shows no Python example"
    problems = []
    for block in python:
        for node in ast.walk(ast.parse(block)):
            if not (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("lrsvqa")
            ):
                continue
            defined = _top_level_names(node.module)
            if defined is None:
                problems.append(f"no module {node.module}")
                continue
            problems.extend(
                f"{node.module} defines no {alias.name}"
                for alias in node.names
                if alias.name not in defined
            )
    assert not problems, "\n".join(problems)


def _fence_languages() -> list[str]:
    return [m.group(1) for m in FENCE.finditer(README.read_text(encoding="utf-8"))]


def _top_level_names(module: str) -> set[str] | None:
    base = ROOT / "src" / Path(*module.split("."))
    path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
    if not path.exists():
        return None
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names

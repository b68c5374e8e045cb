"""The docs' examples work as written: the Python blocks run, and every `mpinn` command
line in them names a real command with real options."""

import re
import shlex
from pathlib import Path

import pytest

from mpinn.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(path: Path, language: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(path.read_text()) if kind == language]


def command_lines():
    """(doc, line) for each `mpinn ...` command in the docs' shell blocks."""
    for path in DOCS:
        for body in blocks(path, "sh"):
            for line in body.replace("\\\n", " ").splitlines():
                words = shlex.split(line.split(" #")[0], comments=True)
                if "mpinn" in words:
                    yield path.name, words[words.index("mpinn") + 1:]


@pytest.mark.parametrize("doc, words", list(command_lines()),
                         ids=lambda item: " ".join(item) if isinstance(item, list) else item)
def test_every_documented_command_and_option_exists(doc, words):
    if not words or words[0] in ("--help", "-h", "--version"):
        return
    command = cli.commands.get(words[0])
    assert command is not None, f"{doc}: no command mpinn {words[0]}"
    options = {name for parameter in command.params for name in parameter.opts}
    for word in words[1:]:
        if word.startswith("-"):
            assert word.split("=")[0] in options | {"--help", "-h"}, (
                f"{doc}: mpinn {words[0]} has no option {word}")


@pytest.mark.parametrize("doc, index", [("README.md", 0), ("python-api.md", 0)])
def test_the_python_examples_run(doc, index, tmp_path, monkeypatch):
    path = next(path for path in DOCS if path.name == doc)
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks(path, "python")[index], str(path), "exec"), {"__name__": "__doc__"})

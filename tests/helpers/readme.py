"""Reading README.md the way the docs-truth tests need it: a section's text by its
heading, the YAML blocks in it, the rows of its tables.

Sections are found by their heading's exact title, so a renamed heading fails the
tests loudly (a missing section) instead of letting them check nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

README = Path(__file__).resolve().parents[2] / "README.md"

_HEADING = re.compile(r"^(#{1,6}) (.+)$")
_FENCE = re.compile(r"^```(\w*)$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def _lines_outside_code(text: str) -> list[tuple[str, bool]]:
    """Every line, with whether it lies inside a fenced code block (a ``#`` comment
    in a YAML block is not a heading)."""
    inside = False
    marked = []
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if fence is not None:
            marked.append((line, True))
            inside = not inside
            continue
        marked.append((line, inside))
    return marked


def section(title: str, text: str | None = None) -> str:
    """The text under the heading ``title`` up to the next heading of its level or
    a higher one (its subsections included)."""
    lines = _lines_outside_code(readme_text() if text is None else text)
    start = level = None
    for index, (line, in_code) in enumerate(lines):
        heading = None if in_code else _HEADING.match(line)
        if heading is None:
            continue
        if start is None:
            if heading.group(2).strip() == title:
                start, level = index + 1, len(heading.group(1))
        elif level is not None and len(heading.group(1)) <= level:
            return "\n".join(line for line, _ in lines[start:index])
    if start is None:
        raise AssertionError(f"README.md has no section titled {title!r}")
    return "\n".join(line for line, _ in lines[start:])


def yaml_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```yaml blocks in ``text``, in order."""
    blocks: list[str] = []
    body: list[str] | None = None
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if body is None:
            if fence is not None and fence.group(1) == "yaml":
                body = []
        elif fence is not None:
            blocks.append("\n".join(body))
            body = None
        else:
            body.append(line)
    return blocks


def load_yaml(block: str) -> Any:
    return yaml.safe_load(block)


def table_first_cells(text: str) -> list[str]:
    """The first cell of every table row in ``text`` (header and separator rows
    included), with escaped pipes (``\\|``) unescaped."""
    cells = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        parts = _CELL_SPLIT.split(line)
        if len(parts) > 2:
            cells.append(parts[1].strip().replace("\\|", "|"))
    return cells

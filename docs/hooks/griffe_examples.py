"""Griffe extension: jlstm's docstring examples and literal blocks render as code, not as prose.

Two reStructuredText habits of jlstm's docstrings would otherwise reach the API pages as text:

* the singular ``Example:`` heading: Griffe's Google-style parser knows ``Examples:`` only, and
  the singular becomes a Markdown admonition, where ``>>>`` lines are text and ``x[0]`` reads as a
  link reference. It is renamed, so the examples render as the Python code that
  ``tests/test_doctests.py`` runs;
* literal blocks: a paragraph ending in ``::`` followed by an indented block. Markdown has no such
  thing, so the ``::`` stayed in the sentence and the block was flattened into it. Each becomes a
  fenced code block (``pycon`` for ``>>>`` sessions, ``python`` for code that parses, ``text``
  otherwise), and the ``::`` becomes ``:`` as reStructuredText prints it.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.M)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _language(block: list[str]) -> str:
    code = textwrap.dedent("\n".join(block))
    if code.lstrip().startswith(">>>"):
        return "pycon"
    try:
        ast.parse(code)
    except SyntaxError:
        return "text"
    return "python"


def _literal_block(lines: list[str], start: int) -> tuple[list[str], int] | None:
    """The indented block after the ``::`` line ``start``, and the index after it; ``None`` if none."""
    indent = _indent(lines[start])
    first = start + 1
    while first < len(lines) and not lines[first].strip():
        first += 1
    if first == start + 1 or first >= len(lines) or _indent(lines[first]) <= indent:
        return None                                   # no blank line, or nothing indented: not a block
    end = first
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
        end += 1
    while not lines[end - 1].strip():
        end -= 1
    return lines[first:end], end


def rst_literals_to_fences(text: str) -> str:
    """Every ``paragraph::`` + indented block of ``text`` as ``paragraph:`` + a fenced code block."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        found = _literal_block(lines, i) if line.rstrip().endswith("::") else None
        if found is None:
            out.append(line)
            i += 1
            continue
        block, i = found
        intro = line.rstrip()[:-2]
        intro = intro.rstrip() if intro.endswith(" ") or not intro.strip() else intro + ":"
        pad = " " * _indent(line)
        base = min(_indent(b) for b in block if b.strip())
        if intro.strip():
            out += [intro, ""]
        out += [pad + "```" + _language(block), *[pad + b[base:] if b.strip() else "" for b in block], pad + "```"]
    return "\n".join(out)


class SingularExamples(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = rst_literals_to_fences(obj.docstring.value)
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", text)

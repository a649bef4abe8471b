"""The fenced ```python blocks of a Markdown file, grouped and run as a reader would run them.

The convention (stated in the README and in docs/testing.md): a block runs in a fresh namespace,
unless its first line is ``# continues the previous block``; then it runs in the namespace of the
block before it. ``tests/test_readme.py`` runs the README's blocks with it, and
``tests/test_docs_examples.py`` those of the documentation pages.
"""

from __future__ import annotations

import re
from pathlib import Path

CONTINUES = "# continues the previous block"  # the rest of the line is free text


class Block:
    def __init__(self, code: str, line: int, heading: str):
        self.code, self.line, self.heading = code, line, heading


def python_blocks(text: str, name: str = "README.md") -> list[Block]:
    """The ```python blocks of a Markdown text, with the line of their first code line and their heading."""
    blocks, heading, code, start = [], "top", None, 0
    for i, line in enumerate(text.splitlines(), start=1):
        if code is None:
            if line.startswith("#") and not line.startswith("#!"):
                heading = line.lstrip("#").strip()
            elif line.strip() == "```python":
                code, start = [], i + 1
        elif line.strip() == "```":
            blocks.append(Block("\n".join(code) + "\n", start, heading))
            code = None
        else:
            code.append(line)
    if code is not None:
        raise ValueError(f"{name}: the ```python block opened at line {start - 1} is never closed.")
    return blocks


def groups(blocks: list[Block], name: str = "README.md") -> list[list[Block]]:
    """Blocks joined into runs: a block that starts with the continuation comment joins the run before it."""
    out: list[list[Block]] = []
    for b in blocks:
        if b.code.lstrip().startswith(CONTINUES):
            if not out:
                raise ValueError(f"{name} line {b.line}: the first python block cannot continue another.")
            out[-1].append(b)
        else:
            out.append([b])
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


def run_group(group: list[Block], path: Path, tmp_path: Path, monkeypatch) -> dict:
    """Run one group of blocks in a fresh directory, with matplotlib's file backend and quick mode;
    tracebacks point at the Markdown file's lines. Returns the namespace."""
    monkeypatch.chdir(tmp_path)  # checkpoints and other files land in a fresh directory
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JLSTM_QUICK", "1")
    namespace: dict = {"__name__": "__markdown__"}
    try:
        for block in group:
            exec(compile("\n" * (block.line - 1) + block.code, str(path), "exec"), namespace)
    finally:
        try:
            import matplotlib.pyplot as plt

            plt.close("all")
        except ImportError:  # pragma: no cover - matplotlib is in the dev extra
            pass
    return namespace

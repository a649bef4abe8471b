"""Every fenced ```python block in README.md runs as written, so the README cannot rot.

The convention (stated in the README's "Layout" section): a block runs in a fresh namespace,
unless its first line is ``# continues the previous block``; then it runs in the namespace of
the block before it. Each group of blocks runs in a fresh temporary working directory, with
matplotlib on its file-only backend and ``JLSTM_QUICK=1``. A test per group, named after the
README heading and line of its first block.
"""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
CONTINUES = "# continues the previous block"  # the rest of the line is free text


class Block:
    def __init__(self, code: str, line: int, heading: str):
        self.code, self.line, self.heading = code, line, heading


def python_blocks(text: str) -> list[Block]:
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
        raise ValueError(f"README.md: the ```python block opened at line {start - 1} is never closed.")
    return blocks


def groups(blocks: list[Block]) -> list[list[Block]]:
    """Blocks joined into runs: a block that starts with the continuation comment joins the run before it."""
    out: list[list[Block]] = []
    for b in blocks:
        if b.code.lstrip().startswith(CONTINUES):
            if not out:
                raise ValueError(f"README.md line {b.line}: the first python block cannot continue another.")
            out[-1].append(b)
        else:
            out.append([b])
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


GROUPS = groups(python_blocks(README.read_text(encoding="utf-8")))

# What some examples must produce, beyond running without an error (keyed by the README heading).
CHECKS = {
    "Ten lines": lambda ns: ns["ys"].shape == (50, 8, 64) and ns["grads"].w_c.shape == (64, 192),
    "Layers": lambda ns: ns["ys"].shape == (50, 8, 64),
}


def test_parser_finds_blocks_headings_and_continuations():
    text = "# A\n```python\nx = 1\n```\n```bash\nls\n```\n## B\n```python\n" + CONTINUES + "\ny = x\n```\n" \
           "```python\nz = 2\n```\n"
    blocks = python_blocks(text)
    assert [(b.line, b.heading) for b in blocks] == [(3, "A"), (10, "B"), (14, "B")]
    assert [[b.line for b in g] for g in groups(blocks)] == [[3, 10], [14]]
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("```python\nx = 1\n")
    assert len(GROUPS) >= 8  # the README's examples are all found
    assert set(CHECKS) <= {g[0].heading for g in GROUPS}


@pytest.mark.parametrize("group", GROUPS, ids=[f"L{g[0].line}_{_slug(g[0].heading)}" for g in GROUPS])
def test_readme_block_runs(group, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints and other files land in a fresh directory
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JLSTM_QUICK", "1")
    namespace: dict = {"__name__": "__readme__"}
    for block in group:
        # line numbers in tracebacks point into README.md
        code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
        exec(code, namespace)
    check = CHECKS.get(group[0].heading)
    assert check is None or check(namespace), f"README.md line {group[0].line}: unexpected results"
    try:
        import matplotlib.pyplot as plt

        plt.close("all")
    except ImportError:  # pragma: no cover - matplotlib is in the dev extra
        pass

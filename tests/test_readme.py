"""Every fenced ```python block in README.md runs as written, so the README cannot rot.

The blocks are grouped by ``tests/markdown_blocks.py`` (a block that starts with ``# continues the
previous block`` runs in the namespace of the block before it). Each group runs in a fresh temporary
working directory, with matplotlib on its file-only backend and ``JLSTM_QUICK=1``: a test per group,
named after the README heading and line of its first block.
"""

from __future__ import annotations

import pathlib

import pytest
from markdown_blocks import CONTINUES, groups, python_blocks, run_group, slug

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
GROUPS = groups(python_blocks(README.read_text(encoding="utf-8")))

# What the examples must produce, beyond running without an error: by README heading, one check per
# example under that heading, in order.
CHECKS = {
    "Ten lines": [lambda ns: ns["ys"].shape == (50, 8, 64) and ns["grads"].w_c.shape == (64, 192)],
    "Write your own cell": [
        lambda ns: ns["ys"].shape == (20, 4, 32) and float(abs(ns["ys"][3:, 2]).max()) == 0.0,
        lambda ns: ns["fast"].shape == (1000, 4, 16) and float(abs(ns["fast"] - ns["slow"]).max()) < 1e-4,
    ],
    "Resets inside a sequence": [
        lambda ns: ns["ys"].shape == (128, 16, 32) and ns["ys_mlstm"].shape == (128, 16, 32)],
}


def _check(group) -> object:
    same = [g for g in GROUPS if g[0].heading == group[0].heading]
    return CHECKS[group[0].heading][same.index(group)]


def test_parser_finds_blocks_headings_and_continuations():
    text = "# A\n```python\nx = 1\n```\n```bash\nls\n```\n## B\n```python\n" + CONTINUES + "\ny = x\n```\n" \
           "```python\nz = 2\n```\n"
    blocks = python_blocks(text)
    assert [(b.line, b.heading) for b in blocks] == [(3, "A"), (10, "B"), (14, "B")]
    assert [[b.line for b in g] for g in groups(blocks)] == [[3, 10], [14]]
    with pytest.raises(ValueError, match="never closed"):
        python_blocks("```python\nx = 1\n")
    with pytest.raises(ValueError, match="cannot continue"):
        groups(python_blocks("```python\n" + CONTINUES + "\n```\n"))
    assert set(CHECKS) == {g[0].heading for g in GROUPS}   # the README's examples are all found, and checked
    assert all(len(CHECKS[h]) == sum(g[0].heading == h for g in GROUPS) for h in CHECKS)


@pytest.mark.parametrize("group", GROUPS, ids=[f"L{g[0].line}_{slug(g[0].heading)}" for g in GROUPS])
def test_readme_block_runs(group, tmp_path, monkeypatch):
    namespace = run_group(group, README, tmp_path, monkeypatch)
    assert _check(group)(namespace), f"README.md line {group[0].line}: unexpected results"

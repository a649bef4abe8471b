"""Every fenced ```python block of the documentation pages (docs/**/*.md) runs as written.

The same convention as the README's (``tests/markdown_blocks.py``): a block runs in a fresh namespace
unless it starts with ``# continues the previous block``, and each group runs in a fresh temporary
directory in quick mode. Code that is not meant to run (a signature, a shell command, a printed
line) is fenced as ``text`` or ``bash``. A test per group, named after its page, heading and line.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from markdown_blocks import groups, python_blocks, run_group, slug

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "notebooks" not in p.parts)
GROUPS = [(page, g) for page in PAGES
          for g in groups(python_blocks(page.read_text(encoding="utf-8"), page.name), page.name)]

# What some examples must produce, beyond running (keyed by page and heading).
CHECKS = {
    ("layers.md", "Layers"): lambda ns: ns["ys"].shape == (50, 8, 64),
    ("concepts.md", "Write your own cell"): lambda ns: ns["ys"].shape == ns["ys2"].shape == (20, 4, 32),
    ("training.md", "A train step and `fit`"): lambda ns: len(ns["history"].epoch_metric("eval_acc")) >= 1,
    ("training.md", "What `fit` prints"): lambda ns: ns["history"].loss.shape == (50,) and set(
        ns["jt"].evaluate(ns["loss_fn"], ns["params"], ns["held_out"])) == {"loss"},
    ("training.md", "Language models: stateful training and generation"): lambda ns: ns["tokens"].shape == (40, 1),
    ("min_rnn.md", "In use"): lambda ns: float(np.abs(ns["ys_par"] - ns["ys_seq"]).max()) < 1e-5,
    ("checkpoints.md", "Checkpoints"): lambda ns: ns["meta"] == {"hidden": 64},
}


def test_the_pages_examples_are_found():
    found = {(page.name, g[0].heading) for page, g in GROUPS}
    assert set(CHECKS) <= found, set(CHECKS) - found
    pages = {page.name for page, _ in GROUPS}
    assert {"concepts.md", "layers.md", "training.md", "interop.md", "scale.md", "parallel_in_time.md",
            "checkpoints.md", "index.md", "slstm.md", "mlstm.md", "min_rnn.md"} <= pages


@pytest.mark.parametrize("page, group", GROUPS,
                         ids=[f"{p.stem}_L{g[0].line}_{slug(g[0].heading)}" for p, g in GROUPS])
def test_docs_block_runs(page, group, tmp_path, monkeypatch):
    namespace = run_group(group, page, tmp_path, monkeypatch)
    check = CHECKS.get((page.name, group[0].heading))
    assert check is None or check(namespace), f"{page} line {group[0].line}: unexpected results"

"""Griffe extension: read jlstm's ``Example:`` sections as examples (code), not as prose.

Griffe's Google-style parser knows ``Examples:`` only; the singular ``Example:`` that jlstm's
docstrings use becomes a Markdown admonition, where ``>>>`` lines are text and ``x[0]`` reads as a
link reference. The heading is renamed before the docstring is parsed, so the examples render as
Python code, the same code that ``tests/test_doctests.py`` runs.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.M)


class SingularExamples(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)

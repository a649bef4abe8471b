"""MkDocs hook: show the docstrings' Sphinx roles (``:func:`scan```) as plain code.

jlstm's docstrings cross-reference with Sphinx roles, which mkdocstrings' Google parser leaves as
text, so the API pages would read ":func:scan". The role prefix is dropped; the code stays.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):(?=<code>)")


def on_post_page(output: str, page, config) -> str:
    return _ROLE.sub("", output)

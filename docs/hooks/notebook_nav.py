"""MkDocs hook: the "Notebooks" section of the nav lists every ``notebooks/NN_name.ipynb``.

Each entry is titled with the notebook's first Markdown heading, so a new notebook shows up in the
site without an edit to ``mkdocs.yml`` (whose strict build would otherwise fail on a page missing
from the nav).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_HEADING = re.compile(r"^#\s+(.+?)\s*$", re.M)


def _title(path: Path) -> str:
    for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", []):
        if cell.get("cell_type") == "markdown":
            found = _HEADING.search("".join(cell.get("source", [])))
            if found:
                return found.group(1)
    return path.stem.split("_", 1)[-1].replace("_", " ").capitalize()


def on_config(config):
    folder = Path(config["docs_dir"]) / "notebooks"
    entries = [{_title(p): f"notebooks/{p.name}"} for p in sorted(folder.glob("*.ipynb"))]
    for item in config["nav"]:
        if isinstance(item, dict) and "Notebooks" in item:
            item["Notebooks"] = entries
    return config

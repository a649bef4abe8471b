"""MkDocs hook: serve KaTeX from the site itself, so that the docs render maths offline.

KaTeX comes from the npm registry at a pinned version (``npm install`` into ``build/docs-vendor``
the first time the site is built; set ``JLSTM_KATEX_DIST`` to use a copy elsewhere). Nothing of it
is committed. Its script, stylesheet, auto-render extension and fonts are added to the site under
``assets/katex/``; ``docs/javascripts/katex-init.js`` renders the ``arithmatex`` spans with it.

The notebook pages (mkdocs-jupyter) would load MathJax from a CDN: that block is removed, and the
same KaTeX renders their ``$...$`` maths. After the build, every page is checked for scripts,
stylesheets or images fetched from another host, and the build fails if one is found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

KATEX_VERSION = "0.16.22"
_REPO = Path(__file__).resolve().parents[2]
_VENDOR = _REPO / "build" / "docs-vendor"
_ASSETS = "assets/katex"
_NOTEBOOK_MATHJAX = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
_REMOTE = re.compile(r"<(?:script|img|link)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//[^>]*>", re.I)


def katex_dist() -> Path:
    """The folder holding ``katex.min.js``; installs KaTeX with npm when it is missing."""
    env = os.environ.get("JLSTM_KATEX_DIST")
    dist = Path(env) if env else _VENDOR / "node_modules" / "katex" / "dist"
    if (dist / "katex.min.js").is_file():
        return dist
    if env:
        raise PluginError(f"JLSTM_KATEX_DIST={env} has no katex.min.js; point it at the dist/ folder of the "
                          f"npm package katex@{KATEX_VERSION}, or unset it to install KaTeX automatically.")
    npm = shutil.which("npm")
    if npm is None:
        raise PluginError("The docs render maths with KaTeX from the npm registry, but npm is not on PATH. "
                          "Install Node.js and npm (Debian: apt-get install -y nodejs npm), or set "
                          "JLSTM_KATEX_DIST to the dist/ folder of an installed katex package.")
    _VENDOR.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--no-save", "--no-package-lock", "--no-audit", "--no-fund", "--prefix", str(_VENDOR),
           f"katex@{KATEX_VERSION}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not (dist / "katex.min.js").is_file():
        raise PluginError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return dist


def on_files(files: Files, config) -> Files:
    dist = katex_dist()
    wanted = ["katex.min.js", "katex.min.css", "contrib/auto-render.min.js"]
    wanted += [f"fonts/{p.name}" for p in sorted((dist / "fonts").iterdir())]
    for rel in wanted:
        files.append(File.generated(config, f"{_ASSETS}/{rel}", abs_src_path=str(dist / rel)))
    return files


def on_post_page(output: str, page, config) -> str:
    return _NOTEBOOK_MATHJAX.sub("", output)


def on_post_build(config) -> None:
    site = Path(config["site_dir"])
    offenders = []
    for html in sorted(site.rglob("*.html")):
        for tag in _REMOTE.findall(html.read_text(encoding="utf-8")):
            offenders.append(f"{html.relative_to(site)}: {tag[:160]}")
    if offenders:
        raise PluginError("These pages fetch from another host, but the docs must work offline:\n"
                          + "\n".join(offenders[:20]))

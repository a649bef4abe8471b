"""The documentation site: it builds strictly, renders in a real browser, and documents every public symbol.

The site is built once per test module with ``mkdocs build --strict`` (or taken from
``JLSTM_DOCS_SITE``, a folder that ``.ci/run`` has just built), served on loopback, and opened in
Debian's headless Chromium: the DOM after the page's scripts ran must hold the title, the API
entries and KaTeX's rendered maths, and a screenshot must show a drawn page. The built HTML is also
read directly: the API pages keep no reStructuredText ``::`` in their text and show the docstrings'
examples as code, the links are files (the site works opened from disk), long code lines wrap,
every public namespace has an API page, and the Training page covers the language model.

Two system programs are needed: Chromium (Debian's ``chromium``) and, for the first docs build,
``npm``. Outside CI a test that misses one skips and names the package; with ``CI=true`` it fails.
"""

from __future__ import annotations

import functools
import html
import http.server
import importlib
import inspect
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]



BROWSERS = ("chromium", "chromium-browser", "google-chrome")
KATEX = ROOT / "build" / "docs-vendor" / "node_modules" / "katex" / "dist" / "katex.min.js"


def require_program(names: tuple[str, ...], package: str, why: str) -> str:
    """The path of the first of ``names`` on PATH. Missing: a skip that names the Debian package, or,
    under ``CI=true``, a failure (CI must never pass by skipping)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = (f"{why} needs {' or '.join(names)}, which is not on PATH: install Debian's {package} "
               f"(apt-get update && apt-get install -y {package}; .ci/run installs it when it is missing).")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _chromium() -> str:
    return require_program(BROWSERS, "chromium", "Opening the docs site in a browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    given = os.environ.get("JLSTM_DOCS_SITE")
    if given:
        path = Path(given)
        assert (path / "index.html").is_file(), f"JLSTM_DOCS_SITE={given} holds no built site (no index.html)."
        return path
    if not os.environ.get("JLSTM_KATEX_DIST") and not KATEX.is_file():
        require_program(("npm",), "npm", "The first docs build (KaTeX comes from the npm registry)")
    path = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(path)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return path


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# The pages opened in the browser: (page, whether to screenshot it).
BROWSED = {"index": "index.html", "api": "api/jlstm.html", "lstm": "cells/lstm.html"}
SHOT = ("index", "api")


@pytest.fixture(scope="module")
def browsed(server, tmp_path_factory) -> dict[str, tuple[str, Path | None]]:
    """Each page of BROWSED loaded in headless Chromium: its DOM after the scripts ran (``--dump-dom``)
    and, for SHOT, a screenshot. Chromium cannot do both in one process, so all the processes run
    side by side."""
    chromium = _chromium()
    out = tmp_path_factory.mktemp("browser")
    budget = "--virtual-time-budget=4000"   # let the deferred scripts (KaTeX) run before the dump
    doms, shots = {}, {}
    for key, page in BROWSED.items():
        url = f"{server}/{page}"
        doms[key] = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={out / (key + '-dom')}", budget, "--dump-dom", url],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if key in SHOT:
            shots[key] = subprocess.Popen(
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={out / (key + '-shot')}", budget,
                 "--window-size=1280,900", "--hide-scrollbars", f"--screenshot={out / (key + '.png')}", url],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = {}
    for key, proc in doms.items():
        dom, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0 and dom, f"chromium --dump-dom {BROWSED[key]} failed (exit {proc.returncode})."
        result[key] = (dom, None)
    for key, proc in shots.items():
        proc.wait(timeout=90)
        png = out / (key + ".png")
        assert png.is_file(), f"chromium wrote no screenshot of {BROWSED[key]}."
        result[key] = (result[key][0], png)
    return result


def _assert_drawn(png: Path | None) -> None:
    """The screenshot is a drawn page, not a blank window: many distinct colours."""
    from PIL import Image

    assert png is not None
    with Image.open(png) as img:
        assert img.size == (1280, 900), img.size
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, f"{png.name} looks blank ({len(colours or [])} colours)."


def _tex_left(dom: str) -> str:
    """The page's text outside KaTeX's own annotations (which keep the TeX source on purpose)."""
    return re.sub(r"<annotation.*?</annotation>", "", dom, flags=re.S)


def _check_index(dom: str, png: Path | None) -> None:
    assert re.search(r"<title>\s*jlstm\s*</title>", dom), "the index page's title is not 'jlstm'"
    assert "Two commands" in dom and "Ten lines" in dom
    # KaTeX replaced the TeX source by its markup: rendered display maths, with its MathML twin.
    assert dom.count('class="katex-display"') >= 1, "no rendered display equation on the index page"
    assert "<math" in dom and "\\odot" not in _tex_left(dom), "TeX source left unrendered on the index page"
    assert 'class="katex-error"' not in dom
    _assert_drawn(png)


def _check_api_page(dom: str, png: Path | None) -> None:
    assert re.search(r"<title>\s*jlstm\b[^<]*</title>", dom), "the API page has no jlstm title"
    for name in ("jlstm.scan", "jlstm.lstm", "jlstm.Cell", "jlstm.stack", "jlstm.LSTMParams"):
        assert f'id="{name}"' in dom, f"the API page has no entry for {name}"
    assert 'class="doc doc-heading"' in dom
    assert ":func:" not in dom, "Sphinx roles leaked into the API page"
    _assert_drawn(png)


def _check_cell_page(dom: str) -> None:
    assert dom.count('class="katex-display"') >= 3, "the LSTM page's display equations did not render"
    assert 'class="katex-error"' not in dom, "KaTeX could not parse an equation on the LSTM page"
    assert "\\sigma" not in _tex_left(dom), "TeX source left unrendered on the LSTM page"


def test_pages_render_in_chromium(browsed):
    """The index (title, rendered maths, screenshot), the API page of ``jlstm`` (title, entries,
    screenshot) and the LSTM page (its equations). One test, so that under pytest-xdist the
    browser runs once."""
    _check_index(*browsed["index"])
    _check_api_page(*browsed["api"])
    _check_cell_page(browsed["lstm"][0])


def _inventory(site: Path) -> set[str]:
    data = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):                                  # four text lines, then the zlib body
        header_end = data.index(b"\n", header_end) + 1
    body = zlib.decompress(data[header_end:]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if line}


def _public_modules() -> list[str]:
    """jlstm and every module under it with no underscore in its path."""
    import jlstm

    names = ["jlstm"]
    for info in pkgutil.walk_packages(jlstm.__path__, "jlstm."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def _documented_as(module_name: str, name: str) -> set[str]:
    """The names under which a public symbol may be documented: where it is exported, in any package
    above that (``jlstm.train`` re-exports ``jlstm.train.step``'s functions), or where it is defined
    (``jlstm.train.fit`` is both a submodule and the function ``jlstm.train.fit.fit``)."""
    parts = module_name.split(".")
    names = {".".join(parts[:k] + [name]) for k in range(1, len(parts) + 1)}
    obj = getattr(importlib.import_module(module_name), name)
    if inspect.isfunction(obj) or inspect.isclass(obj):
        names.add(f"{obj.__module__}.{obj.__qualname__}")
    return names


def test_every_public_symbol_is_in_the_api_reference(site):
    """Every name in the ``__all__`` of jlstm and of its public modules has an entry in the API
    reference (its objects.inv is built from the rendered pages' anchors). Names that re-export another
    library's typing helper (``typing.Unpack``, jax's ``DTypeLike``) are that library's to document."""
    inventory = _inventory(site)
    missing = []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            if getattr(getattr(module, name), "__module__", "jlstm") == "typing":
                continue
            if not _documented_as(module_name, name) & inventory:
                missing.append(f"{module_name}.{name}")
    assert not missing, (f"public symbols missing from the API reference: {missing}; document them on a "
                         f"page under docs/api/ (listed in mkdocs.yml's nav)")


def test_the_site_works_offline(site):
    """No page fetches a script, stylesheet or image from another host; KaTeX is served by the site."""
    remote = re.compile(r"<(?:script|img|link)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//", re.I)
    offenders = [str(p.relative_to(site)) for p in site.rglob("*.html") if remote.search(p.read_text("utf-8"))]
    assert not offenders, f"pages that fetch from another host: {offenders}"
    for asset in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js", "fonts/KaTeX_Main-Regular.woff2"):
        assert (site / "assets" / "katex" / asset).is_file(), f"the site lacks assets/katex/{asset}"


def test_notebooks_are_rendered_with_their_stored_outputs(site):
    page = (site / "notebooks" / "01_quickstart.html").read_text(encoding="utf-8")
    assert "jp-OutputArea" in page or "output_area" in page, "the quickstart notebook page shows no outputs"
    assert "mathjax" not in page.lower(), "the notebook page still loads MathJax"


def _text(page: str) -> str:
    """A page's visible prose: without its code, scripts and styles, tags removed, entities decoded."""
    page = re.sub(r"<(pre|code|script|style|textarea)\b.*?</\1>", " ", page, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_api_pages_keep_no_rst_literal_markers(site):
    """A docstring's ``paragraph::`` + indented block becomes a code block (docs/hooks/griffe_examples.py):
    no ``::`` is left in the prose of any API page."""
    offenders = {}
    for page in sorted((site / "api").glob("*.html")):
        found = re.findall(r".{0,50}::(?![\w:]).{0,10}", _text(page.read_text("utf-8")))
        if found:
            offenders[page.name] = found[:3]
    assert not offenders, f"API pages with a stray '::' in their text: {offenders}"


def test_docstring_examples_are_code_blocks(site):
    """The jlstm.Cell example (a literal block) and a function's ``Example:`` section are inside <pre>."""
    page = (site / "api" / "jlstm.html").read_text("utf-8")
    blocks = [html.unescape(re.sub(r"<[^>]+>", "", b)) for b in re.findall(r"<pre\b.*?</pre>", page, flags=re.S)]
    assert any(">>> cell = jlstm.Cell(init=init, initial_state=initial_state" in b for b in blocks), \
        "the jlstm.Cell example is not a code block on the API page"
    assert any(">>> jlstm.count_params(params)" in b for b in blocks), "an Example: section is not code"
    launch = (site / "api" / "launch.html").read_text("utf-8")
    assert "python -m jlstm.launch --local 2 --local-device-count 2 -- train.py" in \
        html.unescape(re.sub(r"<[^>]+>", "", "".join(re.findall(r"<pre\b.*?</pre>", launch, flags=re.S))))


def test_the_sites_links_are_files_so_it_works_from_disk(site):
    """use_directory_urls is off: every internal link of index.html names a file that exists."""
    page = (site / "index.html").read_text("utf-8")
    hrefs = [html.unescape(h) for h in re.findall(r"<a\b[^>]*\bhref=\"([^\"]*)\"", page)]
    internal = [h.split("#")[0] for h in hrefs if not re.match(r"[a-z]+:|//|#", h)]
    internal = [h for h in internal if h]
    assert len(internal) > 20, internal
    bad = [h for h in internal if h.endswith("/") or not (site / h).is_file()]
    assert not bad, f"index.html links that are directories or missing files: {bad}"
    assert "api/tasks.html" in internal and "training.html" in internal


def test_long_code_lines_wrap(site):
    """The site's stylesheet wraps code blocks (pre > code), and every page loads it."""
    css = re.sub(r"/\*.*?\*/", "", (site / "stylesheets" / "extra.css").read_text("utf-8"), flags=re.S)
    rules = dict(re.findall(r"([^{}]+)\{([^}]*)\}", css))
    wrapping = [sel for sel, body in rules.items() if re.search(r"white-space:\s*pre-wrap", body)]
    assert any(".md-typeset pre > code" in sel for sel in wrapping), rules
    for page in ("index.html", "api/jlstm.html", "notebooks/01_quickstart.html"):
        assert "stylesheets/extra.css" in (site / page).read_text("utf-8"), page


def test_every_public_namespace_has_an_api_page(site):
    """jlstm and each namespace users import (jlstm.train, jlstm.tasks, jlstm.parallel, ...) has a page
    titled with its name, listed in the site's navigation."""
    import jlstm

    namespaces = ["jlstm"] + [f"jlstm.{name}" for name in jlstm._SUBMODULES]
    nav = (site / "index.html").read_text("utf-8")
    missing = []
    for name in namespaces:
        page = site / "api" / f"{name.split('.')[-1]}.html"
        if not page.is_file() or f"<code>{name}</code>" not in page.read_text("utf-8") or \
                f'href="api/{page.name}"' not in nav:
            missing.append(name)
    assert not missing, f"public namespaces without an API page in the navigation: {missing}"


def test_the_training_page_covers_language_models_stateful_training_and_preemption(site):
    text = _text((site / "training.html").read_text("utf-8"))
    code = (site / "training.html").read_text("utf-8")
    for needed in ("Language models: stateful training and generation", "truncated BPTT", "Preemption",
                   "SIGTERM", "scheduler reruns", "one line per epoch"):
        assert needed in text, needed
    for name in ("LanguageModel", "lm_chunks", "Carry", "generate", "make_stateful_train_step", "Preempted",
                 "evaluate", "count_params"):
        assert name in code, name


def test_a_missing_program_skips_outside_ci_and_fails_under_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if name == "chromium-browser" else None)
    assert require_program(BROWSERS, "chromium", "A test") == "/usr/bin/chromium-browser"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install Debian's chromium"):
        require_program(BROWSERS, "chromium", "A test")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y npm"):
        require_program(("npm",), "npm", "A test")

"""MkDocs hook: the API reference, one page per public module, generated from ``__all__``.

Every module of jlstm with no underscore in its path and an ``__all__`` is documented: ``jlstm``
and each top-level module ``jlstm.X`` get a page (``api/X.md``) listing their ``__all__``; a public
submodule (``jlstm.train.fit_state``) adds a section to its top-level page for the names that the
package above does not re-export. So a name added to an ``__all__`` appears in the reference with no
edit here, and ``tests/test_docs.py`` checks that none is missing.

A module that users import under another public name (``jlstm.tasks`` is ``jlstm.examples.tasks``,
see ``jlstm.core.aliases``) gets its page under that name, and not a section on its home page.

Two cases need care, because mkdocstrings reads the source statically:

* a name that is a submodule (``jlstm.train.losses``) gets its own section;
* a function that shadows its own submodule (``jlstm.train.fit`` is both the module
  ``jlstm/train/fit.py`` and the function in it) is documented where it is defined.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

from mkdocs.structure.files import File, Files

_OPTIONS = "    options:\n      show_root_heading: {root}\n      show_root_toc_entry: {root}\n"


def _public_modules() -> list[str]:
    import jlstm

    names = ["jlstm"]
    for info in pkgutil.walk_packages(jlstm.__path__, "jlstm."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def _exports(module: ModuleType) -> list[str]:
    return list(getattr(module, "__all__", ()))


def _block(target: str, members: list[str] | None, root: bool) -> str:
    text = f"::: {target}\n" + _OPTIONS.format(root=str(root).lower())
    if members == []:
        text += "      members: false\n"
    elif members is not None:
        text += "      members:\n" + "".join(f"        - {m}\n" for m in sorted(members))
    return text + "\n"


def _module_sections(name: str, names: list[str], root: bool) -> str:
    """The ``:::`` blocks documenting ``names`` of module ``name``."""
    module = importlib.import_module(name)
    plain, extra = [], []
    for attr in names:
        obj = getattr(module, attr)
        if inspect.ismodule(obj):
            extra.append(_block(obj.__name__, None, True))
        elif (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == f"{name}.{attr}":
            extra.append(_block(f"{obj.__module__}.{obj.__qualname__}", None, True))
        else:
            plain.append(attr)
    return _block(name, plain, root) + "".join(extra)


def _aliases() -> dict[str, str]:
    """``{module: the public name it is imported under}``, e.g. ``jlstm.examples.tasks: jlstm.tasks``."""
    try:
        from jlstm.core.aliases import ALIASES
    except ImportError:
        return {}
    return {real: public for public, real in ALIASES.items()}


def _defined_here(module: ModuleType) -> list[str]:
    """A module's ``__all__``, or else the public functions and classes it defines."""
    return _exports(module) or [n for n, obj in vars(module).items() if not n.startswith("_") and (
        inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__]


def _alias_page(real: str, public: str) -> str:
    text = f"# `{public}`\n\n`{public}` is the module `{real}`, imported under its public name.\n\n"
    return text + _module_sections(real, _defined_here(importlib.import_module(real)), False)


def api_pages() -> dict[str, str]:
    """``{"api/<page>.md": markdown}`` for jlstm, each top-level public module with an ``__all__``, and
    each module with a public alias."""
    aliases = _aliases()
    modules = [m for m in _public_modules() if _exports(importlib.import_module(m)) and m not in aliases]
    tops = sorted({".".join(m.split(".")[:2]) for m in modules})
    pages = {f"api/{public.split('.')[1]}.md": _alias_page(real, public) for real, public in aliases.items()}
    for top in tops:
        page = "jlstm" if top == "jlstm" else top.split(".")[1]
        own = _exports(importlib.import_module(top))
        text = f"# `{top}`\n\n" + (_module_sections(top, own, False) if own else _block(top, [], False))
        documented = {f"{top}.{n}" for n in own}
        for sub in modules:
            if top == "jlstm" or not sub.startswith(top + ".") or sub in documented:
                continue
            module = importlib.import_module(sub)
            parents = [importlib.import_module(p) for p in _parents(sub)]
            rest = [n for n in _exports(module)
                    if not any(getattr(p, n, None) is getattr(module, n) for p in parents)]
            if rest:
                text += f"## `{sub}`\n\n" + _module_sections(sub, rest, False)
        pages[f"api/{page}.md"] = text
    return pages


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(2, len(parts))]


_PAGES: dict[str, str] = {}


def on_config(config):
    pages = _PAGES
    pages.clear()
    pages.update(api_pages())
    entries = [{"jlstm": "api/jlstm.md"}] + [
        {f"jlstm.{p[4:-3]}": p} for p in sorted(pages) if p != "api/jlstm.md"]
    for item in config["nav"]:
        if isinstance(item, dict) and "API reference" in item:
            item["API reference"] = entries
    return config


def on_files(files: Files, config) -> Files:
    for path, text in _PAGES.items():
        files.append(File.generated(config, path, content=text))
    return files

"""Public module names that point at modules living elsewhere in the package.

``jlstm.tasks`` and ``jlstm.demo`` live in :mod:`jlstm.examples`, and ``jlstm.parallel`` and
``jlstm.population`` in :mod:`jlstm.distributed`. A finder on ``sys.meta_path`` answers an import
of the public name with the real module itself (one module object under both names), so
``import jlstm.tasks``, ``from jlstm.tasks import adding_problem`` and ``jlstm.tasks`` all work
without a second copy of the code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

ALIASES = {
    "jlstm.demo": "jlstm.examples.demo",
    "jlstm.tasks": "jlstm.examples.tasks",
    "jlstm.parallel": "jlstm.distributed.parallel",
    "jlstm.population": "jlstm.distributed.population",
}


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves each name in :data:`ALIASES` to the module it stands for."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in ALIASES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(ALIASES[spec.name])
        module.__dict__.setdefault("__own_spec__", module.__spec__)
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the real module ran under its own name); the import machinery set
        ``__spec__`` to the alias's, so the real module's own spec is put back."""
        module.__spec__ = module.__dict__["__own_spec__"]


def install() -> None:
    """Put one :class:`AliasFinder` on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(AliasFinder())

"""Sizes of parameter pytrees."""

from __future__ import annotations

from typing import Any, NoReturn

import jax
import numpy as np


def count_params(params: Any) -> int:
    """The number of scalars in a parameter pytree: the sum of its array leaves' sizes.

    Any pytree works (a cell's ``NamedTuple``, a dict, a tuple of layers); ``None`` leaves, such as
    an LSTM's absent peephole weights, count nothing. Python numbers count one each. Any other leaf (a
    cell or model passed in place of its parameters, a function, a string) raises ``TypeError``.

    Example:
      >>> params = jlstm.lstm(64).init(jax.random.key(0), 16)   # w_x (16, 256), w_h (64, 256), b (256,)
      >>> jlstm.count_params(params)
      20736
    """
    from jlstm.core.types import Cell, SequenceModel

    models = (Cell, SequenceModel)                  # a layer would otherwise flatten into its functions
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, models)):
        if isinstance(leaf, models):
            _refuse(jax.tree_util.keystr(path) or "the root", f"a jlstm.{type(leaf).__name__}")
        is_number = isinstance(leaf, (int, float, complex))
        if isinstance(leaf, (str, bytes)) or not (hasattr(leaf, "shape") or is_number):
            _refuse(jax.tree_util.keystr(path) or "the root",
                    "a function" if callable(leaf) else f"a {type(leaf).__name__}")
        total += int(np.size(leaf))
    return total


def _refuse(where: str, what: str) -> NoReturn:
    raise TypeError(f"jlstm.count_params: the leaf at {where} is {what}, not an array or a number; pass the "
                    f"parameters, such as cell.init(key, input_size) or model.init(key, input_size), not the cell "
                    f"or model that makes them.")

"""Sizes of parameter pytrees."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def count_params(params: Any) -> int:
    """The number of scalars in a parameter pytree: the sum of its array leaves' sizes.

    Any pytree works (a cell's ``NamedTuple``, a dict, a tuple of layers); ``None`` leaves, such as
    an LSTM's absent peephole weights, count nothing. Python numbers count one each.

    Example:
      >>> params = jlstm.lstm(64).init(jax.random.key(0), 16)   # w_x (16, 256), w_h (64, 256), b (256,)
      >>> jlstm.count_params(params)
      20736
    """
    return int(sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params)))

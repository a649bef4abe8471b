"""The initialiser and dtype options that the cell factories share, written once.

:func:`jlstm.gru`, :func:`jlstm.simple_rnn`, :func:`jlstm.lstm` and :func:`jlstm.slstm` take the
keyword arguments of :class:`CellOptions`; :func:`jlstm.min_gru` and :func:`jlstm.min_lstm`, which
have no recurrent weights, those of :class:`MinCellOptions`. The factories declare them as
``**options: Unpack[CellOptions]``, so a type checker checks every keyword and its type, and
:func:`resolve` fills in the defaults (:class:`Options`) and rejects a keyword the factory does
not take, as a fixed signature would.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, TypedDict, Unpack

import jax.numpy as jnp

from jlstm.cells import initializers as _initializers
from jlstm.cells.initializers import Initializer
from jlstm.core import checks as _checks
from jlstm.core.math import canonical_dtype
from jlstm.core.types import DTypeLike

__all__ = ["CellOptions", "MinCellOptions", "Options", "Unpack", "resolve"]


class MinCellOptions(TypedDict, total=False):
    """The keyword options of :func:`jlstm.min_gru` and :func:`jlstm.min_lstm`, all optional.

    :class:`CellOptions` adds ``recurrent_init`` for the cells with recurrent weights. A dict
    of options can be built once and passed to several factories.

    Example:
      >>> options: jlstm.MinCellOptions = {"dtype": jnp.bfloat16}
      >>> cell = jlstm.min_gru(8, **options)
      >>> cell.config.dtype, cell.config.param_dtype
      (dtype(bfloat16), dtype('float32'))
    """

    kernel_init: Initializer
    """Initialiser ``(key, shape, dtype) -> array`` of the input weights ``w_x``; Glorot uniform
    by default. Each factory's docstring says whether it is applied per gate (or head) block."""
    bias_init: Initializer
    """Initialiser of the biases; zeros by default (:func:`jlstm.lstm` then adds ``forget_bias``)."""
    dtype: DTypeLike | None
    """dtype of the matmuls and outputs, e.g. ``jnp.bfloat16`` for mixed precision (the state
    then stays in float32). ``None``, the default, follows the inputs and params."""
    param_dtype: DTypeLike
    """dtype of the parameters made by ``init``; ``jnp.float32`` by default."""


class CellOptions(MinCellOptions, total=False):
    """The keyword options of :func:`jlstm.gru`, :func:`jlstm.simple_rnn`, :func:`jlstm.lstm` and
    :func:`jlstm.slstm`, all optional: those of :class:`MinCellOptions` and ``recurrent_init``.

    Example:
      >>> options: jlstm.CellOptions = {"recurrent_init": jax.nn.initializers.orthogonal(2.0)}
      >>> rnn, gru = jlstm.simple_rnn(4, **options), jlstm.gru(4, **options)
      >>> rnn.config.recurrent_init is gru.config.recurrent_init
      True
    """

    recurrent_init: Initializer
    """Initialiser of the recurrent weights, applied to each gate block (of each head for
    :func:`jlstm.slstm`); orthogonal by default."""


class Options(NamedTuple):
    """The options of one factory call, resolved: the defaults of :class:`CellOptions` are these."""

    kernel_init: Initializer = _initializers.glorot_uniform
    recurrent_init: Initializer = _initializers.orthogonal
    bias_init: Initializer = _initializers.zeros
    dtype: jnp.dtype | None = None
    param_dtype: Any = jnp.dtype("float32")      # or None, where a factory passes that on
    taken: tuple[str, ...] = tuple(CellOptions.__annotations__)
    """The options that the factory takes: those its :class:`jlstm.CellConfig` records."""

    def config(self) -> dict[str, Any]:
        """The options as the fields of the cell's :class:`jlstm.CellConfig`."""
        return {name: getattr(self, name) for name in self.taken}


def resolve(factory: str, options: Mapping[str, Any], schema: type = CellOptions) -> Options:
    """``options`` (declared by ``schema``) with the defaults filled in and the dtypes made canonical.

    Raises:
      TypeError: a keyword that ``schema`` does not declare (as for a fixed signature), or a
        dtype that is not a floating point dtype.
    """
    taken = tuple(schema.__annotations__)
    _checks.check_keywords(factory, options, taken)
    given = Options(**options, taken=taken)
    return given._replace(dtype=canonical_dtype(given.dtype, "dtype"),
                          param_dtype=canonical_dtype(given.param_dtype, "param_dtype"))

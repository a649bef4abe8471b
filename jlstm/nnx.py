"""Flax NNX wrappers: use a jlstm cell or sequence model as an ``nnx.Module``.

The functional params stay the single source of truth: :class:`Recurrent` keeps the
jlstm params pytree (``LSTMParams``, a tuple per layer for :func:`jlstm.stack`, ...) with
every array wrapped in an ``nnx.Param``, and ``module.params`` rebuilds the plain pytree,
so ``module(xs)`` is exactly ``model.apply(module.params, xs)``. The module composes with
``nnx.Linear`` and friends and trains with ``nnx.Optimizer``.

Example:
  >>> from flax import nnx
  >>> class Classifier(nnx.Module):
  ...     def __init__(self, rngs):
  ...         self.encoder = jlstm.nnx.Recurrent(jlstm.lstm(32), 8, rngs=rngs)
  ...         self.head = nnx.Linear(32, 5, rngs=rngs)
  ...     def __call__(self, xs, lengths=None):
  ...         final, _ = self.encoder(xs, lengths=lengths)
  ...         return self.head(final.h)
  >>> model = Classifier(nnx.Rngs(0))
  >>> optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from jlstm.core import checks as _checks
from jlstm.core.types import Cell, SequenceModel
from jlstm.layers.recurrent import recurrent

__all__ = ["Recurrent"]


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


class Recurrent(nnx.Module):
    """A jlstm sequence model with its params held as ``nnx.Param`` leaves.

    Args:
      model: a :class:`jlstm.SequenceModel` (``jlstm.recurrent(...)``, ``jlstm.stack(...)``,
        ``jlstm.bidirectional(...)``) or a :class:`jlstm.Cell` (wrapped with
        :func:`jlstm.recurrent`).
      input_size: the size of the inputs' last axis.
      rngs: ``nnx.Rngs``; the params come from ``model.init(rngs.params(), input_size)``.
      params: optional existing jlstm params to hold instead (e.g. loaded from a checkpoint
        or converted from PyTorch); ``rngs`` may then be omitted.

    Attributes:
      model: the wrapped sequence model (static).
      input_size: as given.
      params: (property) the jlstm params pytree with plain arrays; :meth:`set_params`
        writes a new pytree of the same structure into the module in place.
    """

    def __init__(self, model: Cell | SequenceModel, input_size: int, *, rngs: nnx.Rngs | None = None,
                 params: Any = None):
        if isinstance(model, Cell):
            model = recurrent(model)
        if not isinstance(model, SequenceModel):
            raise TypeError(f"jlstm.nnx.Recurrent: model must be a jlstm.Cell or jlstm.SequenceModel "
                            f"(e.g. jlstm.lstm(32) or jlstm.stack(...)), got {type(model).__name__}.")
        _checks.check_size("input_size", input_size)
        if params is None:
            if rngs is None:
                raise ValueError("jlstm.nnx.Recurrent: pass rngs=nnx.Rngs(seed) to initialise the "
                                 "params, or params=... to hold existing ones.")
            params = model.init(rngs.params(), input_size)
        self.model = nnx.static(model)
        self.input_size = input_size
        self.param_tree = nnx.data(jax.tree.map(nnx.Param, params))

    @property
    def params(self) -> Any:
        """The jlstm params pytree (plain arrays) behind this module."""
        return jax.tree.map(lambda v: v[...], self.param_tree, is_leaf=_is_var)

    def set_params(self, new: Any) -> None:
        """Overwrite the held params in place with a jlstm params pytree of the same structure."""
        old_def = jax.tree.structure(self.param_tree, is_leaf=_is_var)
        new_def = jax.tree.structure(new)
        if old_def.num_leaves != new_def.num_leaves or \
                jax.tree.structure(self.params) != new_def:
            raise ValueError(f"jlstm.nnx.Recurrent.set_params: the new params have structure {new_def}, "
                             f"expected {jax.tree.structure(self.params)}; build them with "
                             f"{self.model.name}.init.")
        for var, value in zip(jax.tree.leaves(self.param_tree, is_leaf=_is_var), jax.tree.leaves(new)):
            if tuple(var.shape) != tuple(value.shape):
                raise ValueError(f"jlstm.nnx.Recurrent.set_params: a leaf has shape {tuple(value.shape)}, "
                                 f"expected {tuple(var.shape)}.")
            var[...] = value

    def initial_state(self, batch_shape: tuple[int, ...] = ()) -> Any:
        """The model's zero state for ``batch_shape``."""
        return self.model.initial_state(self.params, batch_shape)

    def __call__(self, xs: jax.Array, state: Any = None, *, lengths: jax.Array | None = None,
                 mask: jax.Array | None = None, key: jax.Array | None = None,
                 time_major: bool = True) -> tuple[Any, jax.Array]:
        """``model.apply(self.params, xs, state, lengths=..., mask=..., key=..., time_major=...)``.

        Returns:
          ``(final_state, ys)`` with ``ys`` of shape [T, *batch, output_size] (time-major).
        """
        return self.model.apply(self.params, xs, state, lengths=lengths, mask=mask, key=key,
                                time_major=time_major)

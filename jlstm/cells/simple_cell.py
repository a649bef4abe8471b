"""What the GRU and the plain RNN share: dense weights, biases, and one state vector ``h``.

Their params are ``w_x [input, G·H]``, ``w_h [H, G·H]`` and one or more biases ``[G·H]`` (the
fields after ``w_x`` and ``w_h``), for ``G`` gate blocks; their state is ``h [*batch, H]``; and
the input projection is ``x w_x`` plus the first bias. Only the step differs, which each cell
passes to :meth:`SimpleCell.cell`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax

from jlstm.cells import initializers as _initializers
from jlstm.cells.make_cell import h_output, make_cell
from jlstm.cells.options import Options, resolve
from jlstm.core import checks as _checks
from jlstm.core.math import affine, cell_sizes, zeros_state
from jlstm.core.types import BatchShape, Cell, CellConfig, StepProjectedFn


@dataclasses.dataclass(frozen=True, eq=False)
class SimpleCell:
    """The init, checks, initial state and input projection of a GRU-like cell.

    Attributes:
      kind: the factory's name, e.g. ``"gru"``: the cell's config kind and, with the size,
        its name in messages (``gru(16)``).
      hidden_size: H.
      blocks: G, the number of gate blocks in the columns of ``w_x`` and ``w_h``.
      params_type, state_type: the cell's params and state NamedTuples.
      options: the resolved initialiser and dtype options.
      variant: the options that set this cell apart from the factory's default, as they read
        in its name (``"reset_after=False"`` gives ``gru(16, reset_after=False)``), or ``""``.
    """

    kind: str
    hidden_size: int
    blocks: int
    params_type: Any
    state_type: Any
    options: Options
    variant: str = ""

    @classmethod
    def build(cls, kind: str, hidden_size: Any, options: Mapping[str, Any], params_type: Any,
              state_type: Any, blocks: int, variant: str = "") -> SimpleCell:
        """Validate a factory's ``hidden_size`` and ``**options`` (:class:`jlstm.CellOptions`)."""
        opts = resolve(kind, options)
        H, dtype, param_dtype = cell_sizes(hidden_size, opts.dtype, opts.param_dtype)
        return cls(kind, H, blocks, params_type, state_type, opts._replace(dtype=dtype, param_dtype=param_dtype),
                   variant)

    @property
    def where(self) -> str:
        return f"{self.kind}({self.hidden_size}" + (f", {self.variant})" if self.variant else ")")

    @property
    def dtype(self) -> Any:
        """The compute dtype (``None``: follow the inputs)."""
        return self.options.dtype

    def init(self, key: jax.Array, input_size: int) -> Any:
        _checks.check_size("input_size", input_size)
        H, width, opts = self.hidden_size, self.blocks * self.hidden_size, self.options
        kx, kh, *kb = jax.random.split(key, len(self.params_type._fields))
        return self.params_type(
            opts.kernel_init(kx, (input_size, width), opts.param_dtype),
            _initializers.per_gate(opts.recurrent_init, kh, H, H, self.blocks, opts.param_dtype),
            *(opts.bias_init(k, (width,), opts.param_dtype) for k in kb))

    def check(self, params: Any, state: Any = None, x: Any = None, where: str | None = None) -> None:
        H, width = self.hidden_size, self.blocks * self.hidden_size
        biases = self.params_type._fields[2:]

        def shapes(n: int) -> dict:
            return {"w_x": (n, width), "w_h": (H, width), **{b: (width,) for b in biases}}

        _checks.check_cell_args(where or self.where, params, self.params_type, shapes, state, self.state_type,
                                {"h": H}, x)

    def initial_state(self, params: Any, batch_shape: BatchShape = ()) -> Any:
        self.check(params, where=self.where + ".initial_state")
        return self.state_type(h=zeros_state(batch_shape, self.hidden_size, params.w_h, self.dtype))

    def project(self, params: Any, x: jax.Array) -> jax.Array:
        return affine(x, params.w_x, params[2], self.dtype)   # the first bias: b_x of a GRU, b of an RNN

    def cell(self, step_projected: StepProjectedFn, step_decoupled: Callable[..., Any] | None = None,
             state_box: Callable[..., Any] | None = None, sequence: Callable[..., Any] | None = None,
             **config: Any) -> Cell:
        """The cell with this step (and ``step_decoupled``, ``state_box`` and a fused ``sequence`` kernel, see
        :class:`jlstm.CellFast`); ``config`` holds its other options, for its :class:`jlstm.CellConfig`."""
        cfg = CellConfig(self.kind, hidden_size=self.hidden_size, **config, **self.options.config())
        return make_cell(init=self.init, initial_state=self.initial_state, project=self.project,
                         step_projected=step_projected, output_size=self.hidden_size, name=self.where,
                         config=cfg, check=self.check, step_decoupled=step_decoupled,
                         output_of_state=h_output, state_box=state_box, sequence=sequence,
                         jacobian_blocks=None if step_decoupled is None else 1)

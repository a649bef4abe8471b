"""The contracts of jlstm: a cell (one time step), its configuration, and a sequence model.

A cell is three pure functions plus data::

    init(key, input_size) -> params
    initial_state(params, batch_shape=()) -> state
    step(params, state, x) -> (state, y)

Everything else is optional: ``config`` (a frozen record of the options the cell was built
with, which makes cells equal and hashable by value) and ``fast`` (accelerated pieces that
:func:`jlstm.scan` may use instead of a loop over ``step``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, NamedTuple, Protocol, Union

import jax
from jax.typing import DTypeLike

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays, usually a cell's params NamedTuple
State = Any  # a pytree of arrays, usually a cell's state NamedTuple
BatchShape = Union[int, tuple[int, ...]]

Peephole = Literal["diagonal", "full"]
RematPolicy = Union[Literal["step", "segment"], int, bool, None]
Merge = Literal["concat", "sum", "mean"]
Method = Union[str, Any]
"""``"auto"``, ``"sequential"``, a cell's own form (``"parallel"``, ``"chunkwise"``), a Newton
method (``"deer"``, ``"quasi_deer"``, ``"elk"``) or a method object with a ``.name``."""

__all__ = ["Cell", "CellConfig", "CellFast", "SequenceModel", "DTypeLike"]


class InitFn(Protocol):
    def __call__(self, key: PRNGKey, input_size: int, /) -> Params: ...


class InitialStateFn(Protocol):
    def __call__(self, params: Params, batch_shape: BatchShape = (), /) -> State: ...


class StepFn(Protocol):
    def __call__(self, params: Params, state: State, x: Array, /) -> tuple[State, Array]: ...


class ProjectFn(Protocol):
    def __call__(self, params: Params, xs: Array, /) -> Any: ...


class StepProjectedFn(Protocol):
    def __call__(self, params: Params, state: State, xp: Any, /,
                 recurrent_mask: Array | None = None) -> tuple[State, Array]: ...


class SequenceFn(Protocol):
    def __call__(self, params: Params, xs: Array, state: State, valid: Array | None,
                 unroll: int | bool, /, *, plan: Any = None,
                 resets: Array | None = None) -> tuple[State, Array]: ...


class CheckFn(Protocol):
    def __call__(self, params: Params, state: State = None, x: Any = None,
                 where: str = ..., /) -> None: ...


class CellConfig:
    """A frozen, hashable record of the options a cell (or layer) was built with.

    ``CellConfig(kind="lstm", hidden_size=64, peephole="full")``. Options read as
    attributes (``cfg.hidden_size``), with :meth:`get` for optional ones. Two configs are
    equal when their kind and options are equal, so two cells built with the same options
    compare equal, hash alike and share ``jit`` caches.

    Example:
      >>> cfg = jlstm.lstm(8, peephole="full").config
      >>> cfg.kind, cfg.hidden_size, cfg.peephole, cfg.get("no_such_option", 0)
      ('lstm', 8, 'full', 0)
      >>> cfg == jlstm.lstm(8, peephole="full").config, cfg == jlstm.lstm(8).config
      (True, False)
      >>> jlstm.CellConfig(kind="indrnn", hidden_size=32).replace(hidden_size=64).hidden_size
      64
    """

    __slots__ = ("kind", "_items")

    def __init__(self, kind: str, **options: Any) -> None:
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"CellConfig: kind must be a non-empty str, got {kind!r}.")
        items = tuple(sorted(options.items()))
        for k, v in items:
            try:
                hash(v)
            except TypeError as e:
                raise TypeError(f"CellConfig({kind!r}): option {k}={v!r} is not hashable; pass a tuple "
                                f"instead of a list, or a frozen record.") from e
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "_items", items)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("CellConfig is frozen; build a new one with .replace(...).")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        for k, v in object.__getattribute__(self, "_items"):
            if k == name:
                return v
        raise AttributeError(f"{self!r} has no option {name!r}")

    def get(self, name: str, default: Any = None) -> Any:
        """The option ``name``, or ``default`` when the cell has no such option."""
        return dict(self._items).get(name, default)

    def as_dict(self) -> dict[str, Any]:
        """The options as a new dict (``kind`` not included)."""
        return dict(self._items)

    def replace(self, **changes: Any) -> CellConfig:
        """A copy with some options changed."""
        return CellConfig(self.kind, **{**self.as_dict(), **changes})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CellConfig) and (self.kind, self._items) == (other.kind, other._items)

    def __hash__(self) -> int:
        return hash((self.kind, self._items))

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self._items if not callable(v))
        return f"CellConfig({self.kind!r}{opts})"

    def __reduce__(self):
        return (_make_config, (self.kind, self._items))


def _make_config(kind: str, items: tuple) -> CellConfig:
    return CellConfig(kind, **dict(items))


class CellFast(NamedTuple):
    """Optional accelerated pieces of a cell, read by :func:`jlstm.scan` alone.

    Attributes:
      project: ``project(params, xs) -> xp``, the part of a step that reads the input
        alone, applied to the whole sequence at once (one GEMM over all steps).
      step_projected: ``step_projected(params, state, xp_t, recurrent_mask=None) -> (state, y)``,
        the rest of the step. ``recurrent_mask`` multiplies ``h_{t-1}`` inside the recurrent
        matmul (variational recurrent dropout). Cells built with :func:`jlstm.make_cell`
        satisfy ``step == step_projected ∘ project`` by construction.
      sequence: a fused whole-sequence kernel ``sequence(params, xs, state, valid, unroll, *,
        plan, resets=None) -> (state, ys)``, taken by :class:`jlstm.Sequential` when ``fast=True``.
        ``plan`` is the backend's routing table (:class:`jlstm.core.plan.Plan`); ``resets`` (bool
        ``[T, *batch]``) restarts the state from the cell's initial state before the steps where
        it is True.
      check: ``check(params, state=None, x=None, where=...)``: trace-time validation.
      methods: extra whole-sequence forms, ``((name, fn), ...)`` with
        ``fn(params, xs, state, valid, *, unroll, remat, resets=None) -> (state, ys)``; the
        ``"chunkwise"`` form also takes ``chunk_size``. :class:`jlstm.Parallel` and
        :class:`jlstm.Chunkwise` run them.
      auto_method: ``auto_method(T) -> name``, the form ``method="auto"`` picks.
      step_decoupled: ``step_decoupled(params, state, xp) -> (state, y)``, equal in value to
        ``step_projected``, whose Jacobian with respect to the state has the same diagonal and
        no other entry within a state leaf (:mod:`jlstm.cells.decouple`): ``method="quasi_deer"``
        and ``"quasi_elk"`` then read the diagonal with one JVP per state leaf instead of a
        full ``jax.jacfwd``.
      output_of_state: ``output_of_state(state, y) -> y``, the step's output recomputed from a
        state the loop changed after the step (zoneout keeps some units of the previous state:
        a cell whose output is its ``h`` returns the zoned ``h``). ``None``: the output stays.
      mixable_state: whether a convex mix of two states is a state. False for states that carry
        a log-space stabiliser (sLSTM, mLSTM): zoneout, which mixes them, then refuses the cell.
      linear: ``linear(params, xp) -> (a, b)``: declares the recurrence diagonal-linear,
        ``h_t = a_t ⊙ h_{t-1} + b_t`` with outputs ``y_t = h_t``, on a state that is one array
        ``h``. ``xp = project(params, xs)`` for the whole sequence (``xs`` itself without
        ``project``); ``a`` and ``b`` broadcast to ``[T, *h.shape]``. The step must compute the same
        update. :func:`jlstm.core.linear.linear_form` then evaluates the whole sequence with
        :func:`jlstm.linear_recurrence` (minGRU, minLSTM, a user's RG-LRU or LRU).
      jacobian_blocks: ``k`` where the state's Jacobian groups into one ``k×k`` block per unit:
        the state has ``k`` leaves of ``U`` units each (the LSTM's ``h`` and ``c``: ``k = 2``), and
        ``step_decoupled``'s Jacobian links entry ``j`` of a leaf only to entry ``j`` of the
        leaves. The quasi-Newton methods then keep each unit's exact ``k×k`` block (read with
        ``k`` JVPs) instead of the diagonal alone. ``None``: the diagonal.
      jacobian_exact: the step's true Jacobian has no entry outside those blocks (``step_decoupled``
        is the step itself, as in ParaRNN's cells and the min cells): every Newton method is then
        exact Newton at the cost of the blocks, and the gradient's adjoint uses them too.
      state_box: ``state_box(state0) -> (lo, hi)``, state pytrees bounding every state the cell
        can reach from ``state0`` for any inputs and params (``lo <= state0 <= hi``, and each step
        maps the box into itself; ``±inf`` where a leaf is unbounded). The Newton methods project
        each iterate onto it (:func:`jlstm.cells.state_box.hull_box` builds the usual one).
    """

    project: ProjectFn | None = None
    step_projected: StepProjectedFn | None = None
    sequence: SequenceFn | None = None
    check: CheckFn | None = None
    methods: tuple[tuple[str, Callable[..., tuple[State, Array]]], ...] = ()
    auto_method: Callable[[int], str] | None = None
    step_decoupled: Callable[[Params, State, Any], tuple[State, Array]] | None = None
    output_of_state: Callable[[State, Array], Array] | None = None
    mixable_state: bool = True
    linear: Callable[[Params, Any], tuple[Array, Array]] | None = None
    jacobian_blocks: int | None = None
    jacobian_exact: bool = False
    state_box: Callable[[State], tuple[State, State]] | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Cell:
    """A recurrent cell: three pure functions plus data.

    Attributes:
      init: ``init(key, input_size) -> params``.
      initial_state: ``initial_state(params, batch_shape=()) -> state`` (zeros); an int
        batch size works too.
      step: ``step(params, state, x) -> (state, y)`` with ``x`` of shape
        ``[*batch, input_size]`` and ``y`` of shape ``[*batch, output_size]``.
      output_size: size of ``y``.
      name: a short description, for messages.
      config: a :class:`CellConfig`, or ``None`` for a cell without one. Cells with a
        config are equal (and hash alike) when their configs are equal; cells without one
        are equal when they hold the same functions.
      fast: a :class:`CellFast`, or ``None``: :func:`jlstm.scan` then loops over ``step``.

    Example, a user-written cell (IndRNN, Li et al. 2018)::

      >>> def init(key, input_size):
      ...     return {"w": jax.random.normal(key, (input_size, 4)) * 0.1, "u": jnp.full((4,), 0.5)}
      >>> def initial_state(params, batch_shape=()):
      ...     return jnp.zeros(jlstm.batch_tuple(batch_shape) + (4,))
      >>> def step(params, h, x):
      ...     h = jax.nn.relu(x @ params["w"] + params["u"] * h)
      ...     return h, h
      >>> cell = jlstm.Cell(init=init, initial_state=initial_state, step=step, output_size=4,
      ...                   name="indrnn")
      >>> params = cell.init(jax.random.key(0), 3)
      >>> h, ys = jlstm.scan(cell, params, jnp.ones((5, 2, 3)), lengths=jnp.array([5, 2]))
      >>> ys.shape
      (5, 2, 4)
    """

    init: InitFn
    initial_state: InitialStateFn
    step: StepFn
    output_size: int
    name: str = "cell"
    config: CellConfig | None = None
    fast: CellFast | None = None

    def __post_init__(self) -> None:
        for field in ("init", "initial_state", "step"):
            if not callable(getattr(self, field)):
                raise TypeError(f"Cell: {field} must be a function, got {type(getattr(self, field)).__name__}.")
        size = self.output_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise TypeError(f"Cell: output_size must be a positive Python int, got {size!r}.")
        if self.config is not None and not isinstance(self.config, CellConfig):
            raise TypeError(f"Cell: config must be a jlstm.CellConfig or None, got {type(self.config).__name__}.")
        if self.fast is not None and not isinstance(self.fast, CellFast):
            raise TypeError(f"Cell: fast must be a jlstm.CellFast or None, got {type(self.fast).__name__}.")

    @property
    def hidden_size(self) -> int:
        """The number of units H: ``config.hidden_size`` where set, else ``output_size``."""
        if self.config is not None:
            return int(self.config.get("hidden_size", self.output_size))
        return self.output_size

    def _key(self) -> tuple:
        if self.config is not None:
            return ("config", self.config, self.output_size)
        return ("functions", self.init, self.initial_state, self.step, self.output_size, self.fast)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Cell({self.name})"


class SequenceModel(NamedTuple):
    """A sequence model: ``init`` and ``apply`` as pure functions.

    Attributes:
      init: ``init(key, input_size) -> params``.
      apply: ``apply(params, xs, state=None, *, lengths=None, mask=None, key=None,
        time_major=True) -> (final_state, ys)``. ``key`` switches dropout and zoneout
        on; without it the model is deterministic (inference).
      initial_state: ``initial_state(params, batch_shape=()) -> state``.
      output_size: the size of the last axis of ``ys``.
      name: a short description.
      config: a :class:`CellConfig` describing the layer (its kind, options and the
        configs of its cells), or ``None``. Models with a config compare by it.
    """

    init: Callable[[PRNGKey, int], Params]
    apply: Callable[..., tuple[State, Array]]
    initial_state: Callable[..., State]
    output_size: int
    name: str
    config: CellConfig | None = None

    def _key(self) -> tuple:
        if self.config is not None:
            return ("config", self.config, self.output_size)
        return ("functions", self.init, self.apply, self.initial_state, self.output_size)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SequenceModel) and self._key() == other._key()

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"SequenceModel({self.name})"


def batch_tuple(batch_shape: BatchShape) -> tuple[int, ...]:
    """``batch_shape`` as a tuple: an int ``B`` means ``(B,)``.

    Example:
      >>> jlstm.batch_tuple(32), jlstm.batch_tuple((4, 2)), jlstm.batch_tuple(())
      ((32,), (4, 2), ())
    """
    if isinstance(batch_shape, bool):
        raise TypeError(f"batch_shape must be an int or a tuple of ints, got {batch_shape!r}.")
    if isinstance(batch_shape, int):
        batch_shape = (batch_shape,)
    try:
        out = tuple(batch_shape)
    except TypeError:
        raise TypeError(f"batch_shape must be an int or a tuple of ints, got {batch_shape!r} of type "
                        f"{type(batch_shape).__name__}.") from None
    for d in out:
        if isinstance(d, bool) or not hasattr(d, "__index__") or int(d) < 0:
            raise TypeError(f"batch_shape must be an int or a tuple of non-negative ints, got {batch_shape!r}.")
    return tuple(int(d) for d in out)

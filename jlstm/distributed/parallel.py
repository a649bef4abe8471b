"""Data-parallel training with ``jax.sharding``: one program, the batch split across devices.

The parameters and the optimizer state are replicated on every device of a 1-D mesh;
each batch is split along its batch axis. ``jax.jit`` with these shardings compiles one
SPMD program: every device runs the recurrence on its slice of the batch, and XLA inserts
the all-reduce that sums the gradients. Nothing here uses ``pmap`` or hand-written
collectives, and a train step written for one device runs unchanged::

    mesh = jlstm.parallel.data_mesh()                       # all devices, axis "data"
    step = jlstm.parallel.data_parallel_step(train_step, mesh)
    params, opt_state = jlstm.parallel.replicate((params, opt_state), mesh)
    for batch in batches:                                   # xs [T, B, I], ys [B]
        params, opt_state, metrics = step(params, opt_state, batch, key)

``train_step(params, opt_state, batch, key) -> (params, opt_state, metrics)`` is the
contract of ``jlstm.train.make_train_step``. The global batch size must be a multiple of
the number of devices. Because the loss is a mean over the *global* batch, the result
equals a single-device step on the same batch up to the order of float summation.

Batch axes: jlstm is time-major, so by default (``batch_axis=None``) a leaf with two or
more dimensions (``xs [T, B, I]``, a mask ``[T, B]``) is split along axis 1, a 1-D leaf
(``ys [B]``, ``lengths [B]``) along axis 0, and scalars are replicated. With
``time_major=False`` every leaf is split along axis 0. Anything else, e.g. one-hot
targets ``[B, C]`` in a time-major batch, needs an explicit ``batch_axis``: one int for
all leaves, or a pytree of ints (``None`` = replicate) with the batch's structure. If the
inferred axes give leaves of different batch sizes, a ``ValueError`` asks for it.

Multi-host (several processes, e.g. one per host). Every process runs the same script;
:mod:`jlstm.launch` calls ``jax.distributed.initialize`` first (``python -m jlstm.launch
--coordinator host0:1234 --num-processes N --process-id i -- train.py`` on each host, or
``--local N`` for N processes on this machine). Then ``jax.devices()`` lists the devices of
all processes and :func:`data_mesh` spans them all, ordered by process. Each process loads
only its own share of the global batch, the sequences :func:`local_batch_slice` names
(share ``i`` of N for process ``i`` on a :func:`data_mesh`; on a 2-D mesh whose model groups
span processes, those processes load the same share), and :func:`shard_batch` assembles
the global arrays from
these pieces with ``jax.make_array_from_process_local_data`` (automatic when
``jax.process_count() > 1``). Parameters must start equal in every process: initialise
them from the same key; :func:`replicate` and the steps then build global arrays from each
process's copy. Metrics come back replicated, so every process can read them; write
checkpoints from process 0 only. ``tests/distributed/test_distributed.py`` checks 2 and 4 processes
against one process on the whole batch.

Model axis (wide layers). For a wide LSTM the 4H columns of ``w_x``, ``w_h`` and ``b`` can
be split over a second mesh axis, ``model``: :func:`data_model_mesh` builds the 2-D
``("data", "model")`` mesh, :func:`model_shardings` gives every ``LSTMParams`` in a pytree
(the params, and the optimizer state that mirrors them) the spec ``P(None, "model")`` /
``P("model")``, and :func:`model_parallel_step` jits a train step with these shardings and
the batch split over ``data``. XLA inserts the collectives. The gate blocks ``i, f, g, o``
are split as they lie, so with 4 model devices each holds one gate's columns and the
recurrence exchanges gate pre-activations every step: the layout saves parameter and
optimizer memory (``1/model`` of the LSTM weights per device, see
:func:`param_bytes_per_device`), not communication.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence, TypedDict

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jlstm.cells.options import Unpack
from jlstm.core import checks as _checks

__all__ = [
    "BatchLayout",
    "batch_shardings",
    "data_mesh",
    "data_model_mesh",
    "data_parallel_step",
    "local_batch_slice",
    "model_parallel_step",
    "model_shardings",
    "param_bytes_per_device",
    "replicate",
    "shard_batch",
    "shard_params",
]


# jax.Device is a runtime alias of a compiled class, which pyright cannot use as a type
def data_mesh(devices: Sequence[jax.Device] | None = None,  # pyright: ignore[reportInvalidTypeForm]
              axis: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: all of ``jax.devices()``) with one named axis.

    Args:
      devices: the devices to use, e.g. ``jax.devices()[:4]``; default: every device of
        every process, ordered by process (so process ``i`` holds batch share ``i``).
      axis: the mesh axis name that the batch is split over.

    Returns:
      ``jax.sharding.Mesh`` of shape ``(len(devices),)``.

    Example:
      >>> mesh = jlstm.parallel.data_mesh()
      >>> mesh.axis_names, mesh.shape["data"] == len(jax.devices())
      (('data',), True)
    """
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"data_mesh: axis must be a non-empty str such as 'data', got {axis!r}.")
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    devices = list(devices)
    if not devices:
        raise ValueError("data_mesh: devices is empty; pass None to use every device, or a list of devices.")
    return Mesh(np.asarray(devices, dtype=object), (axis,))


def data_model_mesh(
    data: int,
    model: int,
    devices: Sequence[jax.Device] | None = None,  # pyright: ignore[reportInvalidTypeForm]  (see data_mesh)
    axes: tuple[str, str] = ("data", "model"),
) -> Mesh:
    """A 2-D ``data x model`` mesh: the batch splits over ``data``, wide layers over ``model``.

    Neighbouring devices (and so the devices of one process, first) share a ``model`` group,
    since the model axis communicates every time step and the data axis once per step.

    Args:
      data: the size of the data axis.
      model: the size of the model axis; ``data * model`` must equal the number of devices.
      devices: the devices (default: every device, ordered by process).
      axes: the two axis names.

    Returns:
      ``jax.sharding.Mesh`` of shape ``(data, model)``.

    Example:
      >>> mesh = jlstm.parallel.data_model_mesh(len(jax.devices()), 1)
      >>> mesh.axis_names
      ('data', 'model')
    """
    where = "jlstm.parallel.data_model_mesh"
    for name, n in (("data", data), ("model", model)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{where}: {name} must be an int >= 1, got {n!r}.")
    if (not isinstance(axes, tuple) or len(axes) != 2 or not all(isinstance(a, str) and a for a in axes)
            or axes[0] == axes[1]):
        raise ValueError(f"{where}: axes must be two different names like ('data', 'model'), got {axes!r}.")
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    devices = list(devices)
    if data * model != len(devices):
        raise ValueError(f"{where}: data x model = {data} x {model} = {data * model} devices, but there are "
                         f"{len(devices)}; choose sizes whose product is {len(devices)}, or pass devices=.")
    return Mesh(np.asarray(devices, dtype=object).reshape(data, model), axes)


def _check_mesh(mesh: Any, axis: str, where: str) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{where}: mesh must be a jax.sharding.Mesh (e.g. jlstm.parallel.data_mesh()), "
                        f"got {type(mesh).__name__}.")
    if axis not in mesh.axis_names:
        raise ValueError(f"{where}: the mesh has axes {tuple(mesh.axis_names)}, not {axis!r}; pass "
                         f"axis= one of them, or build the mesh with data_mesh(axis={axis!r}).")


class BatchLayout(TypedDict, total=False):
    """Where the leaves of a batch hold their batch axis: the keyword options, all optional, of
    :func:`batch_shardings`, :func:`shard_batch`, :func:`data_parallel_step` and
    :func:`model_parallel_step` (see "Batch axes" in the module docstring).

    Example:
      >>> layout: jlstm.parallel.BatchLayout = {"time_major": False}
      >>> xs = jnp.ones((2 * len(jax.devices()), 5, 3))                  # [B, T, I]
      >>> tuple(jlstm.parallel.batch_shardings(xs, jlstm.parallel.data_mesh(), **layout).spec)
      ('data',)
    """

    batch_axis: Any
    """``None`` (the default: inferred from ``time_major``), one int for every leaf, or a pytree
    with the structure of the batch holding an int or ``None`` (replicate) per leaf."""
    time_major: bool
    """The layout assumed when inferring: ``[T, B, ...]`` (``True``, the default) or ``[B, ...]``."""


def _layout(layout: Mapping[str, Any], where: str) -> tuple[Any, bool]:
    """``(batch_axis, time_major)`` of a :class:`BatchLayout`, the defaults filled in."""
    _checks.check_keywords(where, layout, tuple(BatchLayout.__annotations__))
    return layout.get("batch_axis"), layout.get("time_major", True)


def _default_axis(leaf: Any, time_major: bool) -> int | None:
    ndim = np.ndim(leaf)
    if ndim == 0:
        return None
    if time_major and ndim >= 2:
        return 1
    return 0


def _leaf_axes(batch: Any, batch_axis: Any, time_major: bool, where: str) -> tuple[list, Any]:
    """The batch axis (an int >= 0, or None = replicate) of every leaf, and the treedef."""
    leaves, treedef = jax.tree.flatten(batch)
    if batch_axis is None:
        axes = [_default_axis(leaf, time_major) for leaf in leaves]
    elif isinstance(batch_axis, int) and not isinstance(batch_axis, bool):
        axes = [batch_axis if np.ndim(leaf) > 0 else None for leaf in leaves]
    else:
        try:
            axes = treedef.flatten_up_to(batch_axis)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"{where}: batch_axis must be None, an int, or a pytree with the structure of the batch "
                f"({treedef}) holding an int or None per leaf; got {batch_axis!r}.") from e
    out = []
    for k, (leaf, ax) in enumerate(zip(leaves, axes)):
        ndim = np.ndim(leaf)
        if ax is not None and (not isinstance(ax, int) or isinstance(ax, bool) or not -ndim <= ax < ndim):
            raise ValueError(f"{where}: batch axis {ax!r} for leaf {k} of shape {np.shape(leaf)} is not an "
                             f"axis of it; pass batch_axis with a valid int (or None to replicate) per leaf.")
        out.append(None if ax is None else ax % ndim)
    return out, treedef


def _spec(ndim: int, ax: int | None, axis: str) -> PartitionSpec:
    if ax is None:
        return PartitionSpec()
    return PartitionSpec(*([None] * ax + [axis]))


def _check_sizes(shapes: list, axes: list, n_dev: int, axis: str, where: str) -> None:
    sizes = sorted({shape[ax] for shape, ax in zip(shapes, axes) if ax is not None})
    if len(sizes) > 1:
        raise ValueError(
            f"{where}: the batch axes {axes} give different batch sizes {sizes} for leaves of shapes "
            f"{shapes}; pass batch_axis explicitly, e.g. a pytree like the batch with 1 for [T, B, ...] "
            f"leaves, 0 for [B, ...] leaves and None for leaves to replicate.")
    if sizes and sizes[0] % n_dev:
        raise ValueError(
            f"{where}: the batch size {sizes[0]} does not divide over the {n_dev} devices of mesh axis "
            f"{axis!r}; use a global batch size that is a multiple of {n_dev}.")


def batch_shardings(batch: Any, mesh: Mesh, axis: str = "data", **layout: Unpack[BatchLayout]) -> Any:
    """The ``NamedSharding`` of every leaf of ``batch``: split along its batch axis.

    Args:
      batch: a pytree of arrays (or ``jax.ShapeDtypeStruct`` s): the global batch.
      mesh: the device mesh.
      axis: the mesh axis that the batch is split over.
      **layout: ``batch_axis`` and ``time_major``, where each leaf holds its batch axis:
        see :class:`BatchLayout`.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``batch``.

    Raises:
      ValueError: a batch size does not divide over the devices, or the leaves disagree
        on the batch size (a sign of a wrongly inferred axis).
    """
    where = "jlstm.parallel.batch_shardings"
    _check_mesh(mesh, axis, where)
    axes, treedef = _leaf_axes(batch, *_layout(layout, where), where)
    shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(batch)]
    _check_sizes(shapes, axes, mesh.shape[axis], axis, where)
    return treedef.unflatten([NamedSharding(mesh, _spec(len(s), ax, axis)) for s, ax in zip(shapes, axes)])


def shard_batch(
    batch: Any,
    mesh: Mesh,
    axis: str = "data",
    *,
    process_local: bool | None = None,
    **layout: Unpack[BatchLayout],
) -> Any:
    """Place ``batch`` on the mesh, each leaf split along its batch axis.

    Args:
      batch: a pytree of arrays: the global batch or, with ``process_local``, this
        process's share of it: the sequences :func:`local_batch_slice` names
        (``global_batch / jax.process_count()`` of them on a :func:`data_mesh`).
      mesh, axis, **layout: as in :func:`batch_shardings`.
      process_local: build each global array from the per-process pieces with
        ``jax.make_array_from_process_local_data``; ``None`` means "when
        ``jax.process_count() > 1``".

    Returns:
      The batch as ``jax.Array`` s with ``NamedSharding`` s; e.g. ``xs [T, B, I]`` on 8 devices
      holds ``[T, B/8, I]`` per device.

    Example:
      >>> mesh = jlstm.parallel.data_mesh()
      >>> data = jlstm.tasks.adding_problem(jax.random.key(0), 4 * len(jax.devices()), 10)
      >>> batch = jlstm.parallel.shard_batch(data, mesh)
      >>> tuple(batch.xs.sharding.spec), tuple(batch.ys.sharding.spec)
      ((None, 'data'), ('data',))
    """
    where = "jlstm.parallel.shard_batch"
    _check_mesh(mesh, axis, where)
    batch_axis, time_major = _layout(layout, where)
    if process_local is None:
        process_local = jax.process_count() > 1
    if not process_local:
        return jax.device_put(batch, batch_shardings(batch, mesh, axis, batch_axis=batch_axis,
                                                     time_major=time_major))
    axes, treedef = _leaf_axes(batch, batch_axis, time_major, where)
    leaves = [np.asarray(x) for x in jax.tree.leaves(batch)]
    held, n_pos = len(_process_positions(mesh, axis)), mesh.shape[axis]      # this process's part of the axis
    for x, ax in zip(leaves, axes):
        if ax is not None and x.shape[ax] % held:
            raise ValueError(f"{where}: this process feeds {held} positions of mesh axis {axis!r}, but a local "
                             f"leaf has batch size {x.shape[ax]}; load the sequences local_batch_slice() names.")
    global_shapes = [tuple(d * n_pos // held if i == ax else d for i, d in enumerate(x.shape))
                     for x, ax in zip(leaves, axes)]
    _check_sizes(global_shapes, axes, mesh.shape[axis], axis, where)
    arrays = [jax.make_array_from_process_local_data(NamedSharding(mesh, _spec(x.ndim, ax, axis)), x, gs)
              for x, ax, gs in zip(leaves, axes, global_shapes)]
    return treedef.unflatten(arrays)


def _process_positions(mesh: Mesh, axis: str) -> list[int]:
    """The positions along mesh axis ``axis`` that this process's devices occupy, sorted."""
    k = mesh.axis_names.index(axis)
    me = jax.process_index()
    return sorted({coords[k] for coords, d in np.ndenumerate(mesh.devices) if d.process_index == me})


def local_batch_slice(batch_size: int, mesh: Mesh, axis: str = "data") -> slice:
    """Which sequences of a global batch this process loads and passes to :func:`shard_batch`.

    Each process feeds the data-axis positions its own devices hold. On a 1-D
    :func:`data_mesh` with N processes that is share ``i`` of N for process ``i``. On a 2-D
    mesh whose model groups span several processes, those processes load the same sequences.

    Args:
      batch_size: the global batch size, a multiple of the ``axis`` size.
      mesh: the mesh the batch is split over.
      axis: the data axis.

    Returns:
      ``slice(start, stop)`` along the batch axis; the whole batch with one process.

    Example:
      >>> share = jlstm.parallel.local_batch_slice(8 * len(jax.devices()), jlstm.parallel.data_mesh())
      >>> (share.start, share.stop) == (0, 8 * len(jax.devices()))      # one process loads it all
      True
    """
    where = "jlstm.parallel.local_batch_slice"
    _check_mesh(mesh, axis, where)
    n = mesh.shape[axis]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1 or batch_size % n:
        raise ValueError(f"{where}: batch_size must be a positive multiple of the {n} positions of mesh axis "
                         f"{axis!r}, got {batch_size!r}.")
    pos = _process_positions(mesh, axis)
    if not pos or pos != list(range(pos[0], pos[-1] + 1)):
        raise ValueError(f"{where}: this process's devices sit at positions {pos} of mesh axis {axis!r}, not a "
                         f"contiguous run; build the mesh with data_mesh() or data_model_mesh(), which order the "
                         f"devices by process.")
    per = batch_size // n
    return slice(pos[0] * per, (pos[-1] + 1) * per)


def _place_leaf(x: Any, sharding: NamedSharding) -> Any:
    """Put one leaf on ``sharding``; with several processes, ``x`` is this process's full copy."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _place_leaf(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:      # a global array: reshard it
        return jax.jit(lambda a: a, out_shardings=sharding)(x)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _place(tree: Any, shardings: Any) -> Any:
    """``jax.device_put(tree, shardings)`` that also works across processes (a pytree of shardings
    with the structure of ``tree``, or one sharding for every leaf)."""
    if isinstance(shardings, NamedSharding):
        return jax.tree.map(lambda x: _place_leaf(x, shardings), tree)
    return jax.tree.map(_place_leaf, tree, shardings)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a full copy of every leaf of ``tree`` (params, optimizer state, a key) on every device.

    With several processes every process must pass the same values (init from the same key).

    Returns:
      ``tree`` with each leaf a ``jax.Array`` with ``NamedSharding(mesh, PartitionSpec())``.

    Example:
      >>> mesh = jlstm.parallel.data_mesh()
      >>> params = jlstm.parallel.replicate(jlstm.lstm(4).init(jax.random.key(0), 2), mesh)
      >>> params.w_x.sharding.is_fully_replicated
      True
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"jlstm.parallel.replicate: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    return _place(tree, NamedSharding(mesh, PartitionSpec()))


def _lstm_params_type() -> type:
    from jlstm.cells.lstm import LSTMParams

    return LSTMParams


def _last_axis_spec(ndim: int, axis: str) -> PartitionSpec:
    return PartitionSpec(*([None] * (ndim - 1) + [axis]))


def model_shardings(tree: Any, mesh: Mesh, axis: str = "model") -> Any:
    """Shardings that split every LSTM's 4H axis over mesh axis ``axis``; all else replicated.

    Every ``LSTMParams`` node of ``tree`` (a model's params, or an optimizer state such as
    Adam's, whose moments mirror the params) gets ``w_x [I, 4H]`` and ``w_h [R, 4H]`` split
    along their last axis and ``b [4H]`` along its only one; peepholes, projections and every
    other leaf are replicated. Any mesh axis not named here (``data``) replicates too.

    Args:
      tree: a pytree of arrays (or ``jax.ShapeDtypeStruct`` s).
      mesh: a mesh with an axis ``axis``, e.g. from :func:`data_model_mesh`.
      axis: the model axis.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``tree``.

    Raises:
      ValueError: a 4H axis does not divide over the ``axis`` devices.

    Example:
      >>> mesh = jlstm.parallel.data_model_mesh(1, len(jax.devices()))
      >>> params = jlstm.lstm(4 * len(jax.devices())).init(jax.random.key(0), 3)
      >>> tuple(jlstm.parallel.model_shardings(params, mesh).w_x.spec)
      (None, 'model')
    """
    where = "jlstm.parallel.model_shardings"
    _check_mesh(mesh, axis, where)
    lstm_params = _lstm_params_type()
    n = mesh.shape[axis]
    repl = NamedSharding(mesh, PartitionSpec())

    def split(node: Any) -> Any:
        if not isinstance(node, lstm_params):
            return jax.tree.map(lambda _: repl, node)
        specs = {}
        for name in ("w_x", "w_h", "b"):
            shape = tuple(np.shape(getattr(node, name)))
            if not shape or shape[-1] % n:
                raise ValueError(
                    f"{where}: LSTMParams.{name} has shape {shape}; its last axis (4H) must be a multiple of "
                    f"the {n} devices of mesh axis {axis!r}. Use a hidden size H with 4H divisible by {n}, "
                    f"or a smaller model axis.")
            specs[name] = NamedSharding(mesh, _last_axis_spec(len(shape), axis))
        rest = {name: jax.tree.map(lambda _: repl, getattr(node, name))
                for name in node._fields if name not in specs}
        return node._replace(**specs, **rest)

    return jax.tree.map(split, tree, is_leaf=lambda x: isinstance(x, lstm_params))


def shard_params(tree: Any, mesh: Mesh, axis: str = "model") -> Any:
    """Place ``tree`` (params, optimizer state) with :func:`model_shardings`: LSTM 4H axes split.

    Example:
      >>> mesh = jlstm.parallel.data_model_mesh(1, len(jax.devices()))
      >>> params = jlstm.lstm(4 * len(jax.devices())).init(jax.random.key(0), 3)
      >>> sharded = jlstm.parallel.shard_params(params, mesh)
      >>> sharded.w_h.addressable_shards[0].data.shape == (params.w_h.shape[0], 16)
      True
    """
    return _place(tree, model_shardings(tree, mesh, axis))


def param_bytes_per_device(tree: Any) -> dict[str, int]:
    """Bytes of ``tree``'s arrays held by each addressable device (its shards), by device name.

    Example:
      >>> params = jlstm.parallel.replicate({"w": jnp.zeros((4, 8))}, jlstm.parallel.data_mesh())
      >>> sorted(set(jlstm.parallel.param_bytes_per_device(params).values()))
      [128]
    """
    out: dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.Array):
            raise TypeError(f"jlstm.parallel.param_bytes_per_device: leaves must be jax.Array s, got "
                            f"{type(leaf).__name__}; place the tree with replicate() or shard_params() first.")
        for shard in leaf.addressable_shards:
            out[str(shard.device)] = out.get(str(shard.device), 0) + shard.data.nbytes
    return out


def _check_batch_global(batch: Any, axes: list, where: str) -> None:
    """With several processes, every split leaf must already be a global array (from shard_batch)."""
    if jax.process_count() == 1:
        return
    for k, (leaf, ax) in enumerate(zip(jax.tree.leaves(batch), axes)):
        if ax is not None and not (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable):
            raise ValueError(
                f"{where}: with {jax.process_count()} processes, batch leaf {k} (shape {np.shape(leaf)}) must "
                f"be a global array; pass each process's share through "
                f"jlstm.parallel.shard_batch(local_batch, mesh) and give the step its result.")


def _sharded_step(train_step: Callable, mesh: Mesh, data_axis: str, param_shardings: Callable[[Any], Any],
                  layout: tuple[Any, bool], donate: bool, where: str) -> Callable:
    """Jit ``train_step`` with ``param_shardings(tree)`` for params and optimizer state, the batch
    split over ``data_axis`` as ``layout = (batch_axis, time_major)`` says, the key and metrics
    replicated; compiled once per structure and shape."""
    batch_axis, time_major = layout
    if not callable(train_step):
        raise TypeError(f"{where}: train_step must be callable, got {type(train_step).__name__}.")
    _check_mesh(mesh, data_axis, where)
    repl = NamedSharding(mesh, PartitionSpec())
    compiled: dict = {}

    def step(params, opt_state, batch, key):
        _check_batch_global(batch, _leaf_axes(batch, batch_axis, time_major, where)[0], where)
        shardings = batch_shardings(batch, mesh, data_axis, batch_axis=batch_axis, time_major=time_major)
        p_sh, o_sh = param_shardings(params), param_shardings(opt_state)
        sig = tuple((jax.tree.structure(t), tuple(jax.tree.leaves(t))) for t in (shardings, p_sh, o_sh))
        fn = compiled.get(sig)
        if fn is None:
            fn = jax.jit(train_step, in_shardings=(p_sh, o_sh, shardings, repl),
                         out_shardings=(p_sh, o_sh, repl), donate_argnums=(0, 1) if donate else ())
            compiled[sig] = fn
        params, opt_state = _place(params, p_sh), _place(opt_state, o_sh)
        key, batch = _place(key, repl), _place(batch, shardings)
        return fn(params, opt_state, batch, key)

    return step


def data_parallel_step(
    train_step: Callable[[Any, Any, Any, jax.Array], tuple[Any, Any, Any]],
    mesh: Mesh,
    axis: str = "data",
    *,
    donate: bool = False,
    **layout: Unpack[BatchLayout],
) -> Callable[[Any, Any, Any, jax.Array], tuple[Any, Any, Any]]:
    """Jit ``train_step`` for data parallelism over ``mesh``: params replicated, batch split.

    Args:
      train_step: ``train_step(params, opt_state, batch, key) -> (params, opt_state, metrics)``,
        written as for one device (the loss a mean over the batch).
      mesh: a mesh from :func:`data_mesh`.
      axis: the mesh axis that the batch is split over.
      donate: donate the incoming params and optimizer state buffers (saves memory; the
        arrays passed in may not be used afterwards).
      **layout: ``batch_axis`` and ``time_major``, how to split each leaf of the batch: see
        :class:`BatchLayout`.

    Returns:
      ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``, compiled once
      per batch structure and shape. Inputs are placed on the mesh first (a no-op when they
      already are); outputs are replicated. With several processes, give it the batch from
      :func:`shard_batch` (each process's share).

    Example:
      >>> model = jlstm.recurrent(jlstm.lstm(8))
      >>> def loss_fn(params, batch, key):
      ...     _, ys = model.apply(params, batch.xs)
      ...     return jnp.mean((ys[-1, :, 0] - batch.ys) ** 2)
      >>> opt = optax.adam(1e-2)
      >>> train_step = jlstm.train.make_train_step(loss_fn, opt)
      >>> params = model.init(jax.random.key(0), 2)
      >>> opt_state = opt.init(params)
      >>> batch = jlstm.tasks.adding_problem(jax.random.key(1), 2 * len(jax.devices()), 5)
      >>> step = jlstm.parallel.data_parallel_step(train_step, jlstm.parallel.data_mesh())
      >>> params, opt_state, metrics = step(params, opt_state, batch, jax.random.key(2))
      >>> bool(jnp.isfinite(metrics["loss"])), metrics["loss"].sharding.is_fully_replicated
      (True, True)
    """
    where = "jlstm.parallel.data_parallel_step"
    _check_mesh(mesh, axis, where)
    repl = NamedSharding(mesh, PartitionSpec())
    return _sharded_step(train_step, mesh, axis, lambda tree: jax.tree.map(lambda _: repl, tree),
                         _layout(layout, where), donate, where)


def model_parallel_step(
    train_step: Callable[[Any, Any, Any, jax.Array], tuple[Any, Any, Any]],
    mesh: Mesh,
    data_axis: str = "data",
    model_axis: str = "model",
    *,
    donate: bool = False,
    **layout: Unpack[BatchLayout],
) -> Callable[[Any, Any, Any, jax.Array], tuple[Any, Any, Any]]:
    """Jit ``train_step`` on a 2-D mesh: the batch split over ``data``, LSTM 4H axes over ``model``.

    Params and optimizer state are placed with :func:`model_shardings` (every ``LSTMParams``
    split along 4H, everything else replicated) and come back the same way; the batch is
    split as in :func:`data_parallel_step`. ``jax.jit`` with these ``NamedSharding`` s lets
    XLA insert every collective: the gradient all-reduce over ``data``, and the exchange of
    gate pre-activations and hidden states over ``model``. The result equals one device up
    to the order of float summation.

    Args:
      train_step: ``train_step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.
      mesh: a mesh with both axes, e.g. ``data_model_mesh(2, 4)``.
      data_axis, model_axis: the axis names.
      donate, **layout: as in :func:`data_parallel_step`.

    Returns:
      ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.

    Example:
      >>> n = len(jax.devices())
      >>> model = jlstm.recurrent(jlstm.lstm(4 * n))
      >>> def loss_fn(params, batch, key):
      ...     _, ys = model.apply(params, batch.xs)
      ...     return jnp.mean((ys[-1, :, 0] - batch.ys) ** 2)
      >>> opt = optax.adam(1e-2)
      >>> params = model.init(jax.random.key(0), 2)
      >>> opt_state = opt.init(params)
      >>> mesh = jlstm.parallel.data_model_mesh(1, n)
      >>> step = jlstm.parallel.model_parallel_step(jlstm.train.make_train_step(loss_fn, opt), mesh)
      >>> batch = jlstm.tasks.adding_problem(jax.random.key(1), 2, 5)
      >>> params, opt_state, metrics = step(params, opt_state, batch, jax.random.key(2))
      >>> tuple(params.w_h.sharding.spec)
      (None, 'model')
    """
    where = "jlstm.parallel.model_parallel_step"
    _check_mesh(mesh, data_axis, where)
    _check_mesh(mesh, model_axis, where)
    return _sharded_step(train_step, mesh, data_axis, lambda tree: model_shardings(tree, mesh, model_axis),
                         _layout(layout, where), donate, where)

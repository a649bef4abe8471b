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

Multi-host (several processes, e.g. one per GPU host). Call
``jax.distributed.initialize()`` first in every process; then ``jax.devices()`` lists the
devices of all hosts and :func:`data_mesh` spans them all. Each process loads only its own
share of the global batch (``global_batch / jax.process_count()`` sequences) and
:func:`shard_batch` assembles the global array from these process-local pieces with
``jax.make_array_from_process_local_data`` (this happens automatically when
``jax.process_count() > 1``, or with ``process_local=True``). Parameters must start equal
in every process: initialise them from the same key. Metrics come back replicated, so
every process can read them; write checkpoints from process 0 only.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["batch_shardings", "data_mesh", "data_parallel_step", "replicate", "shard_batch"]


def data_mesh(devices: Sequence[jax.Device] | None = None, axis: str = "data") -> Mesh:
    """A 1-D mesh over ``devices`` (default: all of ``jax.devices()``) with one named axis.

    Args:
      devices: the devices to use, e.g. ``jax.devices()[:4]``.
      axis: the mesh axis name that the batch is split over.

    Returns:
      ``jax.sharding.Mesh`` of shape ``(len(devices),)``.

    Example:
      >>> mesh = jlstm.parallel.data_mesh()
      >>> mesh.shape
      {'data': 8}                      # with 8 devices
    """
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"data_mesh: axis must be a non-empty str such as 'data', got {axis!r}.")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh: devices is empty; pass None to use every device, or a list of devices.")
    return Mesh(np.asarray(devices, dtype=object), (axis,))


def _check_mesh(mesh: Any, axis: str, where: str) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{where}: mesh must be a jax.sharding.Mesh (e.g. jlstm.parallel.data_mesh()), "
                        f"got {type(mesh).__name__}.")
    if axis not in mesh.axis_names:
        raise ValueError(f"{where}: the mesh has axes {tuple(mesh.axis_names)}, not {axis!r}; pass "
                         f"axis= one of them, or build the mesh with data_mesh(axis={axis!r}).")


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


def batch_shardings(
    batch: Any,
    mesh: Mesh,
    axis: str = "data",
    *,
    batch_axis: Any = None,
    time_major: bool = True,
) -> Any:
    """The ``NamedSharding`` of every leaf of ``batch``: split along its batch axis.

    Args:
      batch: a pytree of arrays (or ``jax.ShapeDtypeStruct`` s): the global batch.
      mesh: the device mesh.
      axis: the mesh axis that the batch is split over.
      batch_axis: ``None`` (infer, see the module docstring), one int for every leaf, or a
        pytree with the structure of ``batch`` holding an int or ``None`` (replicate) per leaf.
      time_major: the layout assumed when inferring: ``[T, B, ...]`` (True) or ``[B, ...]``.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``batch``.

    Raises:
      ValueError: a batch size does not divide over the devices, or the leaves disagree
        on the batch size (a sign of a wrongly inferred axis).
    """
    where = "jlstm.parallel.batch_shardings"
    _check_mesh(mesh, axis, where)
    axes, treedef = _leaf_axes(batch, batch_axis, time_major, where)
    shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(batch)]
    _check_sizes(shapes, axes, mesh.shape[axis], axis, where)
    return treedef.unflatten([NamedSharding(mesh, _spec(len(s), ax, axis)) for s, ax in zip(shapes, axes)])


def shard_batch(
    batch: Any,
    mesh: Mesh,
    axis: str = "data",
    *,
    batch_axis: Any = None,
    time_major: bool = True,
    process_local: bool | None = None,
) -> Any:
    """Place ``batch`` on the mesh, each leaf split along its batch axis.

    Args:
      batch: a pytree of arrays: the global batch or, with ``process_local``, this
        process's share of it (``global_batch / jax.process_count()`` sequences).
      mesh, axis, batch_axis, time_major: as in :func:`batch_shardings`.
      process_local: build each global array from the per-process pieces with
        ``jax.make_array_from_process_local_data``; ``None`` means "when
        ``jax.process_count() > 1``".

    Returns:
      The batch as ``jax.Array`` s with ``NamedSharding`` s; e.g. ``xs [T, B, I]`` on 8 devices
      holds ``[T, B/8, I]`` per device.

    Example:
      >>> batch = jlstm.parallel.shard_batch(jlstm.tasks.adding_problem(key, 64, 100), mesh)
      >>> batch.xs.sharding.spec
      PartitionSpec(None, 'data')
    """
    where = "jlstm.parallel.shard_batch"
    _check_mesh(mesh, axis, where)
    if process_local is None:
        process_local = jax.process_count() > 1
    if not process_local:
        return jax.device_put(batch, batch_shardings(batch, mesh, axis, batch_axis=batch_axis,
                                                     time_major=time_major))
    axes, treedef = _leaf_axes(batch, batch_axis, time_major, where)
    leaves = [np.asarray(x) for x in jax.tree.leaves(batch)]
    n_proc = jax.process_count()
    global_shapes = [tuple(d * n_proc if i == ax else d for i, d in enumerate(x.shape))
                     for x, ax in zip(leaves, axes)]
    _check_sizes(global_shapes, axes, mesh.shape[axis], axis, where)
    arrays = [jax.make_array_from_process_local_data(NamedSharding(mesh, _spec(x.ndim, ax, axis)), x, gs)
              for x, ax, gs in zip(leaves, axes, global_shapes)]
    return treedef.unflatten(arrays)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a full copy of every leaf of ``tree`` (params, optimizer state, a key) on every device.

    Returns:
      ``tree`` with each leaf a ``jax.Array`` with ``NamedSharding(mesh, PartitionSpec())``.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"jlstm.parallel.replicate: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def data_parallel_step(
    train_step: Callable[[Any, Any, Any, jax.Array], tuple[Any, Any, Any]],
    mesh: Mesh,
    axis: str = "data",
    *,
    batch_axis: Any = None,
    time_major: bool = True,
    donate: bool = False,
) -> Callable[[Any, Any, Any, jax.Array], tuple[Any, Any, Any]]:
    """Jit ``train_step`` for data parallelism over ``mesh``: params replicated, batch split.

    Args:
      train_step: ``train_step(params, opt_state, batch, key) -> (params, opt_state, metrics)``,
        written as for one device (the loss a mean over the batch).
      mesh: a mesh from :func:`data_mesh`.
      axis: the mesh axis that the batch is split over.
      batch_axis, time_major: how to split each leaf of the batch; see :func:`batch_shardings`.
      donate: donate the incoming params and optimizer state buffers (saves memory; the
        arrays passed in may not be used afterwards).

    Returns:
      ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``, compiled once
      per batch structure and shape. Inputs are placed on the mesh first (a no-op when they
      already are); outputs are replicated.

    Example:
      >>> step = jlstm.parallel.data_parallel_step(train_step, jlstm.parallel.data_mesh())
      >>> params, opt_state, metrics = step(params, opt_state, batch, jax.random.key(0))
    """
    if not callable(train_step):
        raise TypeError(f"data_parallel_step: train_step must be callable, got {type(train_step).__name__}.")
    _check_mesh(mesh, axis, "jlstm.parallel.data_parallel_step")
    repl = NamedSharding(mesh, PartitionSpec())
    compiled: dict = {}

    def step(params, opt_state, batch, key):
        shardings = batch_shardings(batch, mesh, axis, batch_axis=batch_axis, time_major=time_major)
        sig = (jax.tree.structure(batch), tuple(jax.tree.leaves(shardings)))
        fn = compiled.get(sig)
        if fn is None:
            fn = jax.jit(train_step, in_shardings=(repl, repl, shardings, repl),
                         out_shardings=(repl, repl, repl), donate_argnums=(0, 1) if donate else ())
            compiled[sig] = fn
        params, opt_state, key = jax.device_put((params, opt_state, key), repl)
        batch = jax.device_put(batch, shardings)
        return fn(params, opt_state, batch, key)

    return step

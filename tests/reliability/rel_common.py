"""Shared helpers of the reliability suite: the cell table, deterministic params, loops."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import rel_reference as ref
from hypothesis import settings

import jlstm

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
JLSTM_DIR = os.path.dirname(os.path.abspath(jlstm.__file__))

# Derandomised: the same examples on every run, so CI never flakes on a fresh draw.
HYPOTHESIS = settings(max_examples=10, deadline=None, derandomize=True, print_blob=True)

PROJ = 2
CLIP = 0.25

# name -> (factory(H, **options) -> Cell, reference step factory(params dict), state fields)
CELLS = {
    "lstm": (lambda H, **kw: jlstm.lstm(H, **kw),
             lambda p: functools.partial(ref.lstm_step, p), ("h", "c")),
    "lstm_diagonal": (lambda H, **kw: jlstm.lstm(H, peephole="diagonal", **kw),
                      lambda p: functools.partial(ref.lstm_step, p, peephole="diagonal"), ("h", "c")),
    "lstm_full": (lambda H, **kw: jlstm.lstm(H, peephole="full", **kw),
                  lambda p: functools.partial(ref.lstm_step, p, peephole="full"), ("h", "c")),
    "lstm_proj": (lambda H, **kw: jlstm.lstm(H, proj_size=PROJ, **kw),
                  lambda p: functools.partial(ref.lstm_step, p), ("h", "c")),
    "lstm_clip": (lambda H, **kw: jlstm.lstm(H, cell_clip=CLIP, **kw),
                  lambda p: functools.partial(ref.lstm_step, p, cell_clip=CLIP), ("h", "c")),
    "layer_norm_lstm": (lambda H, **kw: jlstm.layer_norm_lstm(H, **kw),
                        lambda p: functools.partial(ref.layer_norm_lstm_step, p), ("h", "c")),
    "gru": (lambda H, **kw: jlstm.gru(H, **kw), lambda p: functools.partial(ref.gru_step, p), ("h",)),
    "simple_rnn": (lambda H, **kw: jlstm.simple_rnn(H, **kw),
                   lambda p: functools.partial(ref.simple_rnn_step, p), ("h",)),
}
CELL_NAMES = list(CELLS)
BIAS_FIELDS = ("b", "b_x", "b_h", "beta_c")
GAIN_FIELDS = ("gamma_x", "gamma_h", "gamma_c")


def make_cell(name: str, H: int, **options) -> jlstm.Cell:
    return CELLS[name][0](H, **options)


def det_values(shape, salt: int) -> np.ndarray:
    """Deterministic, non-symmetric values in [-0.5, 0.5] from ``arange`` (no RNG)."""
    n = int(np.prod(shape, dtype=np.int64))
    v = ((np.arange(n) * 7 + 3 * salt + 1) % 17 - 8) / 16.0
    return v.reshape(shape)


def det_params(template, salt: int = 0, bias: bool = True):
    """Replace every leaf of ``template`` (params from an init) with deterministic float32 values.

    Gains of the layer-norm LSTM become ``1 + v/2``; with ``bias=False`` every bias is zero.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for k, (path, leaf) in enumerate(flat):
        field = getattr(path[-1], "name", None)
        v = det_values(leaf.shape, salt * 31 + k)
        if field in GAIN_FIELDS:
            v = 1.0 + 0.5 * v
        if field in BIAS_FIELDS and not bias:
            v = np.zeros_like(v)
        leaves.append(jnp.asarray(v, jnp.float32))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def params_dict(params) -> dict:
    """A cell's params NamedTuple as a dict of float64 NumPy arrays (None kept)."""
    return {f: None if v is None else np.asarray(v, np.float64) for f, v in params._asdict().items()}


def ref_step(name: str, params):
    return CELLS[name][1](params_dict(params))


def state_fields(name: str):
    return CELLS[name][2]


def flat_named(tree) -> dict:
    """``{keystr(path): leaf}`` of a pytree: the names under which the golden files store it."""
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def fill_like(template, stored: dict, prefix: str = ""):
    """Rebuild a pytree shaped like ``template`` from ``flat_named`` entries."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = [jnp.asarray(stored[prefix + jax.tree_util.keystr(p)]) for p, _ in flat]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def arange_inputs(T: int, B: int, I: int) -> np.ndarray:
    """Keras-style ``arange`` inputs, scaled into [-1, 1]."""
    n = T * B * I
    return ((np.arange(n) - (n - 1) / 2) / max(n / 2, 1)).reshape(T, B, I).astype(np.float32)


def loop_one(cell, params, xs, state, length=None, reverse=False):
    """A plain Python loop over ``cell.step`` for ONE example: xs [T, I], state unbatched.

    Returns (final_state, ys [T, out]) with zero outputs at padded steps.
    """
    T = xs.shape[0]
    L = T if length is None else max(0, min(int(length), T))
    ys = [None] * T
    order = range(L - 1, -1, -1) if reverse else range(L)
    step = _jitted_step(cell)
    for t in order:
        state, ys[t] = step(params, state, xs[t])
    zero = jnp.zeros((cell.output_size,), _out_dtype(cell, params, xs))
    ys = [zero if y is None else y for y in ys]
    return state, (jnp.stack(ys) if T else jnp.zeros((0, cell.output_size), zero.dtype))


@functools.lru_cache(maxsize=64)
def _jitted_step(cell):
    return jax.jit(cell.step)


def _out_dtype(cell, params, xs):
    s = cell.initial_state(params)
    return jax.eval_shape(cell.step, params, s, xs[0] if xs.shape[0] else
                          jnp.zeros(xs.shape[1:], xs.dtype))[1].dtype


def assert_tree_close(a, b, atol=1e-5, rtol=1e-5, err_msg=""):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"tree structures differ: {ta} vs {tb}"
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                   atol=atol, rtol=rtol, err_msg=err_msg)


def assert_tree_equal(a, b, err_msg=""):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"tree structures differ: {ta} vs {tb}"
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=err_msg)

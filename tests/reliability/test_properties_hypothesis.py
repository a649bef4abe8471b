"""Property tests over drawn shapes, dtypes, lengths and batch shapes (Hypothesis).

The reliability properties (docs/testing.md) 1 (scan == a Python loop over ``cell.step``, per example),
5 (a padded batch == each sequence alone; zeros past the length; NaN padding changes
nothing), 6 (reverse with lengths == reversing each valid prefix by hand) and 7 (edge
sizes: T = 0, length 0 and T, hidden 1, batch 1, 0..2 batch dimensions). The examples
are derandomised (``rel_common.HYPOTHESIS``), so CI sees the same draws on every run.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rel_common as rc
from hypothesis import given
from hypothesis import strategies as st

import jlstm

DTYPES = {"float32": (jnp.float32, 1e-5), "bfloat16": (jnp.bfloat16, 4e-2)}


@st.composite
def problems(draw, with_mask=True):
    name = draw(st.sampled_from(rc.CELL_NAMES))
    H = draw(st.integers(1, 3))
    I = draw(st.integers(1, 3))
    T = draw(st.integers(0, 5))
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    lengths = np.array(draw(st.lists(st.integers(0, T), min_size=int(np.prod(batch)),
                                     max_size=int(np.prod(batch)))), np.int32).reshape(batch)
    mask = None
    if with_mask and draw(st.booleans()):
        mask = np.array(draw(st.lists(st.booleans(), min_size=T * int(np.prod(batch)),
                                      max_size=T * int(np.prod(batch)))), bool).reshape((T,) + batch)
    reverse = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 16))
    return dict(name=name, H=H, I=I, T=T, batch=batch, dtype=dtype, lengths=lengths, mask=mask,
                reverse=reverse, seed=seed)


@functools.cache
def _cell(name, H, dtype):
    """One cell object per configuration, so the jitted functions below hit their caches."""
    return rc.make_cell(name, H, dtype=None if dtype == "float32" else DTYPES[dtype][0])


@functools.cache
def _jit_scan(cell):
    return jax.jit(functools.partial(jlstm.scan, cell), static_argnames=("reverse", "time_major"))


@functools.cache
def _jit_step(cell):
    return jax.jit(cell.step)


def _setup(pr):
    dtype, tol = DTYPES[pr["dtype"]]
    cell = _cell(pr["name"], pr["H"], pr["dtype"])
    k1, k2, k3, k4 = jax.random.split(jax.random.key(pr["seed"]), 4)
    params = cell.init(k1, pr["I"])
    leaves, tree = jax.tree.flatten(params)
    params = tree.unflatten([a + 0.3 * jax.random.normal(k, a.shape, a.dtype)
                             for a, k in zip(leaves, jax.random.split(k2, len(leaves)))])
    xs = jax.random.normal(k3, (pr["T"],) + pr["batch"] + (pr["I"],)).astype(dtype)
    zero = cell.initial_state(params, pr["batch"])
    state0 = type(zero)(*[(0.5 * jax.random.normal(k, a.shape)).astype(a.dtype)
                          for a, k in zip(zero, jax.random.split(k4, len(zero)))])
    return cell, params, xs, state0, tol


def _at(tree, idx):
    return jax.tree.map(lambda a: a[idx], tree)


@given(problems())
@rc.HYPOTHESIS
def test_scan_equals_python_loop_per_example(pr):
    """Property 1 (+ lengths, masks, reverse, time_major=False): per example, per step."""
    cell, params, xs, state0, tol = _setup(pr)
    T, batch = pr["T"], pr["batch"]
    lengths, mask = jnp.asarray(pr["lengths"]), None if pr["mask"] is None else jnp.asarray(pr["mask"])
    time_major = pr["seed"] % 2 == 0
    xs_in = xs if time_major else jnp.moveaxis(xs, 0, -2)
    mask_in = mask if (mask is None or time_major) else jnp.moveaxis(mask, 0, -1)
    final, ys = _jit_scan(cell)(params, xs_in, state0, lengths=lengths, mask=mask_in,
                                reverse=pr["reverse"], time_major=time_major)
    if not time_major:
        ys = jnp.moveaxis(ys, -2, 0)
    assert ys.shape == (T,) + batch + (cell.output_size,)
    assert jax.tree.map(lambda a: a.dtype, final) == jax.tree.map(lambda a: a.dtype, state0)
    step = _jit_step(cell)
    for idx in np.ndindex(*batch):
        state = _at(state0, idx)
        L = int(pr["lengths"][idx])
        order = range(L - 1, -1, -1) if pr["reverse"] else range(L)
        want = np.zeros((T, cell.output_size), np.float64)
        for t in order:
            if mask is not None and not bool(pr["mask"][(t,) + idx]):
                continue
            state, y = step(params, state, xs[(t,) + idx])
            assert y.dtype == ys.dtype
            want[t] = np.asarray(y, np.float64)
        np.testing.assert_allclose(np.asarray(ys[(slice(None),) + idx], np.float64), want, atol=tol, rtol=tol)
        rc.assert_tree_close(_at(final, idx), state, atol=tol, rtol=tol, err_msg=f"final state {idx}")


@given(problems(with_mask=False))
@rc.HYPOTHESIS
def test_padded_batch_equals_each_sequence_alone(pr):
    """Properties 5 and 6: NaN padding; each example run alone on its valid prefix (reversed by hand)."""
    cell, params, xs, state0, tol = _setup(pr)
    T, batch, lengths = pr["T"], pr["batch"], pr["lengths"]
    t = np.arange(T).reshape((T,) + (1,) * len(batch))
    padded = jnp.where(jnp.asarray(t < lengths[None])[..., None], xs, jnp.nan).astype(xs.dtype)
    scan = _jit_scan(cell)
    final, ys = scan(params, padded, state0, lengths=jnp.asarray(lengths), reverse=pr["reverse"])
    assert not np.isnan(np.asarray(ys, np.float32)).any()
    for idx in np.ndindex(*batch):
        L = int(lengths[idx])
        x_alone = xs[(slice(0, L),) + idx]
        if pr["reverse"]:
            x_alone = x_alone[::-1]                       # reverse the valid prefix by hand
        f_alone, y_alone = scan(params, x_alone, _at(state0, idx))
        if pr["reverse"]:
            y_alone = y_alone[::-1]
        got = np.asarray(ys[(slice(None),) + idx], np.float64)
        np.testing.assert_allclose(got[:L], np.asarray(y_alone, np.float64), atol=tol, rtol=tol)
        np.testing.assert_array_equal(got[L:], 0.0)       # padded outputs are exactly zero
        rc.assert_tree_close(_at(final, idx), f_alone, atol=tol, rtol=tol)


@st.composite
def layer_problems(draw):
    kind = draw(st.sampled_from(["recurrent", "reverse", "stack", "bidirectional"]))
    names = draw(st.lists(st.sampled_from(rc.CELL_NAMES), min_size=2, max_size=2))
    T = draw(st.integers(1, 5))
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    n = int(np.prod(batch))
    lengths = np.array(draw(st.lists(st.integers(0, T), min_size=n, max_size=n)), np.int32).reshape(batch)
    return dict(kind=kind, names=names, T=T, batch=batch, lengths=lengths, seed=draw(st.integers(0, 999)))


@functools.cache
def _layer(kind, names):
    a, b = (_cell(n, 3, "float32") for n in names)
    if kind == "recurrent":
        model = jlstm.recurrent(a)
    elif kind == "reverse":
        model = jlstm.recurrent(a, reverse=True)
    elif kind == "stack":
        model = jlstm.stack(jlstm.recurrent(a), jlstm.recurrent(b, reverse=True))
    else:
        model = jlstm.bidirectional(a, b, merge="concat")
    return model, jax.jit(model.apply)


@given(layer_problems())
@rc.HYPOTHESIS
def test_layers_padded_batch_equals_each_sequence_alone(pr):
    """Properties 5 and 6 for the layers: recurrent, reversed, stack and bidirectional."""
    model, apply = _layer(pr["kind"], tuple(pr["names"]))
    k1, k2 = jax.random.split(jax.random.key(pr["seed"]))
    params = model.init(k1, 2)
    T, batch, lengths = pr["T"], pr["batch"], pr["lengths"]
    xs = jax.random.normal(k2, (T,) + batch + (2,))
    t = np.arange(T).reshape((T,) + (1,) * len(batch))
    padded = jnp.where(jnp.asarray(t < lengths[None])[..., None], xs, jnp.nan)
    final, ys = apply(params, padded, lengths=jnp.asarray(lengths))
    assert ys.shape == (T,) + batch + (model.output_size,)
    for idx in np.ndindex(*batch):
        L = int(lengths[idx])
        f_alone, y_alone = apply(params, xs[(slice(0, L),) + idx])
        got = ys[(slice(None),) + idx]
        np.testing.assert_allclose(got[:L], y_alone, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(got[L:], 0.0)
        rc.assert_tree_close(_at(final, idx), f_alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,reverse", [(n, k % 2 == 1) for k, n in enumerate(rc.CELL_NAMES)])
def test_padded_gradients_equal_sum_of_alone_gradients(name, reverse):
    """Property 5, gradients: NaN padding leaks no NaN (jax#347), grads equal the per-sequence sum."""
    cell = rc.make_cell(name, 3)
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    params = cell.init(k1, 2)
    T, lengths = 5, np.array([5, 2, 0])
    xs = jax.random.normal(k2, (T, 3, 2))
    w = jax.random.normal(k3, (T, 3, cell.output_size))
    valid = np.arange(T)[:, None] < lengths[None]
    padded = jnp.where(jnp.asarray(valid)[..., None], xs, jnp.nan)

    def loss(p, x, lengths, w, reverse):
        final, ys = jlstm.scan(cell, p, x, lengths=lengths, reverse=reverse)
        return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=4)
    gp, gx = grad(params, padded, jnp.asarray(lengths), w, reverse)
    chex.assert_tree_all_finite((gp, gx))                # NaN in the padding leaks nowhere
    np.testing.assert_array_equal(np.asarray(gx)[~valid], 0.0)
    # a sequence of length 0 contributes sum(sin(state0)) only: no gradient to the params
    total = jax.tree.map(jnp.zeros_like, params)
    for b in range(2):
        L = int(lengths[b])
        gb, gxb = grad(params, xs[:L, b], jnp.asarray(L), w[:L, b], reverse)
        total = jax.tree.map(jnp.add, total, gb)
        np.testing.assert_allclose(gx[:L, b], gxb, atol=1e-5, rtol=1e-4)
    rc.assert_tree_close(gp, total, atol=1e-5, rtol=1e-4)

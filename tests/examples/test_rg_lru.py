"""The RG-LRU example cell (a user-style cell declaring CellFast.linear) against a NumPy transcription of
Griffin's equations and against the recurrentgemma package's RGLRU; linear_form with resets against
each episode run alone; linear_form's errors."""

import dataclasses

import episodes
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm.core.linear import linear_form
from jlstm.examples.rg_lru import RGLRUParams, rg_lru

W, NH, T, B = 8, 2, 17, 3


def np_rg_lru(p, xs, h0, c=8.0):
    """h_t = a_t h_{t-1} + √(1 − a_t²) (i_t x_t), log a_t = −c σ(x W_a + b_a) softplus(Λ), one row and step
    at a time in float64; the gates block-diagonal, one block per head."""
    p = RGLRUParams(*(np.asarray(v, np.float64) for v in p))
    xs, h = np.asarray(xs, np.float64), np.array(h0, np.float64)
    d = W // NH
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    ys = np.zeros(xs.shape)
    for b in range(xs.shape[1]):
        for t in range(xs.shape[0]):
            x = xs[t, b]
            gx = np.concatenate([x[j * d:(j + 1) * d] @ p.w_x[j] + p.b_x[j] for j in range(NH)])
            ga = np.concatenate([x[j * d:(j + 1) * d] @ p.w_a[j] + p.b_a[j] for j in range(NH)])
            a = np.exp(-c * sig(ga) * np.log1p(np.exp(p.a_param)))
            h[b] = a * h[b] + np.sqrt(1.0 - a ** 2) * sig(gx) * x
            ys[t, b] = h[b]
    return ys, h


def _setup(seed=0):
    cell = rg_lru(W, num_heads=NH)
    params = cell.init(jax.random.key(seed), W)
    params = params._replace(b_x=0.5 * jax.random.normal(jax.random.key(seed + 1), params.b_x.shape),
                             b_a=0.5 * jax.random.normal(jax.random.key(seed + 2), params.b_a.shape))
    xs = jax.random.normal(jax.random.key(seed + 3), (T, B, W))
    h0 = jax.random.normal(jax.random.key(seed + 4), (B, W))
    return cell, params, xs, h0


def with_parallel(cell):
    """The cell with its linear form as method "parallel" (what jlstm.scan wires for CellFast.linear)."""
    return dataclasses.replace(cell, fast=cell.fast._replace(methods=(("parallel", linear_form(cell)),)))


def test_step_loop_and_linear_form_match_numpy_transcription():
    cell, params, xs, h0 = _setup()
    want, h_want = np_rg_lru(params, xs, h0)
    h, ys = jax.jit(lambda p, x, s: jlstm.scan(cell, p, x, s, method="sequential"))(params, xs, h0)
    h2, ys2 = jax.jit(lambda p, x, s: linear_form(cell)(p, x, s, None))(params, xs, h0)
    for got, hh in ((ys, h), (ys2, h2)):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
        np.testing.assert_allclose(hh, h_want, atol=2e-5, rtol=2e-5)


def test_matches_recurrentgemma_rglru():
    layers = pytest.importorskip("recurrentgemma.jax.layers", reason="recurrentgemma (with typeguard<3) not "
                                 "installed; the NumPy transcription above checks the same equations")
    cell, params, xs, h0 = _setup(5)
    module = layers.RGLRU(width=W, num_heads=NH)
    rg_params = {"params": {"a_param": params.a_param,
                            "input_gate": {"w": params.w_x, "b": params.b_x},
                            "a_gate": {"w": params.w_a, "b": params.b_a}}}
    x_bt = jnp.swapaxes(xs, 0, 1)
    segment_pos = jnp.broadcast_to(jnp.arange(1, T + 1), (B, T))  # no position 0: no reset of its own
    y_ref, h_ref = module.apply(rg_params, x_bt, segment_pos, h0)
    h, ys = linear_form(cell)(params, xs, h0, None)
    np.testing.assert_allclose(jnp.swapaxes(ys, 0, 1), y_ref, atol=2e-6, rtol=2e-5)
    np.testing.assert_allclose(h, h_ref, atol=2e-6, rtol=2e-5)


def test_linear_form_with_resets_lengths_and_reverse_equals_episodes_alone():
    cell, params, xs, h0 = _setup(2)
    resets = episodes.random_resets(np.random.default_rng(0), T, B, p=0.2, at=((0, 0), (3, 1), (4, 1)))
    episodes.check_scan_against_episodes(with_parallel(cell), params, xs, resets, ("parallel",), state=h0,
                                         lengths=jnp.array([T, 11, 6]), reverse=True)


def test_linear_form_clear_errors():
    cell, params, xs, h0 = _setup()
    with pytest.raises(ValueError, match="declares no diagonal-linear recurrence"):
        linear_form(jlstm.lstm(4))
    fast = cell.fast
    two_leaves = dataclasses.replace(cell, initial_state=lambda p, b=(): (cell.initial_state(p, b),) * 2)
    with pytest.raises(ValueError, match="state is one array h, got 2 arrays"):
        linear_form(two_leaves)(params, xs, (h0, h0), None)
    wide_y = dataclasses.replace(cell, step=lambda p, h, x: (h, jnp.concatenate([h, h], -1)), output_size=2 * W)
    with pytest.raises(ValueError, match=r"outputs y_t = h_t of shape \(3, 8\), but the step returns y of shape"):
        linear_form(wide_y)(params, xs, h0, None)
    bad = dataclasses.replace(cell, fast=fast._replace(linear=lambda p, xp: (xp[..., :3], xp[..., 0, :])))
    with pytest.raises(ValueError, match=r"returned a of shape \(17, 3, 3, 3\), which does not broadcast"):
        linear_form(bad)(params, xs, h0, None)
    single = dataclasses.replace(cell, fast=fast._replace(linear=lambda p, xp: xp))
    with pytest.raises(TypeError, match="must return a pair"):
        linear_form(single)(params, xs, h0, None)

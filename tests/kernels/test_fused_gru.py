"""The fused GRU fast path (``fast=True``) equals the reference scan of ``cell.step`` (``fast=False``).

The reference path is itself checked against a NumPy transcription of the GRU in
``tests/cells/test_cells.py``. Here: values and gradients (params, xs, initial state) with lengths,
masks, reverse, several batch dims, unbatched input, unroll variants and segment remat, in both forward layouts
(inputs hoisted into one GEMM, or multiplied inside the loop); bf16 matmuls; forward mode and second
order in float64; vmap; resets against each episode run alone (``tests/episodes.py``, once per case); and the loop
structure (one recurrent GEMM per step, weight gradients outside the loops).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from episodes import run_episodes
from jax.test_util import check_grads
from jaxpr_walk import dots_per_scan_body

import jlstm
import jlstm.kernels.fused_gru as fused_mod

T, I, H = 7, 3, 5


def _setup(batch, dtype=None, seed=0):
    cell = jlstm.gru(H, dtype=dtype)
    k = jax.random.split(jax.random.key(seed), 6)
    params = cell.init(k[0], I)
    # Non-zero biases exercise every gate's gradient, b_hn (inside the reset product) included.
    params = params._replace(b_x=0.3 * jax.random.normal(k[4], params.b_x.shape),
                             b_h=0.3 * jax.random.normal(k[5], params.b_h.shape))
    xs = jax.random.normal(k[1], (T,) + batch + (I,))
    state = jlstm.GRUState(h=0.5 * jax.random.normal(k[2], batch + (H,)))
    ct = jax.random.normal(jax.random.key(seed + 100), (T,) + batch + (H,))
    return cell, params, xs, state, ct


def _value_and_grads(cell, params, xs, state, ct, fast, **kw):
    def loss(p, x, s):
        final, ys = jlstm.scan(cell, p, x, s, fast=fast, **kw)
        return jnp.sum(ys.astype(jnp.float32) * ct) + jnp.sum(1.3 * final.h), (final, ys)

    (val, (final, ys)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        params, xs, state)
    return val, final, ys, grads


def _assert_close(a, b, tol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol, atol=tol)


def _force_layout(monkeypatch, inloop):
    monkeypatch.setattr(fused_mod, "_inloop_default", lambda B, plan=None: inloop)


CASES = {
    "plain": ((4,), {}),
    "lengths": ((4,), {"lengths": np.array([7, 3, 0, 5])}),
    "reverse_lengths": ((4,), {"reverse": True, "lengths": np.array([2, 7, 1, 0])}),
    "mask": ((4,), {"mask": np.random.default_rng(0).random((T, 4)) < 0.7}),
    "batch_dims": ((2, 3), {"lengths": np.array([[7, 1, 4], [0, 6, 7]])}),
    "unbatched": ((), {}),
    "unroll_full": ((4,), {"unroll": True, "lengths": np.array([7, 3, 0, 5])}),
    "unroll3_uneven": ((4,), {"unroll": 3}),
    "remat_segment": ((4,), {"remat": "segment", "lengths": np.array([7, 3, 0, 5])}),
}
LAYOUT_CASES = [(n, False) for n in CASES] + [("plain", True), ("mask", True), ("reverse_lengths", True),
                                               ("batch_dims", True)]


def _kwargs(name):
    batch, kw = CASES[name]
    return batch, {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


@functools.cache
def _reference(name, dtype=None):
    batch, kw = _kwargs(name)
    cell, params, xs, state, ct = _setup(batch, dtype)
    return _value_and_grads(cell, params, xs, state, ct, fast=False, **kw)


@pytest.mark.parametrize("name,inloop", LAYOUT_CASES,
                         ids=[f"{n}-{'inloop' if i else 'hoisted'}" for n, i in LAYOUT_CASES])
def test_fast_equals_reference_f32(name, inloop, monkeypatch):
    _force_layout(monkeypatch, inloop)
    batch, kw = _kwargs(name)
    cell, params, xs, state, ct = _setup(batch)
    fast = jax.jit(lambda p, x, s: jlstm.scan(cell, p, x, s, **kw))
    assert "custom_jvp_call" in str(jax.make_jaxpr(fast)(params, xs, state))        # the kernel ran
    got = _value_and_grads(cell, params, xs, state, ct, fast=True, **kw)
    _assert_close(got, _reference(name), 2e-5)
    _assert_close(fast(params, xs, state), got[1:3], 2e-5)      # the primal alone (nothing differentiates it)
    # Every gradient is really there (a silently dropped one would be zeros on both paths).
    for g in (*got[3][0], got[3][1], got[3][2].h):
        assert float(jnp.max(jnp.abs(g))) > 0


@pytest.mark.parametrize("layout", ["hoisted", "inloop"])
def test_fast_equals_reference_bf16(layout, monkeypatch):
    """bf16 matmuls with float32 accumulation and state: the outputs are bf16, as the cell's step gives them."""
    _force_layout(monkeypatch, layout == "inloop")
    batch, kw = _kwargs("lengths")
    cell, params, xs, state, ct = _setup(batch, jnp.bfloat16)
    got = _value_and_grads(cell, params, xs, state, ct, fast=True, **kw)
    want = _reference("lengths", jnp.bfloat16)
    assert got[2].dtype == want[2].dtype == jnp.bfloat16 and got[1].h.dtype == jnp.float32
    _assert_close(got[:3], want[:3], 2e-2)
    for g, r in zip(jax.tree.leaves(got[3]), jax.tree.leaves(want[3])):
        np.testing.assert_allclose(g, r, atol=3e-2 * max(1.0, float(np.abs(r).max())), rtol=3e-2)


def test_padding_nan_is_ignored():
    """NaN in padded steps changes neither values nor gradients on the fast path."""
    cell, params, xs, state, ct = _setup((4,))
    lengths = jnp.array([7, 3, 0, 5])
    xs_nan = jnp.where(jnp.arange(T)[:, None, None] < lengths[None, :, None], xs, jnp.nan)
    a = _value_and_grads(cell, params, xs, state, ct, fast=True, lengths=lengths)
    b = _value_and_grads(cell, params, xs_nan, state, ct, fast=True, lengths=lengths)
    _assert_close(a[:3], b[:3], 0)
    _assert_close(a[3][0], b[3][0], 0)
    assert np.all(np.isfinite(np.asarray(b[3][1])))


@pytest.mark.parametrize("inloop", [False, True], ids=["hoisted", "inloop"])
def test_forward_mode_and_second_order_float64(inloop, monkeypatch):
    """jvp and vjp, to order 2, of a run with a mask and resets, against finite differences (float64)."""
    _force_layout(monkeypatch, inloop)
    with jax.enable_x64(True):
        cell = jlstm.gru(3)
        k = jax.random.split(jax.random.key(3), 4)
        params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(k[0], 2))
        params = params._replace(b_h=0.3 * jax.random.normal(k[3], params.b_h.shape, jnp.float64))
        xs = jax.random.normal(k[1], (5, 2, 2), jnp.float64)
        h0 = 0.5 * jax.random.normal(k[2], (2, 3), jnp.float64)
        mask = jnp.array([[1, 1], [1, 0], [1, 1], [0, 1], [1, 1]], bool)
        resets = jnp.array([[0, 0], [0, 0], [1, 0], [0, 0], [0, 1]], bool)

        @jax.jit
        def f(p, x, h):
            final, ys = jlstm.scan(cell, p, x, jlstm.GRUState(h=h), mask=mask, resets=resets)
            return jnp.sum(jnp.tanh(ys)) + jnp.sum(jnp.sin(final.h))

        assert "custom_jvp_call" in str(jax.make_jaxpr(f)(params, xs, h0))
        check_grads(f, (params, xs, h0), order=2, modes=["fwd", "rev"], atol=1e-5, rtol=1e-5, eps=1e-6)


def test_vmap_equals_the_batched_call():
    """vmap over sequences (and over a second parameter set) equals the batched call and separate calls."""
    cell, params, xs, state, _ = _setup((4,))
    lengths = jnp.array([7, 3, 0, 5])
    _, ys = jax.jit(lambda p, x: jlstm.scan(cell, p, x, state, lengths=lengths))(params, xs)
    one = jax.vmap(lambda x, s, n: jlstm.scan(cell, params, x, s, lengths=n)[1], in_axes=(1, 0, 0), out_axes=1)
    _assert_close(jax.jit(one)(xs[:, :, None], jlstm.GRUState(h=state.h[:, None]), lengths[:, None])[:, :, 0],
                  ys, 1e-6)
    params2 = jax.tree.map(lambda a: 0.5 * a[::-1] if a.ndim > 1 else a, params)
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, params2)
    many = jax.jit(jax.vmap(lambda p: jlstm.scan(cell, p, xs, state, lengths=lengths)[1]))(both)
    _assert_close(many[0], ys, 1e-6)
    ref = jax.jit(lambda p: jlstm.scan(cell, p, xs, state, lengths=lengths, fast=False)[1])
    _assert_close(many[1], ref(params2), 2e-5)


RESETS = np.zeros((T, 2), bool)
RESETS[0, 0] = RESETS[4, 0] = RESETS[3, 1] = RESETS[5, 1] = True
RESET_CASES = {"plain": {}, "lengths": {"lengths": np.array([7, 5])},
               "mask": {"mask": np.array([[1, 1], [1, 1], [0, 1], [1, 0], [1, 1], [1, 0], [1, 1]], bool)}}


def _valid(kw):
    if "lengths" in kw:
        return np.arange(T)[:, None] < kw["lengths"][None, :]
    return kw.get("mask", np.ones((T, 2), bool))


def _loss_and_jvp(run, params, xs, state, ct):
    """Value and gradients (params, xs, initial state), and a jvp along random params and xs tangents."""
    def loss(p, x, s):
        final, ys = run(p, x, s)
        return jnp.sum(ys * ct) + jnp.sum(1.3 * final.h)

    k = jax.random.split(jax.random.key(7), len(jax.tree.leaves(params)) + 1)
    leaves, tree = jax.tree.flatten(params)
    tp = tree.unflatten([jax.random.normal(kk, a.shape) for kk, a in zip(k, leaves)])
    tx = jax.random.normal(k[-1], xs.shape)
    jvp = jax.jit(lambda p, x: jax.jvp(lambda p, x: run(p, x, state), (p, x), (tp, tx)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, xs, state), jvp(params, xs)


@functools.cache
def _episodes_reference(name):
    """Each episode run alone (``tests/episodes.py``): values, gradients and jvp, computed once per case."""
    cell, params, xs, state, ct = _setup((2,))

    def episodes(p, x, s):
        return run_episodes(cell, p, x, RESETS, valid=_valid(RESET_CASES[name]), state=s)

    return _loss_and_jvp(episodes, params, xs, state, ct)


@pytest.mark.parametrize("name,inloop", [("plain", False), ("lengths", True), ("mask", True), ("mask", False)])
def test_resets_equal_episodes_run_alone(name, inloop, monkeypatch):
    """jlstm.scan(resets=) on the fused path: values, gradients and jvp equal each episode run alone."""
    _force_layout(monkeypatch, inloop)
    kw = {k: jnp.asarray(v) for k, v in RESET_CASES[name].items()}
    cell, params, xs, state, ct = _setup((2,))

    def fused(p, x, s):
        return jlstm.scan(cell, p, x, s, resets=jnp.asarray(RESETS), **kw)

    assert "custom_jvp_call" in str(jax.make_jaxpr(fused)(params, xs, state))
    got, jvp_got = _loss_and_jvp(fused, params, xs, state, ct)
    want, jvp_want = _episodes_reference(name)
    _assert_close(got, want, 1e-4)
    _assert_close(jvp_got, jvp_want, 1e-4)
    # Row 0 restarts at t=0: nothing reaches its initial state; row 1's does.
    assert float(jnp.max(jnp.abs(got[1][2].h[0]))) == 0 and float(jnp.max(jnp.abs(got[1][2].h[1]))) > 0


def test_a_reset_cuts_the_gradient():
    """Row 1's outputs from its reset at t=3 on do not depend on its earlier inputs: exactly zero."""
    cell, params, xs, state, _ = _setup((2,))
    def late(x):
        return jnp.sum(jlstm.scan(cell, params, x, state, resets=jnp.asarray(RESETS))[1][3:, 1])

    g = jax.jit(jax.grad(late))(xs)
    assert float(jnp.max(jnp.abs(g[:3, 1]))) == 0 and float(jnp.min(jnp.max(jnp.abs(g[3:, 1]), axis=-1))) > 0


@pytest.mark.parametrize("inloop", [False, True], ids=["hoisted", "inloop"])
def test_one_recurrent_dot_per_step(inloop, monkeypatch):
    """The forward loop holds the recurrent product (and the input's own in the in-loop layout); the backward
    loop one product by W_hᵀ; the weight gradients are whole-sequence GEMMs outside the loops."""
    _force_layout(monkeypatch, inloop)
    cell, params, xs, state, ct = _setup((4,))

    def fwd(p, x):
        return jlstm.scan(cell, p, x, state)[1]

    def train(p, x):
        return jax.grad(lambda p, x: jnp.sum(fwd(p, x) * ct), argnums=(0, 1))(p, x)

    forward_dots = 2 if inloop else 1
    assert dots_per_scan_body(jax.make_jaxpr(fwd)(params, xs)) == [forward_dots]
    assert dots_per_scan_body(jax.make_jaxpr(train)(params, xs)) == [forward_dots, 1]


def test_gru_sequence_checks_resets():
    cell, params, xs, state, _ = _setup((4,))
    with pytest.raises(ValueError, match=r"resets must be a bool array of shape \(7, 4\)"):
        fused_mod.gru_sequence(params.w_x, params.w_h, params.b_x, params.b_h, xs, state.h,
                               resets=jnp.zeros((7, 3), bool))
    hT, ys = fused_mod.gru_sequence(params.w_x, params.w_h, params.b_x, params.b_h, xs, state.h)
    final, ref = jlstm.scan(cell, params, xs, state, fast=False)
    _assert_close((hT, ys), (final.h, ref), 2e-5)

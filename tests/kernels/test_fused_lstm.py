"""The fused LSTM fast path (``fast=True``) equals the reference scan of ``cell.step`` (``fast=False``).

Values and gradients (w.r.t. params, xs and the initial state) are compared with lengths,
masks, reverse, several batch dims, unbatched input, unroll variants, peepholes, remat
segments and bf16 mixed precision, for both forward layouts (inputs hoisted into one
GEMM, or multiplied inside the loop). The reference results are computed once per case and shared.
With resets, the reference is each episode run alone by a Python loop over ``cell.step``
(``tests/episodes.py``): values, gradients and forward-mode tangents.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from episodes import run_episodes
from jaxpr_walk import count, scan_bodies

import jlstm
import jlstm.kernels.fused_lstm as fused_mod

T, I, H = 7, 3, 5


def _setup(batch, dtype=None, seed=0, peephole=None):
    cell = jlstm.lstm(H, dtype=dtype, peephole=peephole)
    k = jax.random.split(jax.random.key(seed), 6)
    params = cell.init(k[0], I)
    # A non-zero bias exercises every gate's gradient.
    params = params._replace(b=params.b + 0.3 * jax.random.normal(k[4], params.b.shape))
    if peephole:  # peepholes large enough to matter
        params = params._replace(w_c=0.5 * jax.random.normal(k[5], params.w_c.shape))
    xs = jax.random.normal(k[1], (T,) + batch + (I,))
    state = jlstm.LSTMState(h=0.5 * jax.random.normal(k[2], batch + (H,)),
                            c=0.5 * jax.random.normal(k[3], batch + (H,)))
    ct = jax.random.normal(jax.random.key(seed + 100), (T,) + batch + (H,))
    return cell, params, xs, state, ct


def _value_and_grads(cell, params, xs, state, ct, fast, **kw):
    def loss(p, x, s):
        final, ys = jlstm.scan(cell, p, x, s, fast=fast, **kw)
        return (jnp.sum(ys.astype(jnp.float32) * ct) + jnp.sum(1.3 * final.h)
                + jnp.sum(0.7 * final.c)), (final, ys)

    # One compiled program (eager differentiation would compile each of its operations on its own).
    (val, (final, ys)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        params, xs, state)
    return val, final, ys, grads


def _assert_close(a, b, tol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol, atol=tol)


def _force_layout(monkeypatch, inloop):
    """Force one layout of the fast path, whatever the backend and batch size."""
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
}


def _kwargs(name):
    batch, kw = CASES[name]
    return batch, {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


@functools.cache
def _reference(name, peephole=None):
    """The reference path's values and gradients, computed once per case and shared by the tests."""
    batch, kw = _kwargs(name)
    cell, params, xs, state, ct = _setup(batch, peephole=peephole)
    return _value_and_grads(cell, params, xs, state, ct, fast=False, **kw)


F32_CASES = [(n, False) for n in CASES] + [("mask", True), ("reverse_lengths", True)]


@pytest.mark.parametrize("name,inloop", F32_CASES,
                         ids=[f"{n}-{'inloop' if i else 'hoisted'}" for n, i in F32_CASES])
def test_fast_equals_reference_f32(name, inloop, monkeypatch):
    """Values and gradients, with the forward in either layout."""
    _force_layout(monkeypatch, inloop)
    batch, kw = _kwargs(name)
    cell, params, xs, state, ct = _setup(batch)
    got = _value_and_grads(cell, params, xs, state, ct, fast=True, **kw)
    _assert_close(got, _reference(name), 2e-5)
    # Every gradient is really there (a silently dropped one would be zeros on both paths).
    assert float(jnp.max(jnp.abs(got[3][0].w_h))) > 0
    assert float(jnp.max(jnp.abs(got[3][1]))) > 0
    assert float(jnp.max(jnp.abs(got[3][2].c))) > 0


INLOOP_CASES = [(None, "plain"), (None, "mask"), (None, "batch_dims"), (None, "reverse_lengths"),
                (None, "unroll_full"), ("diagonal", "lengths"), ("full", "mask")]


@pytest.mark.parametrize("peephole,name", INLOOP_CASES)
@pytest.mark.parametrize("inloop", [False, True], ids=["hoisted", "inloop"])
def test_inference_layouts_equal_reference(peephole, name, inloop, monkeypatch):
    """Both forward layouts (inputs hoisted into one GEMM, or multiplied inside the loop)."""
    _force_layout(monkeypatch, inloop)
    batch, kw = _kwargs(name)
    cell, params, xs, state, _ = _setup(batch, peephole=peephole)
    final, ys = jlstm.scan(cell, params, xs, state, **kw)
    ref = jlstm.scan(cell, params, xs, state, fast=False, **kw)
    _assert_close((final, ys), ref, 2e-5)


PEEPHOLE_CASES = [("diagonal", "lengths"), ("diagonal", "mask"), ("diagonal", "unbatched"),
                  ("full", "reverse_lengths"), ("full", "batch_dims"), ("full", "unroll3_uneven")]


@pytest.mark.parametrize("peephole,name", PEEPHOLE_CASES)
def test_fast_equals_reference_peepholes(peephole, name):
    """The article's full peephole matrices and diagonal peepholes take the fused path too."""
    batch, kw = _kwargs(name)
    cell, params, xs, state, ct = _setup(batch, peephole=peephole)
    assert "custom_jvp_call" in str(jax.make_jaxpr(
        lambda p: jlstm.scan(cell, p, xs, state, **kw)[1])(params))
    got = _value_and_grads(cell, params, xs, state, ct, fast=True, **kw)
    _assert_close(got, _reference(name, peephole), 3e-5)
    assert float(jnp.max(jnp.abs(got[3][0].w_c))) > 0


@pytest.mark.parametrize("peephole", ["diagonal", "full"])
def test_fast_equals_reference_peepholes_bf16(peephole):
    cell, params, xs, state, ct = _setup((4,), dtype=jnp.bfloat16, peephole=peephole)
    ref = _value_and_grads(cell, params, xs, state, ct, fast=False)
    got = _value_and_grads(cell, params, xs, state, ct, fast=True)
    _assert_close(got[1:3], ref[1:3], 2e-2)
    for g, r in zip(jax.tree.leaves(got[3]), jax.tree.leaves(ref[3])):
        g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
        np.testing.assert_allclose(g, r, atol=3e-2 * max(1.0, float(np.abs(r).max())), rtol=3e-2)


REMAT_CASES = [("segment", None, "plain"), (3, None, "lengths"), ("segment", "full", "reverse_lengths"),
               (2, "diagonal", "mask")]


@pytest.mark.parametrize("remat,peephole,name", REMAT_CASES)
def test_fused_segments_under_remat_equal_reference(remat, peephole, name):
    """remat='segment' or an int keeps the fused path, segment by segment (T=7 pads the last one)."""
    batch, kw = _kwargs(name)
    cell, params, xs, state, ct = _setup(batch, peephole=peephole)
    jaxpr = str(jax.make_jaxpr(lambda p: jlstm.scan(cell, p, xs, state, remat=remat, **kw)[1])(params))
    assert "custom_jvp_call" in jaxpr and ("remat" in jaxpr or "checkpoint" in jaxpr)
    ref = _reference(name, peephole)
    got = _value_and_grads(cell, params, xs, state, ct, fast=True, remat=remat, **kw)
    _assert_close(got, ref, 3e-5)


def test_lstm_sequence_peephole_arguments_checked():
    w = jnp.zeros((3, 8))
    with pytest.raises(ValueError, match="w_c exactly when peephole"):
        jlstm.lstm_sequence(w, jnp.zeros((2, 8)), jnp.zeros(8), jnp.zeros((4, 1, 3)),
                            jnp.zeros((1, 2)), jnp.zeros((1, 2)), peephole="diagonal")
    with pytest.raises(ValueError, match="peephole must be"):
        jlstm.lstm_sequence(w, jnp.zeros((2, 8)), jnp.zeros(8), jnp.zeros((4, 1, 3)),
                            jnp.zeros((1, 2)), jnp.zeros((1, 2)), w_c=jnp.zeros((3, 2)), peephole="diag")


@pytest.mark.parametrize("name,layout", [("plain", False), ("mask", True)])
def test_fast_equals_reference_bf16(name, layout, monkeypatch):
    _force_layout(monkeypatch, layout)
    batch, kw = CASES[name]
    cell, params, xs, state, ct = _setup(batch, dtype=jnp.bfloat16)
    kw = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    ref = _value_and_grads(cell, params, xs, state, ct, fast=False, **kw)
    got = _value_and_grads(cell, params, xs, state, ct, fast=True, **kw)
    assert got[2].dtype == ref[2].dtype == jnp.bfloat16
    assert got[1].h.dtype == ref[1].h.dtype == jnp.float32
    _assert_close(got[1:3], ref[1:3], 2e-2)
    # Gradients: bf16 GEMMs with float32 accumulation, compared relative to their scale.
    for g, r in zip(jax.tree.leaves(got[3]), jax.tree.leaves(ref[3])):
        g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
        np.testing.assert_allclose(g, r, atol=3e-2 * max(1.0, float(np.abs(r).max())), rtol=3e-2)


def test_fast_path_is_taken_and_padding_nan_is_ignored(monkeypatch):
    _force_layout(monkeypatch, True)
    """NaN in padded steps changes neither values nor gradients on the fast path."""
    cell, params, xs, state, ct = _setup((4,))
    lengths = jnp.array([7, 3, 0, 5])
    t = jnp.arange(T)[:, None, None]
    xs_nan = jnp.where(t < lengths[None, :, None], xs, jnp.nan)
    a = _value_and_grads(cell, params, xs, state, ct, fast=True, lengths=lengths)
    b = _value_and_grads(cell, params, xs_nan, state, ct, fast=True, lengths=lengths)
    _assert_close(a[:3], b[:3], 0)
    _assert_close(a[3][0], b[3][0], 0)
    assert np.all(np.isfinite(np.asarray(b[3][1])))


@pytest.mark.parametrize("inloop,unroll", [(False, 1), (True, 1), (False, 4)])
def test_one_recurrent_dot_per_step(inloop, unroll, monkeypatch):
    _force_layout(monkeypatch, inloop)
    """The backward scan body holds one dot_general, and so does the forward one, plus the input's own
    product in the in-loop layout (unrolling happens at lowering)."""
    cell, params, xs, state, ct = _setup((4,))
    forward_dots = 2 if inloop else 1

    def fwd(p, x):
        return jlstm.scan(cell, p, x, state, unroll=unroll)[1]

    def train(p, x):
        return jax.grad(lambda p, x: jnp.sum(fwd(p, x) * ct), argnums=(0, 1))(p, x)

    fwd_bodies = scan_bodies(jax.make_jaxpr(fwd)(params, xs))
    assert len(fwd_bodies) == 1
    assert count(fwd_bodies[0], "dot_general") == forward_dots
    train_bodies = scan_bodies(jax.make_jaxpr(train)(params, xs))
    assert len(train_bodies) == 2  # the forward with residuals, and the backward scan
    assert [count(body, "dot_general") for body in train_bodies] == [forward_dots, 1]
    # The weight gradients are whole-sequence GEMMs outside the loops.
    hlo = jax.jit(train).lower(params, xs).compile().as_text()
    assert "while" in hlo


def test_separate_backward_unroll_matches():
    cell, params, xs, state, ct = _setup((4,))
    p = params

    def loss(p, x, unroll):
        _, _, ys = jlstm.lstm_sequence(p.w_x, p.w_h, p.b, x, state.h, state.c, unroll=unroll)
        return jnp.sum(ys * ct)

    grad = jax.jit(jax.grad(loss), static_argnums=2)
    g1 = grad(p, xs, 1)
    g2 = grad(p, xs, (2, 4))
    _assert_close(g1, g2, 2e-5)


def test_backward_unroll_from_the_plan_unless_the_caller_gives_one(monkeypatch):
    """The CPU plan's ``lstm_backward_unroll`` sets the backward loop's unroll when ``jlstm.scan`` leaves
    unroll to the plan; an explicit int holds for both loops. The gradients are the same either way."""
    from lstm_kernel_cases import route_with_spy

    from jlstm.core.plan import PLANS

    cell, params, xs, state, ct = _setup((4,))
    plan = PLANS["cpu"]
    assert (plan.fused_unroll, plan.lstm_backward_unroll) == (2, 1)
    calls = route_with_spy(monkeypatch, plan, fused_mod, "_lstm_sequence")

    def grads(unroll):
        def loss(p, x):
            return jnp.sum(jlstm.scan(cell, p, x, state, unroll=unroll)[1] * ct)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, xs)

    by_plan = grads(None)
    assert calls[-1].unroll == (2, 1)
    explicit = grads(3)
    assert calls[-1].unroll == (3, 3)
    _assert_close(by_plan, explicit, 2e-5)


def test_default_unroll_is_positive_int():
    for backend in ("cpu", "gpu", "tpu"):
        u = jlstm.default_unroll(backend)
        assert isinstance(u, int) and u >= 1


# Row 0: resets at t=0 and t=2, and one at t=5, which the lengths case makes invalid. Row 1:
# consecutive resets at t=3 and t=4, and one at the last step.
RESETS = np.zeros((T, 2), bool)
RESETS[[0, 2, 5], 0] = True
RESETS[[3, 4, T - 1], 1] = True
RESET_CASES = {
    "plain": {},
    "lengths": {"lengths": np.array([4, 7])},
    "mask": {"mask": np.random.default_rng(1).random((T, 2)) < 0.75},
}


def _valid(kw):
    valid = np.ones((T, 2), bool)
    if "lengths" in kw:
        valid &= np.arange(T)[:, None] < kw["lengths"][None]
    if "mask" in kw:
        valid &= kw["mask"]
    return valid


def _reset_loss(run, ct):
    def loss(p, x, s):
        final, ys = run(p, x, s)
        return jnp.sum(ys * ct) + jnp.sum(1.3 * final.h) + jnp.sum(0.7 * final.c), (final, ys)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _loss_and_jvp(run, params, xs, state, ct):
    """Values and gradients (params, xs, initial state), and a jvp along random params and xs tangents."""
    k = jax.random.split(jax.random.key(7), len(jax.tree.leaves(params)) + 1)
    leaves, tree = jax.tree.flatten(params)
    tp = tree.unflatten([jax.random.normal(kk, a.shape) for kk, a in zip(k, leaves)])
    tx = jax.random.normal(k[-1], xs.shape)
    jvp = jax.jit(lambda p, x: jax.jvp(lambda p, x: run(p, x, state), (p, x), (tp, tx)))
    return _reset_loss(run, ct)(params, xs, state), jvp(params, xs)


@functools.cache
def _episodes_reference(peephole, name):
    """Each episode run alone (``tests/episodes.py``), computed once per case."""
    cell, params, xs, state, ct = _setup((2,), peephole=peephole)
    valid = _valid(RESET_CASES[name])
    return _loss_and_jvp(lambda p, x, s: run_episodes(cell, p, x, RESETS, valid=valid, state=s), params, xs,
                         state, ct)


@pytest.mark.parametrize("peephole,name,inloop", [
    (None, "plain", False), (None, "lengths", True), (None, "mask", True),
    ("diagonal", "plain", True), ("diagonal", "mask", False), ("full", "lengths", False)])
def test_resets_equal_episodes_run_alone(peephole, name, inloop, monkeypatch):
    """jlstm.scan(resets=) on the fused path: values, gradients and jvp equal each episode run alone."""
    _force_layout(monkeypatch, inloop)
    kw = {k: jnp.asarray(v) for k, v in RESET_CASES[name].items()}
    cell, params, xs, state, ct = _setup((2,), peephole=peephole)

    def fused(p, x, s):
        return jlstm.scan(cell, p, x, s, resets=jnp.asarray(RESETS), **kw)

    assert "custom_jvp_call" in str(jax.make_jaxpr(fused)(params, xs, state))
    (got, jvp_got) = _loss_and_jvp(fused, params, xs, state, ct)
    (want, jvp_want) = _episodes_reference(peephole, name)
    _assert_close(got[0], want[0], 2e-5)
    _assert_close(got[1], want[1], 1e-4)
    _assert_close(jvp_got, jvp_want, 1e-4)
    # Row 0 restarts at t=0: nothing reaches its initial state.
    assert float(jnp.max(jnp.abs(got[1][2].h[0]))) == 0 and float(jnp.max(jnp.abs(got[1][2].c[0]))) == 0
    assert float(jnp.max(jnp.abs(got[1][2].h[1]))) > 0


def test_a_reset_cuts_the_gradient():
    """Row 1's outputs from its reset at t=3 on do not depend on its earlier inputs: exactly zero."""
    cell, params, xs, state, _ = _setup((2,), peephole="full")
    def late(x):
        return jnp.sum(jlstm.scan(cell, params, x, state, resets=jnp.asarray(RESETS))[1][3:, 1])

    g = jax.jit(jax.grad(late))(xs)
    assert float(jnp.max(jnp.abs(g[:3, 1]))) == 0 and float(jnp.min(jnp.max(jnp.abs(g[3:, 1]), axis=-1))) > 0


@pytest.mark.parametrize("kw", [{"reverse": True, "lengths": np.array([4, 7])}, {"remat": "segment"}],
                         ids=["reverse_lengths", "remat_segment"])
def test_resets_with_reverse_and_remat_equal_step_loop(kw):
    """Reverse (each episode backwards) and segment remat keep the fused path and equal fast=False."""
    kw = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    cell, params, xs, state, ct = _setup((2,), peephole="diagonal")
    resets = jnp.asarray(RESETS)

    def run(fast):
        return lambda p, x, s: jlstm.scan(cell, p, x, s, resets=resets, fast=fast, **kw)

    assert "custom_jvp_call" in str(jax.make_jaxpr(run(True))(params, xs, state))
    _assert_close(_reset_loss(run(True), ct)(params, xs, state), _reset_loss(run(False), ct)(params, xs, state),
                  1e-4)


def test_lstm_sequence_resets():
    """The public function with a mask (its resets at masked steps are ignored), and its argument check."""
    _, params, xs, state, ct = _setup((2,))
    mask = jnp.asarray(RESET_CASES["mask"]["mask"])

    def seq(p, x, s):
        hT, cT, ys = jlstm.lstm_sequence(p.w_x, p.w_h, p.b, x, s.h, s.c, mask, resets=jnp.asarray(RESETS))
        return jlstm.LSTMState(hT, cT), ys

    got, want = _loss_and_jvp(seq, params, xs, state, ct), _episodes_reference(None, "mask")
    _assert_close(got, want, 1e-4)
    with pytest.raises(ValueError, match="resets must be a bool array of shape"):
        jlstm.lstm_sequence(params.w_x, params.w_h, params.b, xs, state.h, state.c, resets=jnp.zeros((T, 2)))


@pytest.fixture
def step_forward_plan(monkeypatch):
    """Route jlstm.scan by a CPU plan whose forward-only calls take the step loop up to batch 4 (the GPU
    plan's rule, at a small threshold); record each run of that loop."""
    from lstm_kernel_cases import route_with_spy

    from jlstm.core.plan import PLANS

    return route_with_spy(monkeypatch, PLANS["cpu"]._replace(lstm_step_forward_to_batch=4), fused_mod,
                          "_step_forward")


@pytest.mark.parametrize("name", ["mask", "reverse_lengths", "resets", "bf16"])
def test_forward_only_calls_take_the_step_loop_where_the_plan_says(name, step_forward_plan):
    """A forward-only call at B <= the plan's threshold runs the step loop and equals the reference (with
    a mask, reverse and lengths, resets (each episode run alone), bf16); a differentiated call keeps the
    fused loop and its gradients; a wider batch keeps the fused forward."""
    dtype = jnp.bfloat16 if name == "bf16" else None
    batch, kw = ((2,), {"resets": jnp.asarray(RESETS)}) if name == "resets" else _kwargs(
        "plain" if name == "bf16" else name)
    cell, params, xs, state, ct = _setup(batch, dtype=dtype)
    final, ys = jax.jit(lambda p: jlstm.scan(cell, p, xs, state, **kw))(params)
    assert step_forward_plan                      # the forward ran the step loop
    if name == "resets":
        want = jax.jit(lambda p: run_episodes(cell, p, xs, RESETS, valid=np.ones((T, 2), bool), state=state))(
            params)
    else:
        want = jax.jit(lambda p: jlstm.scan(cell, p, xs, state, fast=False, **kw))(params)
    _assert_close((final, ys), want, 2e-2 if dtype else 2e-5)
    assert ys.dtype == want[1].dtype
    del step_forward_plan[:]
    if name in ("mask", "reverse_lengths"):       # training: the fused loop's gradients, not the step loop
        got = _value_and_grads(cell, params, xs, state, ct, fast=True, **kw)
        assert not step_forward_plan
        _assert_close(got, _reference(name), 2e-5)
        cell, params, xs, state, _ = _setup((5,), dtype=dtype)
        jax.eval_shape(lambda p: jlstm.scan(cell, p, xs, state), params)   # B = 5: the fused forward
        assert not step_forward_plan

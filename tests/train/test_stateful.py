"""Stateful steps (truncated BPTT) against a Python loop over ``cell.step``; reset; fit(carry=...)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jlstm
import jlstm.train as jt

CELL = jlstm.lstm(3)
ENC = jlstm.recurrent(CELL)
LR = 0.1


def chunk_loss(params, state, xs, key):
    state, ys = ENC.apply(params, xs, state)
    return jnp.mean(jnp.sin(ys) * jnp.arange(1.0, 4.0)), state, {"h0": state.h[0, 0]}


def loop_loss(params, state, xs):
    """The same loss by a Python loop over cell.step (the reference)."""
    total = 0.0
    for x in xs:
        state, y = CELL.step(params, state, x)
        total = total + jnp.sum(jnp.sin(y) * jnp.arange(1.0, 4.0))
    return total / (xs.shape[0] * xs.shape[1] * 3), state


REF_GRAD = jax.jit(jax.value_and_grad(loop_loss, has_aux=True))
STEP = jax.jit(jt.make_stateful_train_step(chunk_loss, optax.sgd(LR), ENC.initial_state))
CHUNKS = jax.random.normal(jax.random.key(1), (3, 4, 2, 2))  # 3 consecutive chunks of T=4, batch 2, I=2


def test_step_equals_a_manual_truncated_bptt_loop():
    params = ENC.init(jax.random.key(0), 2)
    opt_state = optax.sgd(LR).init(params)
    state = ENC.initial_state(params, 2)
    ref_params, ref_state = params, state
    for xs in CHUNKS:
        params, opt_state, state, metrics = STEP(params, opt_state, state, xs)
        frozen = jax.tree.map(np.asarray, ref_state)  # a constant: no gradient into earlier chunks
        (ref_loss, ref_state), grads = REF_GRAD(ref_params, frozen, xs)
        ref_params = jax.tree.map(lambda p, g: p - LR * g, ref_params, grads)
        np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-5)
        np.testing.assert_allclose(metrics["h0"], ref_state.h[0, 0], rtol=1e-5, atol=1e-7)
        for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((ref_params, ref_state))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_no_gradient_crosses_the_chunk_boundary():
    """Differentiating a step's loss by its incoming state gives zero (stop_gradient), unlike full BPTT."""
    params = ENC.init(jax.random.key(0), 2)
    opt_state = optax.sgd(LR).init(params)
    s0 = jlstm.LSTMState(h=jnp.full((2, 3), 0.5), c=jnp.full((2, 3), -0.3))
    through_step = jax.grad(lambda s: STEP(params, opt_state, s, CHUNKS[0])[3]["loss"])(s0)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(through_step))
    full = jax.grad(lambda s: chunk_loss(params, s, CHUNKS[0], None)[0])(s0)
    assert np.abs(np.asarray(full.h)).max() > 1e-4


def test_reset_restarts_the_flagged_rows_from_the_initial_state():
    params = ENC.init(jax.random.key(0), 2)
    opt_state = optax.sgd(LR).init(params)
    carried = jlstm.LSTMState(h=jnp.full((2, 3), 0.5), c=jnp.full((2, 3), -0.3))
    reset = jnp.array([True, False])
    _, _, new, metrics = STEP(params, opt_state, carried, CHUNKS[0], None, reset)
    mixed = jlstm.LSTMState(h=carried.h.at[0].set(0.0), c=carried.c.at[0].set(0.0))
    ref_loss, ref_state = loop_loss(params, mixed, CHUNKS[0])
    np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new.h, ref_state.h, rtol=1e-5, atol=1e-7)
    # no reset at all is the same as reset=None
    _, _, a, _ = STEP(params, opt_state, carried, CHUNKS[0], None, jnp.array([False, False]))
    _, _, b, _ = STEP(params, opt_state, carried, CHUNKS[0])
    np.testing.assert_array_equal(a.h, b.h)


def test_reset_state_leaf_by_leaf_and_its_errors():
    state = (jnp.ones((2, 3)), {"c": jnp.ones((2, 4, 5))})
    out = jt.reset_state(state, jax.tree.map(jnp.zeros_like, state), jnp.array([False, True]))
    np.testing.assert_array_equal(out[0], [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(out[1]["c"][:, 0, 0], [1, 0])
    with pytest.raises(TypeError, match="bool array"):
        jt.reset_state(state, state, jnp.array([0, 1]))
    with pytest.raises(ValueError, match="one flag per sequence"):
        jt.reset_state(state, state, jnp.array([True, False, True]))
    no_init = jt.make_stateful_train_step(chunk_loss, optax.sgd(LR))
    params = ENC.init(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="initial_state=model.initial_state"):
        no_init(params, optax.sgd(LR).init(params), ENC.initial_state(params, 2), CHUNKS[0], None,
                jnp.array([True, False]))
    bad = jt.make_stateful_train_step(lambda p, s, b, k: chunk_loss(p, s, b, k)[0], optax.sgd(LR))
    with pytest.raises(TypeError, match=r"\(loss, new_state\)"):
        bad(params, optax.sgd(LR).init(params), ENC.initial_state(params, 2), CHUNKS[0])


def test_fit_with_carry_equals_the_manual_loop_and_learns():
    """fit(carry=...) = the step looped by hand (state fresh each epoch, reset flags honoured)."""
    period = np.array([0, 0, 1, 0, 1, 1, 2, 3])
    chunks = jt.lm_chunks(np.tile(period, 40), batch_size=4, chunk_len=5)
    lm = jt.LanguageModel(jlstm.recurrent(jlstm.lstm(12)), vocab_size=4, embed_size=4)
    p0 = lm.init(jax.random.key(2))
    opt = optax.adam(3e-2)
    params, opt_state, hist = jt.fit(lm.loss, p0, opt, chunks, epochs=3, eval_data=chunks[:4],
                                     carry=jt.Carry(lm.initial_state, 4), progress=False)
    step = jax.jit(jt.make_stateful_train_step(lm.loss, opt, lm.initial_state))
    ref, ref_opt = p0, opt.init(p0)
    for _ in range(3):
        state = lm.initial_state(ref, 4)
        for c in chunks:
            ref, ref_opt, state, _ = step(ref, ref_opt, state, c, None, c.reset)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)
    assert hist.loss.shape == (3 * len(chunks),) and hist.resumed_from is None
    # the pattern needs context beyond one chunk boundary; the carried state learns it
    assert hist.epochs[-1]["eval_accuracy"] > 0.8
    assert hist.epochs[-1]["eval_bits_per_token"] < 0.5 * hist.epochs[0]["train_bits_per_token"]

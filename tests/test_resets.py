"""``jlstm.scan(..., resets=)`` on every path: a batch with resets at arbitrary steps equals each
episode run alone from the cell's initial state, values and gradients (the reference is a plain
Python loop over ``cell.step``, one episode at a time)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm

T, B, I, H = 11, 3, 3, 4
# Resets at the first step, on consecutive steps, at the last step and nowhere (row 2).
RESETS = np.zeros((T, B), bool)
RESETS[[0, 4, 5, 10], 0] = True
RESETS[[3, 7], 1] = True


def _cases():
    lstm, gru, mlstm = jlstm.lstm(H), jlstm.gru(H), jlstm.mlstm(H, num_heads=2)
    return {
        "lstm-fused": (lstm, dict()),
        "lstm-loop": (lstm, dict(fast=False)),
        "lstm-remat-segment": (lstm, dict(remat="segment")),
        "lstm-loop-remat-step": (lstm, dict(fast=False, remat="step")),
        "lstm-peephole-full": (jlstm.lstm(H, peephole="full"), dict()),
        "gru-sequential": (gru, dict(method="sequential")),
        "gru-deer": (gru, dict(method="deer")),
        "gru-quasi-deer": (gru, dict(method=jlstm.Newton("quasi_deer", max_iters=T))),
        "slstm": (jlstm.slstm(H, num_heads=2), dict()),
        "mlstm-sequential": (mlstm, dict(method="sequential")),
        "mlstm-parallel": (mlstm, dict(method=jlstm.Parallel())),
        "mlstm-chunkwise": (mlstm, dict(method=jlstm.Chunkwise(chunk_size=4))),
        "min-gru-sequential": (jlstm.min_gru(H), dict(method="sequential")),
        "min-gru-parallel": (jlstm.min_gru(H), dict(method="parallel")),
        "min-lstm-parallel": (jlstm.min_lstm(H), dict(method="parallel")),
    }


CASES = _cases()


@functools.cache
def _step(cell):
    return jax.jit(cell.step)


def _episodes(cell, params, xs, resets, reverse=False):
    """Each row's episodes, each alone from ``cell.initial_state`` by a Python loop: ``ys [T, B, O]``."""
    ys = np.zeros((xs.shape[0], xs.shape[1], cell.output_size), np.float64)
    for b in range(xs.shape[1]):
        starts = [0] + [t for t in range(1, xs.shape[0]) if resets[t, b]] + [xs.shape[0]]
        for a, z in zip(starts[:-1], starts[1:]):
            state = cell.initial_state(params, ())
            order = range(z - 1, a - 1, -1) if reverse else range(a, z)
            for t in order:
                state, y = _step(cell)(params, state, xs[t, b])
                ys[t, b] = np.asarray(y)
    return ys


def _setup(cell, seed=0):
    kp, kx = jax.random.split(jax.random.key(seed))
    return cell.init(kp, I), jax.random.normal(kx, (T, B, I))


@pytest.mark.parametrize("name", list(CASES))
def test_resets_equal_episodes_run_alone(name):
    cell, kw = CASES[name]
    params, xs = _setup(cell)
    run = jax.jit(lambda p, x, r: jlstm.scan(cell, p, x, resets=r, **kw)[1])
    got = run(params, xs, jnp.asarray(RESETS))
    np.testing.assert_allclose(np.asarray(got), _episodes(cell, params, xs, RESETS), atol=2e-5, rtol=2e-5)


def _loss_weights(cell):
    return jax.random.normal(jax.random.key(2), (T, B, cell.output_size))


@functools.cache
def _episode_gradients(cell):
    """The gradient (params, xs) of the weighted loss summed over each episode run alone by the step loop.

    Cached per cell: the cases that run one cell through several paths share this reference."""
    params, xs = _setup(cell, seed=1)
    w = _loss_weights(cell)

    def alone(p, x):
        total = 0.0
        for b in range(B):
            starts = [0] + [t for t in range(1, T) if RESETS[t, b]] + [T]
            for a, z in zip(starts[:-1], starts[1:]):
                ys = jlstm.scan(cell, p, x[a:z, b], method="sequential", fast=False)[1]
                total = total + jnp.sum(ys * w[a:z, b])
        return total

    return [np.asarray(g) for g in jax.tree.leaves(jax.jit(jax.grad(alone, argnums=(0, 1)))(params, xs))]


@pytest.mark.parametrize("name", list(CASES))
def test_reset_gradients_equal_episode_gradients(name):
    """The gradient of a loss over all outputs equals the sum of the episodes' own gradients."""
    cell, kw = CASES[name]
    params, xs = _setup(cell, seed=1)
    w = _loss_weights(cell)

    def batched(p, x):
        return jnp.sum(jlstm.scan(cell, p, x, resets=jnp.asarray(RESETS), **kw)[1] * w)

    got = jax.jit(jax.grad(batched, argnums=(0, 1)))(params, xs)
    want = _episode_gradients(cell)
    assert len(jax.tree.leaves(got)) == len(want)
    for g, e in zip(jax.tree.leaves(got), want):
        np.testing.assert_allclose(np.asarray(g), e, atol=1e-4, rtol=1e-4)


def test_resets_compose_with_lengths_mask_and_reverse():
    cell = jlstm.gru(H)
    params, xs = _setup(cell, seed=3)
    lengths = jnp.array([T, 8, 6])
    mask = np.ones((T, B), bool)
    mask[2, 0] = False                      # a missing step inside the first episode of row 0
    mask[[2, 6], 1] = False                 # missing steps just before row 1's resets (at 3 and 7)
    got = jlstm.scan(cell, params, xs, lengths=lengths, mask=jnp.asarray(mask), resets=jnp.asarray(RESETS),
                     reverse=True)[1]
    for b in range(B):
        L = int(lengths[b])
        keep = [t for t in range(L) if mask[t, b]]
        x_b = xs[np.array(keep), b][:, None]
        r_b = RESETS[np.array(keep), b][:, None]
        want = _episodes(cell, params, x_b, r_b, reverse=True)[:, 0]
        np.testing.assert_allclose(np.asarray(got[np.array(keep), b]), want, atol=2e-5)
        assert not np.any(np.asarray(got[L:, b]))


def test_resets_ignore_the_state_argument_and_invalid_steps():
    cell = jlstm.lstm(H)
    params, xs = _setup(cell, seed=4)
    state = jax.tree.map(lambda a: a + 1.0, cell.initial_state(params, (B,)))
    r = jnp.asarray(RESETS)
    a = jlstm.scan(cell, params, xs, state, resets=r)[1]
    # a reset past a row's length changes nothing, not even the final state
    lengths = jnp.array([T, 5, T])
    r2 = r.at[8, 1].set(True)
    f1, _ = jlstm.scan(cell, params, xs, state, resets=r, lengths=lengths)
    f2, _ = jlstm.scan(cell, params, xs, state, resets=r2, lengths=lengths)
    np.testing.assert_array_equal(np.asarray(f1.h), np.asarray(f2.h))
    # after the reset at t=3, row 1 no longer depends on the state argument
    b = jlstm.scan(cell, params, xs, resets=r)[1]
    np.testing.assert_allclose(np.asarray(a[3:, 1]), np.asarray(b[3:, 1]), atol=1e-6)
    assert not np.allclose(np.asarray(a[:3, 1]), np.asarray(b[:3, 1]))


def test_resets_batch_major_and_layers():
    cell = jlstm.lstm(H)
    model = jlstm.stack(jlstm.bidirectional(cell), jlstm.recurrent(jlstm.gru(H)))
    params = model.init(jax.random.key(5), I)
    xs = jax.random.normal(jax.random.key(6), (T, B, I))
    r = jnp.asarray(RESETS)
    _, tm = model.apply(params, xs, resets=r)
    _, bm = model.apply(params, jnp.swapaxes(xs, 0, 1), resets=r.T, time_major=False)
    np.testing.assert_allclose(np.asarray(tm), np.asarray(jnp.swapaxes(bm, 0, 1)), atol=1e-6)
    # the stack over one row equals the stack over each episode alone
    row = 1
    starts = [0, 3, 7, T]
    for a, z in zip(starts[:-1], starts[1:]):
        _, alone = model.apply(params, xs[a:z, row:row + 1])
        np.testing.assert_allclose(np.asarray(tm[a:z, row]), np.asarray(alone[:, 0]), atol=2e-5)


def test_bad_resets_are_refused_at_trace_time():
    cell = jlstm.gru(H)
    params, xs = _setup(cell)
    with pytest.raises(TypeError, match="resets must be boolean"):
        jlstm.scan(cell, params, xs, resets=jnp.zeros((T, B)))
    with pytest.raises(ValueError, match=r"resets has shape \(3, 11\), expected \(11, 3\)"):
        jlstm.scan(cell, params, xs, resets=jnp.zeros((B, T), bool))


def test_streaming_and_language_model_carry_resets():
    cell = jlstm.lstm(H)
    params, xs = _setup(cell, seed=7)
    r = jnp.asarray(RESETS)
    _, whole = jlstm.scan(cell, params, xs, resets=r)
    step = jax.jit(jlstm.streaming.make_stream_step(cell))
    parts = [ys for _, ys in jlstm.streaming.stream(step, params, [xs[:4], xs[4:]], resets=r)]
    np.testing.assert_allclose(np.asarray(jnp.concatenate(parts)), np.asarray(whole), atol=1e-6)

    lm = jlstm.train.LanguageModel(jlstm.recurrent(jlstm.gru(H)), vocab_size=7, embed_size=3)
    lp = lm.init(jax.random.key(8))
    tokens = np.random.default_rng(0).integers(0, 7, 41)
    starts = np.zeros(41, bool)
    starts[[9, 25]] = True                                 # documents begin at tokens 9 and 25
    (chunk,) = jlstm.train.lm_chunks(tokens, batch_size=1, chunk_len=40, starts=starts)
    _, packed = lm.apply(lp, chunk.xs, resets=chunk.resets)
    for a, z in ((0, 9), (9, 25), (25, 40)):
        _, alone = lm.apply(lp, chunk.xs[a:z])
        np.testing.assert_allclose(np.asarray(packed[a:z]), np.asarray(alone), atol=2e-5)
    toks, _ = jlstm.train.generate(lm, lp, chunk.xs, 3, greedy=True, resets=chunk.resets)
    toks_alone, _ = jlstm.train.generate(lm, lp, chunk.xs[25:], 3, greedy=True)
    np.testing.assert_array_equal(np.asarray(toks), np.asarray(toks_alone))

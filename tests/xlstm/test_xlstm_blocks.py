"""jlstm.xlstm: the causal conv against a NumPy loop, and the blocks' sequence-model contract.

Streaming (two chunks carrying the state equal one call, lengths included), masks (a masked step
is skipped: the outputs equal those of the sequence without it), padding that cannot leak (NaN,
gradients included), the three mLSTM forms, remat, vmap, time_major=False, checkpoints, dropout,
stateful language-model training and generation. The values against the ``xlstm`` package itself
are checked in tests/interop/test_xlstm_blocks.py.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jlstm
import jlstm.train as jt
from jlstm import xlstm

E, T, B = 8, 9, 3


def _stack():
    return xlstm.block_stack([xlstm.mlstm_block(E, num_heads=2, round_to=8, chunk_size=4),
                              xlstm.slstm_block(E, num_heads=2, conv1d_kernel_size=3,
                                                feedforward=xlstm.feedforward(E, proj_factor=2.0, round_to=8))])


_STACK = _stack()


def _params(model, seed=0):
    params = model.init(jax.random.key(seed), E)
    # the init leaves gate weights and R at zero: perturb everything so that every path matters
    return jax.tree.map(lambda a: a + 0.2 * jnp.sin(jnp.arange(a.size, dtype=a.dtype).reshape(a.shape) + seed),
                        params)


@jax.jit
def _run(params, xs, state=None, lengths=None, mask=None):
    return _STACK.apply(params, xs, state, lengths=lengths, mask=mask)


def _xs(seed=1, shape=(T, B, E)):
    return jax.random.normal(jax.random.key(seed), shape)


def _conv_loop(w, b, xs, window, valid, resets):
    ys, window = np.zeros(xs.shape), np.array(window)
    for t in range(xs.shape[0]):
        for n in range(xs.shape[1]):
            if resets[t, n]:
                window[n] = 0
            if valid[t, n]:
                full = np.concatenate([window[n], xs[t, n][None]])
                ys[t, n] = (full * w).sum(0) + b
                window[n] = full[1:]
    return ys, window


def test_causal_conv_equals_a_loop_with_masks_resets_and_chunks():
    rng = np.random.default_rng(0)
    K, F = 4, 2
    shapes = ((K, F), (F,), (T, B, F), (B, K - 1, F))
    w, b, xs, window = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)
    p = xlstm.ConvParams(w, b)
    valid, resets = jnp.asarray(rng.random((T, B)) < 0.7), jnp.asarray(rng.random((T, B)) < 0.2)
    cases = [(None, None), (valid, None), (None, resets), (valid, resets)]
    for v, r in cases:
        ys, win = jax.jit(xlstm.causal_conv)(p, xs, window, v, r)
        v_np = np.ones((T, B), bool) if v is None else np.asarray(v)
        want, want_win = _conv_loop(np.asarray(p.w), np.asarray(p.b), np.asarray(xs), window, v_np,
                                    np.zeros((T, B), bool) if r is None else np.asarray(r))
        np.testing.assert_allclose(np.where(v_np[..., None], ys, 0), want, atol=1e-5)
        np.testing.assert_allclose(win, want_win, atol=1e-6)
    # in two chunks, the second from the first's window
    ys1, w1 = xlstm.causal_conv(p, xs[:4], window, valid[:4], resets[:4])
    ys2, w2 = xlstm.causal_conv(p, xs[4:], w1, valid[4:], resets[4:])
    ys, win = xlstm.causal_conv(p, xs, window, valid, resets)
    np.testing.assert_allclose(jnp.where(valid[..., None], jnp.concatenate([ys1, ys2]), 0),
                               jnp.where(valid[..., None], ys, 0), atol=1e-6)
    np.testing.assert_allclose(w2, win, atol=1e-6)


def test_stack_streams_in_chunks_with_lengths_and_ignores_nan_padding():
    model = _STACK
    params, xs = _params(model), _xs()
    lengths = jnp.array([T, 5, 0])
    final, ys = _run(params, xs, None, lengths)
    np.testing.assert_array_equal(ys[5:, 1], 0.0)
    s1, y1 = _run(params, xs[:4], None, jlstm.streaming.chunk_lengths(lengths, 0, 4))
    s2, y2 = _run(params, xs[4:], s1, jlstm.streaming.chunk_lengths(lengths, 4, T - 4))
    np.testing.assert_allclose(jnp.concatenate([y1, y2]), ys, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s2), jax.tree.leaves(final)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # NaN in the padding changes neither the values nor the gradients
    pad = jnp.arange(T)[:, None, None] >= lengths[None, :, None]
    dirty = jnp.where(pad, jnp.nan, xs)

    def loss(p, x):
        return jnp.sum(model.apply(p, x, lengths=lengths)[1] ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    g_clean, g_dirty = grad(params, xs), grad(params, dirty)
    for a, b in zip(jax.tree.leaves(g_clean[0]), jax.tree.leaves(g_dirty[0])):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.isfinite(np.asarray(g_dirty[1])).all()


def test_a_masked_step_is_skipped():
    """Masked steps keep the state: the outputs equal those of each sequence with the steps removed."""
    params, xs = _params(_STACK, 1), _xs(2)
    mask = np.random.default_rng(3).random((T, B)) < 0.6
    final, ys = _run(params, xs, None, None, jnp.asarray(mask))
    order = np.argsort(~mask, axis=0, kind="stable")  # each column's kept steps first, in order
    packed = jnp.take_along_axis(xs, jnp.asarray(order)[..., None], axis=0)
    want_final, want = _run(params, packed, None, jnp.asarray(mask.sum(0)))
    for n in range(B):
        keep = mask[:, n]
        np.testing.assert_allclose(ys[keep, n], want[:keep.sum(), n], atol=1e-5)
        np.testing.assert_array_equal(ys[~keep, n], 0.0)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(want_final)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_mlstm_forms_and_remat_give_the_same_values_and_gradients():
    xs = _xs(4)
    results = []
    for method, remat in (("parallel", None), ("chunkwise", "block"), ("sequential", "segment")):
        blk = xlstm.mlstm_block(E, num_heads=2, round_to=8, method=method, chunk_size=4, remat=remat)
        params = _params(blk)
        out = jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.sin(blk.apply(p, xs)[1]))))(params)
        results.append(out)
    for value, grad in results[1:]:
        np.testing.assert_allclose(value, results[0][0], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(results[0][1])):
            np.testing.assert_allclose(a, b, atol=2e-5)


def test_vmap_batch_major_and_checkpoint(tmp_path):
    model = _STACK
    params, xs = _params(model, 2), _xs(5)
    state, ys = _run(params, xs)
    _, one = jax.jit(jax.vmap(lambda x: model.apply(params, x), in_axes=1, out_axes=1))(xs)
    np.testing.assert_allclose(one, ys, atol=1e-5)
    _, bm = jax.jit(lambda x: model.apply(params, x, time_major=False))(jnp.swapaxes(xs, 0, 1))
    # The batch-major layout multiplies in another order: float32 rounding, 1.6e-6 under XLA's default flags.
    np.testing.assert_allclose(jnp.swapaxes(bm, 0, 1), ys, atol=1e-5)
    path = tmp_path / "stack.ckpt"
    jlstm.checkpoint.save(path, {"params": params, "state": state})
    like = {"params": model.init(jax.random.key(9), E), "state": model.initial_state(params, B)}
    restored, _ = jlstm.checkpoint.load(path, like=like)
    _, again = _run(restored["params"], xs, restored["state"])
    np.testing.assert_allclose(again, _run(params, xs, state)[1], atol=1e-6)


def test_dropout_acts_with_a_key_only():
    blk = xlstm.mlstm_block(E, num_heads=2, round_to=8, dropout=0.5)
    params, xs = _params(blk), _xs(6)
    run = jax.jit(lambda key: blk.apply(params, xs, key=key)[1])
    plain = run(None)
    np.testing.assert_array_equal(plain, run(None))
    assert not np.allclose(run(jax.random.key(0)), plain)


def test_language_model_trains_with_a_carried_state_and_generates():
    lm = jt.LanguageModel(xlstm.xlstm_stack(E, 2, slstm_at=[1], mlstm=dict(num_heads=2, round_to=8),
                                            slstm=dict(num_heads=2)), vocab_size=7, embed_size=E)
    params = lm.init(jax.random.key(0))
    chunks = jt.lm_chunks(np.arange(200) % 7, batch_size=2, chunk_len=8)
    step = jax.jit(jt.make_stateful_train_step(lm.loss, optax.adam(1e-2), initial_state=lm.initial_state))
    opt_state, state = optax.adam(1e-2).init(params), lm.initial_state(params, 2)
    losses = []
    for chunk in chunks[:4]:
        params, opt_state, state, metrics = step(params, opt_state, state, chunk, None, jnp.asarray(chunk.reset))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    tokens, state = jt.generate(lm, params, jnp.array([[1], [2]]), 4, key=jax.random.key(1), top_k=3)
    assert tokens.shape == (4, 1) and state[0].conv.shape == (1, 3, 16)


def test_resets_start_each_sequence_afresh():
    params, xs = _params(_STACK, 3), _xs(7)
    resets = jnp.zeros((T, B), bool).at[4, 0].set(True)
    _, ys = jax.jit(lambda x, r: _STACK.apply(params, x, resets=r))(xs, resets)
    _, fresh = _STACK.apply(params, xs[4:, :1])
    np.testing.assert_allclose(ys[4:, :1], fresh, atol=1e-5)


def test_errors_are_clear():
    blk = xlstm.mlstm_block(E, num_heads=2, round_to=8)
    params = blk.init(jax.random.key(0), E)
    with pytest.raises(ValueError, match=r"xs must have shape \[T, \*batch, 8\]"):
        blk.apply(params, jnp.ones((4, 2, 5)))
    with pytest.raises(ValueError, match="input_size=5"):
        blk.init(jax.random.key(0), 5)
    with pytest.raises(ValueError, match="not a multiple of num_heads=3"):
        xlstm.mlstm_layer(E, num_heads=3, round_to=8)
    with pytest.raises(ValueError, match="bias_init"):
        xlstm.slstm_layer(E, num_heads=2, bias_init="ones")
    with pytest.raises(ValueError, match="state.conv has shape"):
        blk.apply(params, jnp.ones((4, 2, E)), blk.initial_state(params, 3))
    with pytest.raises(ValueError, match="share one width"):
        xlstm.block_stack([xlstm.mlstm_block(8, round_to=8), xlstm.mlstm_block(16, round_to=8)])
    with pytest.raises(ValueError, match="method"):
        xlstm.mlstm_block(E, num_heads=2, round_to=8, method="fastest").apply(params, jnp.ones((4, 2, E)))

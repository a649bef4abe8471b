"""Remat: the same gradients as without it, and a training step whose memory grows like √T."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm

H, I = 256, 2


def _loss_scan(cell, remat, **kw):
    def loss(params, xs, lengths=None):
        state, ys = jlstm.scan(cell, params, xs, remat=remat, lengths=lengths, **kw)
        return jnp.sum(state.h[..., :3]) + 0.1 * jnp.sum(jnp.tanh(ys))
    return loss


def _temp_bytes(loss, T, B=1):
    params = jlstm.lstm(H).init(jax.random.key(0), I)
    xs = jax.ShapeDtypeStruct((T, B, I), jnp.float32)
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, xs).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def _final_h_loss(remat, via_time_loop):
    cell = jlstm.lstm(H)

    def loss(params, xs):
        if via_time_loop:
            s0 = cell.initial_state(params, xs.shape[1:-1])
            state, _ = jlstm.time_loop(lambda s, x: cell.step(params, s, x), s0, xs, None, remat=remat)
        else:
            state, _ = jlstm.scan(cell, params, xs, remat=remat)
        return jnp.sum(state.h)
    return loss


def test_segment_remat_memory_time_loop():
    """time_loop over cell.step (projection inside the loop): √T memory with 'segment' remat."""
    none = _temp_bytes(_final_h_loss(None, True), 4096)
    seg = _temp_bytes(_final_h_loss("segment", True), 4096)
    seg_16x = _temp_bytes(_final_h_loss("segment", True), 16 * 4096)
    assert seg < none / 4, (seg, none)
    assert seg_16x < 4 * seg, (seg, seg_16x)           # 16x longer, well under 16x the memory


def test_segment_remat_memory_scan():
    """jlstm.scan(remat='segment') of a training step: far below the fused path's per-step residuals.

    This holds once scan_impl projects the inputs inside the loop under remat; with the projection
    of the whole sequence stored up front ([T, B, 4H] plus its gradient) the ratio is about 0.65.
    """
    none = _temp_bytes(_final_h_loss(None, False), 4096)
    seg = _temp_bytes(_final_h_loss("segment", False), 4096)
    assert seg < none / 4, (seg, none)


CELLS = {
    "lstm": jlstm.lstm(8),                                   # remat=None takes the fused custom-VJP path
    "lstm_diagonal_proj": jlstm.lstm(8, peephole="diagonal", proj_size=5),
    "gru": jlstm.gru(8),
    "ln_lstm": jlstm.layer_norm_lstm(8),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_remat_gradients_equal(name):
    cell = CELLS[name]
    T, B = 23, 3
    params = cell.init(jax.random.key(1), 4)
    xs = jax.random.normal(jax.random.key(2), (T, B, 4))
    lengths = jnp.array([23, 9, 1])
    ref_val, ref_grad = jax.jit(jax.value_and_grad(_loss_scan(cell, None), argnums=(0, 1)))(params, xs, lengths)
    for remat in ("step", 4):                       # (for T=23 "segment" means 5-step segments)
        val, grad = jax.jit(jax.value_and_grad(_loss_scan(cell, remat), argnums=(0, 1)))(params, xs, lengths)
        np.testing.assert_allclose(val, ref_val, rtol=1e-6, atol=1e-6)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad), strict=True):
            # float32 round-off relative to the gradient's scale: the layer-norm LSTM's gradients carry
            # ~5e-6 of it even against a float64 run, with or without remat
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))),
                                       err_msg=f"remat={remat!r}")
        assert float(jnp.max(jnp.abs(grad[1][:, 2][1:]))) == 0.0      # padding gets no gradient


def test_remat_layer_gradients_equal():
    """Through jlstm.recurrent with recurrent dropout (a key): remat changes nothing."""
    xs = jax.random.normal(jax.random.key(3), (17, 2, 4))
    key = jax.random.key(4)
    grads = []
    for remat in (None, "segment"):
        layer = jlstm.recurrent(jlstm.lstm(6), remat=remat, recurrent_dropout=0.3)
        params = layer.init(jax.random.key(5), 4)
        loss = lambda p: jnp.sum(layer.apply(p, xs, key=key)[1] ** 2)
        grads.append(jax.jit(jax.grad(loss))(params))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

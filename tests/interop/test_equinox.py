"""jlstm <-> Equinox eqx.nn.LSTMCell / GRUCell, both run over the same batched sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from peer_runs import jlstm_run

import jlstm
from jlstm import interop

eqx = pytest.importorskip("equinox")

TOL = dict(atol=1e-5, rtol=1e-5)
T, B, I, H = 6, 3, 4, 5


def _data(seed, lstm):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((T, B, H)), jnp.float32)
    h0 = jnp.asarray(rng.standard_normal((B, H)), jnp.float32)
    c0 = jnp.asarray(rng.standard_normal((B, H)), jnp.float32)
    return xs, cot, ((h0, c0) if lstm else h0)


def _randomised(cell, seed):
    """Every array of the Equinox cell (biases included) replaced by uniform(-0.5, 0.5)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.5, 0.5, a.shape), a.dtype) if eqx.is_array(a) else a,
                        cell)


def _eqx_run(cell, xs, carry, cot):
    """Equinox's own unbatched step, scanned over time and vmapped over the batch; outputs, carry, dL/dxs."""
    def run(xs):
        def one(carry, x):                      # carry and x of one sequence
            new = cell(x, carry)
            return new, (new[0] if isinstance(new, tuple) else new)

        final, ys = jax.vmap(lambda x, c: jax.lax.scan(one, c, x), in_axes=(1, 0), out_axes=(0, 1))(xs, carry)
        return jnp.sum(ys * cot), (ys, final)

    (_, (ys, final)), dx = jax.jit(jax.value_and_grad(run, has_aux=True))(xs)
    return ys, final, dx


@pytest.mark.parametrize("use_bias", [True, False])
def test_lstm_cell_matches_equinox(use_bias):
    cell_e = _randomised(eqx.nn.LSTMCell(I, H, use_bias=use_bias, key=jax.random.key(0)), 1)
    cell, params = interop.from_equinox_lstm(cell_e)
    assert cell == jlstm.lstm(H) and params.w_x.shape == (I, 4 * H)
    if not use_bias:
        assert not np.any(np.asarray(params.b))
    xs, cot, (h0, c0) = _data(2, lstm=True)
    ys_e, (h_e, c_e), dx_e = _eqx_run(cell_e, xs, (h0, c0), cot)
    ys, final, dx = jlstm_run(cell, params, xs, jlstm.LSTMState(h0, c0), cot)
    for got, want in ((ys, ys_e), (final.h, h_e), (final.c, c_e), (dx, dx_e)):
        np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_cell_matches_equinox(use_bias):
    cell_e = _randomised(eqx.nn.GRUCell(I, H, use_bias=use_bias, key=jax.random.key(3)), 4)
    cell, params = interop.from_equinox_gru(cell_e)
    assert cell == jlstm.gru(H)
    assert not np.any(np.asarray(params.b_h[:2 * H]))       # Equinox has no recurrent r/z biases
    xs, cot, h0 = _data(5, lstm=False)
    ys_e, h_e, dx_e = _eqx_run(cell_e, xs, h0, cot)
    ys, final, dx = jlstm_run(cell, params, xs, jlstm.GRUState(h0), cot)
    for got, want in ((ys, ys_e), (final.h, h_e), (dx, dx_e)):
        np.testing.assert_allclose(got, want, **TOL)


def test_jlstm_params_run_alike_in_equinox_and_round_trip_exactly():
    """to_equinox_* gives cells that compute what jlstm computes (a GRU's recurrent r/z biases folded into
    Equinox's input bias), and from_equinox_* of them gives the params back."""
    lstm_cell = jlstm.lstm(H)
    p_lstm = lstm_cell.init(jax.random.key(6), I)
    p_lstm = p_lstm._replace(b=jax.random.uniform(jax.random.key(7), p_lstm.b.shape, minval=-1, maxval=1))
    back = interop.from_equinox_lstm(interop.to_equinox_lstm(p_lstm))[1]
    for a, b in zip(back, p_lstm):
        assert (a is None and b is None) or np.array_equal(a, b)

    gru_cell = jlstm.gru(H)
    p_gru = gru_cell.init(jax.random.key(8), I)
    p_gru = p_gru._replace(b_h=jax.random.uniform(jax.random.key(9), p_gru.b_h.shape, minval=-1, maxval=1))
    xs, cot, h0 = _data(10, lstm=False)
    ys_e, h_e, _ = _eqx_run(interop.to_equinox_gru(p_gru), xs, h0, cot)
    ys, final, _ = jlstm_run(gru_cell, p_gru, xs, jlstm.GRUState(h0), cot)
    np.testing.assert_allclose(ys_e, ys, **TOL)
    np.testing.assert_allclose(h_e, final.h, **TOL)


def test_bad_equinox_inputs_raise_and_name_the_fix():
    gru_e = eqx.nn.GRUCell(I, H, key=jax.random.key(0))
    lstm_e = eqx.nn.LSTMCell(I, H, key=jax.random.key(0))
    with pytest.raises(TypeError, match="from_equinox_gru"):
        interop.from_equinox_lstm(gru_e)
    with pytest.raises(TypeError, match="from_equinox_lstm"):
        interop.from_equinox_gru(lstm_e)
    with pytest.raises(TypeError, match="eqx.nn.LSTMCell"):
        interop.from_equinox_lstm({"weight_ih": 1})
    bad = eqx.tree_at(lambda m: m.weight_hh, lstm_e, jnp.zeros((4 * H, H + 1)))
    with pytest.raises(ValueError, match="weight_hh"):
        interop.from_equinox_lstm(bad)
    peep = jlstm.lstm(H, peephole="diagonal").init(jax.random.key(0), I)
    with pytest.raises(ValueError, match="peepholes"):
        interop.to_equinox_lstm(peep)
    with pytest.raises(TypeError, match="GRUParams"):
        interop.to_equinox_gru(jlstm.lstm(H).init(jax.random.key(0), I))

"""jlstm <-> Haiku hk.LSTM and hk.GRU, both run over the same sequences with hk.dynamic_unroll and jlstm.scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from peer_runs import jlstm_run

import jlstm
from jlstm import interop

hk = pytest.importorskip("haiku")

TOL = dict(atol=1e-5, rtol=1e-5)
T, B, I, H = 6, 3, 4, 5


def _data(seed):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((T, B, H)), jnp.float32)
    h0 = jnp.asarray(rng.standard_normal((B, H)), jnp.float32)
    c0 = jnp.asarray(rng.standard_normal((B, H)), jnp.float32)
    return xs, cot, h0, c0


def _two_lstms(xs, h0, c0):
    """Two stacked hk.LSTMs ("lstm", "lstm_1") and a read-out hk.Linear: what a Haiku model holds."""
    first, second = hk.LSTM(H), hk.LSTM(H)
    ys, _ = hk.dynamic_unroll(first, xs, hk.LSTMState(h0, c0))
    ys, final = hk.dynamic_unroll(second, ys, hk.LSTMState(h0, c0))
    return hk.Linear(2)(ys), ys, final


def _one_lstm(xs, h0, c0):
    return hk.dynamic_unroll(hk.LSTM(H), xs, hk.LSTMState(h0, c0))


def _randomised(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.5, 0.5, a.shape), a.dtype), params)


def _haiku_run(params, xs, h0, c0, cot):
    f = hk.without_apply_rng(hk.transform(_one_lstm))

    def run(xs):
        ys, final = f.apply(params, xs, h0, c0)
        return jnp.sum(ys * cot), (ys, final)

    (_, (ys, final)), dx = jax.jit(jax.value_and_grad(run, has_aux=True))(xs)
    return ys, final, dx


def test_lstm_matches_haiku_outputs_state_and_gradients():
    xs, cot, h0, c0 = _data(0)
    params_hk = _randomised(hk.transform(_one_lstm).init(jax.random.key(1), xs, h0, c0), 2)
    assert set(params_hk) == {"lstm/linear"}
    read_out = {"mlp/~/linear": {"w": np.ones((2 * H, 8), np.float32), "b": np.ones(8, np.float32)}}
    cell, params = interop.from_haiku_lstm({**params_hk, **read_out})     # a Linear shaped like an LSTM's
    assert np.array_equal(params.w_x, interop.from_haiku_lstm(params_hk)[1].w_x)
    assert cell == jlstm.lstm(H) and params.w_x.shape == (I, 4 * H) and params.w_h.shape == (H, 4 * H)
    ys_hk, final_hk, dx_hk = _haiku_run(params_hk, xs, h0, c0, cot)
    ys, final, dx = jlstm_run(cell, params, xs, jlstm.LSTMState(h0, c0), cot)
    for got, want in ((ys, ys_hk), (final.h, final_hk.hidden), (final.c, final_hk.cell), (dx, dx_hk)):
        np.testing.assert_allclose(got, want, **TOL)
    # The linear's own {"w", "b"} dict converts alike; jlstm's params go back to Haiku's exactly.
    alone = interop.from_haiku_lstm(params_hk["lstm/linear"])[1]
    back = interop.to_haiku_lstm(params)
    for a, b in zip(alone, params):
        assert (a is None and b is None) or np.array_equal(a, b)
    np.testing.assert_allclose(back["lstm/linear"]["w"], params_hk["lstm/linear"]["w"], rtol=0, atol=0)
    np.testing.assert_allclose(back["lstm/linear"]["b"], params_hk["lstm/linear"]["b"], rtol=0, atol=1e-7)


def test_a_model_with_several_lstms_needs_module():
    xs, cot, h0, c0 = _data(3)
    f = hk.without_apply_rng(hk.transform(_two_lstms))
    params_hk = _randomised(f.init(jax.random.key(4), xs, h0, c0), 5)
    with pytest.raises(ValueError, match="several LSTMs.*module="):
        interop.from_haiku_lstm(params_hk)
    with pytest.raises(ValueError, match="no LSTM linear at module='lstm_2'"):
        interop.from_haiku_lstm(params_hk, module="lstm_2")
    cell, p1 = interop.from_haiku_lstm(params_hk, module="lstm")
    _, p2 = interop.from_haiku_lstm(params_hk, module="lstm_1/linear")
    model = jlstm.stack(jlstm.recurrent(cell), jlstm.recurrent(cell))
    _, ys_hk, final_hk = f.apply(params_hk, xs, h0, c0)
    state = jlstm.LSTMState(h0, c0)
    _, ys = model.apply((p1, p2), xs, (state, state))
    np.testing.assert_allclose(ys, ys_hk, **TOL)


def test_haiku_params_from_jlstm_run_alike():
    cell = jlstm.lstm(H)
    params = cell.init(jax.random.key(6), I)
    params = params._replace(b=jax.random.uniform(jax.random.key(7), params.b.shape, minval=-1, maxval=1))
    xs, cot, h0, c0 = _data(8)
    ys_hk, final_hk, _ = _haiku_run(interop.to_haiku_lstm(params), xs, h0, c0, cot)
    ys, final, _ = jlstm_run(cell, params, xs, jlstm.LSTMState(h0, c0), cot)
    np.testing.assert_allclose(ys_hk, ys, **TOL)
    np.testing.assert_allclose(final_hk.cell, final.c, **TOL)


def _two_grus(xs, h0):
    ys, _ = hk.dynamic_unroll(hk.GRU(H), xs, h0)
    return hk.dynamic_unroll(hk.GRU(H), ys, h0)


def test_gru_matches_haiku_outputs_state_and_gradients():
    """hk.GRU resets before its matrix and gives z to the candidate: jlstm.gru(H, reset_after=False) with the
    z block negated. A model of two GRUs needs module=; the params go back to Haiku's exactly."""
    xs, cot, h0, _ = _data(10)
    f = hk.without_apply_rng(hk.transform(_two_grus))
    params_hk = _randomised(f.init(jax.random.key(11), xs, h0), 12)
    with pytest.raises(ValueError, match="several GRUs.*module="):
        interop.from_haiku_gru(params_hk)
    with pytest.raises(ValueError, match="convert it with jlstm.interop.from_haiku_gru"):
        interop.from_haiku_lstm(params_hk)
    cell, p1 = interop.from_haiku_gru(params_hk, module="gru")
    _, p2 = interop.from_haiku_gru(params_hk["gru_1"])
    assert cell == jlstm.gru(H, reset_after=False) and isinstance(p1, jlstm.ResetBeforeGRUParams)
    model = jlstm.stack(jlstm.recurrent(cell), jlstm.recurrent(cell))
    state = jlstm.GRUState(h0)

    def haiku(x):
        ys, h = f.apply(params_hk, x, h0)
        return jnp.sum(ys * cot), (ys, h)

    def ours(x):
        final, ys = model.apply((p1, p2), x, (state, state))
        return jnp.sum(ys * cot), (ys, final[1].h)

    (_, (ys_hk, h_hk)), dx_hk = jax.jit(jax.value_and_grad(haiku, has_aux=True))(xs)
    (_, (ys, h)), dx = jax.jit(jax.value_and_grad(ours, has_aux=True))(xs)
    for got, want in ((ys, ys_hk), (h, h_hk), (dx, dx_hk)):
        np.testing.assert_allclose(got, want, **TOL)
    back = interop.to_haiku_gru(p2, name="gru_1")
    for k in ("w_i", "w_h", "b"):
        np.testing.assert_array_equal(back["gru_1"][k], params_hk["gru_1"][k])


def test_bad_haiku_inputs_raise_and_name_the_fix():
    with pytest.raises(TypeError, match="ResetBeforeGRUParams"):
        interop.to_haiku_gru(jlstm.gru(H).init(jax.random.key(0), I))
    with pytest.raises(ValueError, match="no hk.GRU at module='gru_9'"):
        interop.from_haiku_gru({"gru": {"w_i": np.zeros((I, 3 * H)), "w_h": np.zeros((H, 3 * H)),
                                        "b": np.zeros(3 * H)}}, module="gru_9")
    with pytest.raises(ValueError, match=r"\(in, 3H\), \(H, 3H\)"):
        interop.from_haiku_gru({"w_i": np.zeros((I, 3 * H)), "w_h": np.zeros((H, 3 * H + 1)),
                                "b": np.zeros(3 * H)})
    with pytest.raises(TypeError, match="Haiku params"):
        interop.from_haiku_lstm([1, 2])
    with pytest.raises(ValueError, match="no hk.LSTM"):
        interop.from_haiku_lstm({"linear": {"w": np.zeros((3, 8)), "b": np.zeros(8)}})
    with pytest.raises(ValueError, match=r"\(in \+ H, 4H\)"):
        interop.from_haiku_lstm({"w": np.zeros((2, 8)), "b": np.zeros(8)})
    with pytest.raises(ValueError, match="projection"):
        interop.to_haiku_lstm(jlstm.lstm(H, proj_size=2).init(jax.random.key(0), I))

"""jlstm <-> Flax linen LSTMCell / OptimizedLSTMCell / GRUCell, run with nn.RNN on the same inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm import interop

nn = pytest.importorskip("flax.linen")

TOL = dict(atol=1e-5, rtol=1e-5)
B, T, I, H = 3, 5, 4, 3


def _random_variables(cell, seed):
    """cell.init, then every leaf (biases included) replaced by uniform(-0.5, 0.5)."""
    x = jnp.zeros((B, I))
    variables = cell.init(jax.random.key(seed), cell.initialize_carry(jax.random.key(0), x.shape), x)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.5, 0.5, a.shape).astype(np.float32)), variables)


def _data(seed):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.standard_normal((B, T, I)).astype(np.float32))
    cot = jnp.asarray(rng.standard_normal((B, T, H)).astype(np.float32))
    h0 = jnp.asarray(rng.standard_normal((B, H)).astype(np.float32))
    c0 = jnp.asarray(rng.standard_normal((B, H)).astype(np.float32))
    return xs, cot, h0, c0


def _flax_run(cell, variables, xs, carry, cot):
    rnn = nn.RNN(cell, return_carry=True)

    def loss(x):
        final, ys = rnn.apply({"params": {"cell": variables["params"]}}, x, initial_carry=carry)
        return jnp.sum(ys * cot), (ys, final)

    (_, (ys, final)), dx = jax.jit(jax.value_and_grad(loss, has_aux=True))(xs)
    return ys, final, dx


def _jlstm_run(cell, params, xs, state, cot):
    def loss(x):
        final, ys = jlstm.scan(cell, params, x, state, time_major=False)
        return jnp.sum(ys * cot), (ys, final)

    (_, (ys, final)), dx = jax.jit(jax.value_and_grad(loss, has_aux=True))(xs)
    return ys, final, dx


@pytest.mark.parametrize("cls", ["LSTMCell", "OptimizedLSTMCell"])
def test_lstm_cells_match_flax(cls):
    cell_f = getattr(nn, cls)(features=H)
    variables = _random_variables(cell_f, 1)
    cell, params = interop.from_flax_lstm(variables)
    xs, cot, h0, c0 = _data(2)
    ys_f, carry_f, dx_f = _flax_run(cell_f, variables, xs, (c0, h0), cot)  # Flax's carry is (c, h)
    state = interop.from_flax_carry((c0, h0))
    assert isinstance(state, jlstm.LSTMState)
    ys, final, dx = _jlstm_run(cell, params, xs, state, cot)
    np.testing.assert_allclose(ys, ys_f, **TOL)
    np.testing.assert_allclose(dx, dx_f, **TOL)
    c_f, h_f = carry_f
    np.testing.assert_allclose(final.h, h_f, **TOL)
    np.testing.assert_allclose(final.c, c_f, **TOL)
    for a, b in zip(interop.to_flax_carry(final), carry_f):
        np.testing.assert_allclose(a, b, **TOL)


def test_gru_cell_matches_flax():
    cell_f = nn.GRUCell(features=H)
    variables = _random_variables(cell_f, 3)
    cell, params = interop.from_flax_gru(variables)
    assert not np.any(np.asarray(params.b_h[:2 * H]))  # Flax has no recurrent r/z biases
    xs, cot, h0, _ = _data(4)
    ys_f, h_f, dx_f = _flax_run(cell_f, variables, xs, h0, cot)
    ys, final, dx = _jlstm_run(cell, params, xs, interop.from_flax_carry(h0), cot)
    np.testing.assert_allclose(ys, ys_f, **TOL)
    np.testing.assert_allclose(dx, dx_f, **TOL)
    np.testing.assert_allclose(interop.to_flax_carry(final), h_f, **TOL)


def test_round_trips_are_exact():
    for cell_f, frm, to in ((nn.LSTMCell(features=H), interop.from_flax_lstm, interop.to_flax_lstm),
                            (nn.GRUCell(features=H), interop.from_flax_gru, interop.to_flax_gru)):
        variables = _random_variables(cell_f, 5)
        _, params = frm(variables)
        back = to(params)
        assert jax.tree.structure(back) == jax.tree.structure(jax.tree.map(np.asarray, variables))
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
            np.testing.assert_array_equal(a, b)
        assert set(to(params, rnn=True)["params"]) == {"cell"}
        # nn.RNN variables ({"params": {"cell": ...}}) are accepted as well
        _, again = frm({"params": {"cell": variables["params"]}})
        for a, b in zip(again, params):
            np.testing.assert_array_equal(a, b)


def test_jlstm_gru_with_recurrent_biases_runs_in_flax():
    """jlstm's b_hr, b_hz have no Flax slot: to_flax_gru folds them into ir/iz biases."""
    rng = np.random.default_rng(6)
    cell = jlstm.gru(H)
    params = jlstm.GRUParams(*(jnp.asarray(rng.uniform(-0.5, 0.5, s).astype(np.float32))
                               for s in [(I, 3 * H), (H, 3 * H), (3 * H,), (3 * H,)]))
    variables = interop.to_flax_gru(params)
    xs, cot, h0, _ = _data(7)
    ys_f, h_f, _ = _flax_run(nn.GRUCell(features=H), variables, xs, h0, cot)
    ys, final, _ = _jlstm_run(cell, params, xs, jlstm.GRUState(h0), cot)
    np.testing.assert_allclose(ys, ys_f, **TOL)
    np.testing.assert_allclose(final.h, h_f, **TOL)


def test_bad_flax_params():
    lstm_vars = _random_variables(nn.LSTMCell(features=H), 8)
    gru_vars = _random_variables(nn.GRUCell(features=H), 8)
    with pytest.raises(ValueError, match="GRUCell"):
        interop.from_flax_gru(lstm_vars)
    with pytest.raises(ValueError, match="LSTMCell"):
        interop.from_flax_lstm(gru_vars)
    broken = {k: dict(v) for k, v in lstm_vars["params"].items()}
    del broken["hf"]["bias"]
    with pytest.raises(ValueError, match=r"params\['hf'\]"):
        interop.from_flax_lstm(broken)
    bad_shape = {k: dict(v) for k, v in lstm_vars["params"].items()}
    bad_shape["io"]["kernel"] = np.zeros((I + 1, H), np.float32)
    with pytest.raises(ValueError, match=r"params\['io'\]\['kernel'\] has shape \(5, 3\)"):
        interop.from_flax_lstm(bad_shape)
    with pytest.raises(TypeError, match="variables of a Flax linen cell"):
        interop.from_flax_lstm([1, 2])
    peep = jlstm.lstm(H, peephole="diagonal")
    p = jax.eval_shape(lambda k: peep.init(k, I), jax.random.key(0))
    with pytest.raises(ValueError, match="peepholes"):
        interop.to_flax_lstm(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), p))
    with pytest.raises(TypeError, match="GRUParams"):
        interop.to_flax_gru(interop.from_flax_lstm(lstm_vars)[1])

"""jlstm <-> Flax NNX OptimizedLSTMCell / LSTMCell / GRUCell modules, both run on the same inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from peer_runs import jlstm_run

import jlstm
from jlstm import interop

nnx = pytest.importorskip("flax.nnx")

TOL = dict(atol=1e-5, rtol=1e-5)
T, B, I, H = 6, 3, 4, 5


def _randomised(cell, seed):
    """Every param of the NNX module (biases included) set to uniform(-0.5, 0.5), in place."""
    rng = np.random.default_rng(seed)
    state = nnx.state(cell, nnx.Param)
    pure = jax.tree.map(lambda a: jnp.asarray(rng.uniform(-0.5, 0.5, a.shape), a.dtype), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(cell, state)
    return cell


def _data(seed):
    rng = np.random.default_rng(seed)
    xs, cot = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((T, B, I), (T, B, H)))
    h0, c0 = (jnp.asarray(rng.standard_normal((B, H)), jnp.float32) for _ in range(2))
    return xs, cot, h0, c0


def _nnx_run(cell, xs, carry, cot):
    """The NNX cell's own step scanned over time (it is batched); outputs, final carry and dL/dxs."""
    graph, state = nnx.split(cell)

    def run(xs):
        step = nnx.merge(graph, state)
        final, ys = jax.lax.scan(lambda c, x: step(c, x), carry, xs)
        return jnp.sum(ys * cot), (ys, final)

    (_, (ys, final)), dx = jax.jit(jax.value_and_grad(run, has_aux=True))(xs)
    return ys, final, dx


@pytest.mark.parametrize("cls", ["OptimizedLSTMCell", "LSTMCell"])
def test_lstm_cells_match_nnx_both_ways(cls):
    cell_n = _randomised(getattr(nnx, cls)(I, H, rngs=nnx.Rngs(0)), 1)
    cell, params = interop.from_nnx_lstm(cell_n)
    assert cell == jlstm.lstm(H)
    xs, cot, h0, c0 = _data(2)
    ys_n, (c_n, h_n), dx_n = _nnx_run(cell_n, xs, (c0, h0), cot)          # NNX's carry is (c, h)
    ys, final, dx = jlstm_run(cell, params, xs, interop.from_flax_carry((c0, h0)), cot)
    for got, want in ((ys, ys_n), (final.h, h_n), (final.c, c_n), (dx, dx_n)):
        np.testing.assert_allclose(got, want, **TOL)
    back = interop.to_nnx_lstm(params, optimized=cls == "OptimizedLSTMCell")
    assert type(back) is type(cell_n)
    for a, b in zip(jax.tree.leaves(nnx.state(back, nnx.Param)), jax.tree.leaves(nnx.state(cell_n, nnx.Param))):
        np.testing.assert_array_equal(a, b)


def test_gru_cell_matches_nnx_and_b_hn_must_be_zero_to_go_back():
    cell_n = _randomised(nnx.GRUCell(I, H, rngs=nnx.Rngs(0)), 3)
    cell, params = interop.from_nnx_gru(cell_n)
    assert cell == jlstm.gru(H) and not np.any(np.asarray(params.b_h))
    xs, cot, h0, _ = _data(4)
    ys_n, h_n, dx_n = _nnx_run(cell_n, xs, h0, cot)
    ys, final, dx = jlstm_run(cell, params, xs, jlstm.GRUState(h0), cot)
    for got, want in ((ys, ys_n), (final.h, h_n), (dx, dx_n)):
        np.testing.assert_allclose(got, want, **TOL)
    # jlstm params with recurrent r and z biases (folded into dense_i.bias) run alike in NNX
    folded = params._replace(b_h=params.b_h.at[:2 * H].set(0.3))
    ys_f, _, _ = _nnx_run(interop.to_nnx_gru(folded), xs, h0, cot)
    np.testing.assert_allclose(jlstm_run(cell, folded, xs, jlstm.GRUState(h0), cot)[0], ys_f, **TOL)
    with pytest.raises(ValueError, match="no b_hn.*flax#5594"):
        interop.to_nnx_gru(params._replace(b_h=params.b_h.at[2 * H:].set(0.1)))


def test_bad_nnx_inputs_raise_and_name_the_fix():
    with pytest.raises(TypeError, match="from_nnx_gru"):
        interop.from_nnx_lstm(nnx.GRUCell(I, H, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="from_nnx_lstm"):
        interop.from_nnx_gru(nnx.OptimizedLSTMCell(I, H, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="expected a flax.nnx"):
        interop.from_nnx_lstm({"dense_i": {}})
    with pytest.raises(ValueError, match="gate_fn=hard_sigmoid"):
        interop.from_nnx_lstm(nnx.OptimizedLSTMCell(I, H, gate_fn=jax.nn.hard_sigmoid, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="peepholes"):
        interop.to_nnx_lstm(jlstm.lstm(H, peephole="diagonal").init(jax.random.key(0), I))
    with pytest.raises(TypeError, match="reset_after=False"):
        interop.to_nnx_gru(jlstm.gru(H, reset_after=False).init(jax.random.key(0), I))

"""The decoupled steps (jlstm.cells.decouple): their Jacobian diagonal is the cell's own.

Each cell's ``FlatStep.diag`` (one JVP per state leaf through ``CellFast.step_decoupled``) must equal
``jnp.diagonal(jax.jacfwd(step))`` of the real step, in float64, at random params, states and
inputs (random enough that every gate is away from saturation and the clip is active in part).
quasi-DEER then converges to the sequential trajectory through either diagonal.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm.newton.step import FlatState, flat_step
from jlstm.newton.step import evaluate as _evaluate

CELLS = {
    "lstm": lambda: jlstm.lstm(5),
    "lstm_diagonal": lambda: jlstm.lstm(5, peephole="diagonal"),
    "lstm_full": lambda: jlstm.lstm(5, peephole="full"),
    "lstm_clip": lambda: jlstm.lstm(5, cell_clip=0.4),
    "gru": lambda: jlstm.gru(5),
    "simple_rnn": lambda: jlstm.simple_rnn(5),
    "min_gru": lambda: jlstm.min_gru(5),
    "min_lstm": lambda: jlstm.min_lstm(5),
    "para_gru": lambda: jlstm.para_gru(5),
    "para_lstm": lambda: jlstm.para_lstm(5),
}


def evaluate(f, params, s, xs, valid, jac=None):
    """``jlstm.newton.step.evaluate``, compiled as one program."""
    return jax.jit(functools.partial(_evaluate, f, jac=jac))(params, s, xs, valid)


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def _case(name, B=4, T=3, I=3):
    cell = CELLS[name]()
    k1, k2, k3, k4 = jax.random.split(jax.random.key(7), 4)
    params = cell.init(k1, I)
    leaves, treedef = jax.tree.flatten(params)
    params = treedef.unflatten([(a + 0.5 * jax.random.normal(k, a.shape)).astype(jnp.float64)
                                for a, k in zip(leaves, jax.random.split(k2, len(leaves)))])
    state = jax.tree.map(lambda a: 0.8 * jax.random.normal(k3, a.shape, jnp.float64),
                         cell.initial_state(params, (B,)))
    spec = FlatState.of(state, (B,))
    s = jnp.broadcast_to(spec.ravel(state), (T, B, spec.size))
    xs = jax.random.normal(k4, (T, B, I), jnp.float64)
    valid = jnp.ones((T, B), bool).at[1, 2].set(False)
    return cell, params, spec, s, xs, valid


@pytest.mark.parametrize("name", CELLS)
def test_surrogate_diagonal_equals_the_jacobians(name):
    cell, params, spec, s, xs, valid = _case(name)
    f = flat_step(cell, spec)
    assert f.diag is not None, f"{name} has no decoupled surrogate"
    new_d, ys_d, diag = evaluate(f, params, s, xs, valid, "diag")
    generic = f._replace(diag=None)                    # the same step without the surrogate
    new_j, ys_j, diag_j = evaluate(generic, params, s, xs, valid, "diag")
    _, _, dense = evaluate(generic, params, s, xs, valid, "dense")
    np.testing.assert_allclose(new_d, new_j, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ys_d, ys_j, rtol=0, atol=1e-12)
    np.testing.assert_allclose(diag, diag_j, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(diag, jnp.diagonal(dense, axis1=-2, axis2=-1), rtol=1e-10, atol=1e-12)
    assert float(jnp.max(jnp.abs(diag - 1.0))) > 1e-3   # not the identity of invalid steps alone
    np.testing.assert_array_equal(diag[1, 2], 1.0)       # an invalid step keeps the state: J = I


def test_clip_zeroes_the_cell_diagonal_where_it_binds():
    cell, params, spec, s, xs, valid = _case("lstm_clip")
    _, _, diag = evaluate(flat_step(cell, spec), params, s, xs, valid, "diag")
    new, _, _ = evaluate(flat_step(cell, spec), params, s, xs, valid)
    H = 5
    clipped = (jnp.abs(new[..., H:]) >= 0.4 - 1e-12) & valid[..., None]
    assert bool(jnp.any(clipped)) and bool(jnp.any(~clipped))
    np.testing.assert_array_equal(jnp.where(clipped, diag[..., H:], 0.0), 0.0)


def test_cells_without_a_surrogate_keep_the_jacfwd_diagonal():
    for cell in (jlstm.lstm(3, proj_size=2), jlstm.layer_norm_lstm(3)):
        params = cell.init(jax.random.key(0), 2)
        state = cell.initial_state(params, (2,))
        assert flat_step(cell, FlatState.of(state, (2,))).diag is None


@pytest.mark.parametrize("name", ["lstm_full", "gru"])
def test_quasi_deer_through_the_surrogate_reaches_the_sequential_answer(name):
    cell = CELLS[name]()
    params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0), 3))
    xs = jax.random.normal(jax.random.key(1), (40, 2, 3), jnp.float64)
    lengths = jnp.array([40, 23])
    final, ys = jlstm.scan(cell, params, xs, lengths=lengths)
    final_q, ys_q, info = jlstm.scan(cell, params, xs, lengths=lengths, return_info=True,
                                     method=jlstm.Newton("quasi_deer", on_failure="ignore", max_iters=40))
    assert bool(info.converged)
    np.testing.assert_allclose(ys_q, ys, atol=1e-8)
    for a, b in zip(jax.tree.leaves(final_q), jax.tree.leaves(final)):
        np.testing.assert_allclose(a, b, atol=1e-8)


@pytest.mark.parametrize("name", ["lstm", "lstm_full", "lstm_diagonal", "lstm_clip", "para_lstm"])
def test_blocks_equal_each_units_part_of_the_jacobian(name):
    """``FlatStep.block``: entry ``[j, a, b]`` is ``∂leaf_a'[j] / ∂leaf_b[j]`` of the real step's Jacobian."""
    cell, params, spec, s, xs, valid = _case(name)
    f = flat_step(cell, spec)
    assert f.block is not None
    _, _, blocks = evaluate(f, params, s, xs, valid, "block")
    _, _, dense = evaluate(f._replace(diag=None, block=None), params, s, xs, valid, "dense")
    H = 5
    want = np.stack([np.stack([np.diagonal(np.asarray(dense)[..., a * H:(a + 1) * H, b * H:(b + 1) * H],
                                           axis1=-2, axis2=-1) for b in range(2)], -1) for a in range(2)], -2)
    np.testing.assert_allclose(blocks, want, rtol=1e-10, atol=1e-12)
    assert float(np.max(np.abs(want[..., 0, 1]))) > 1e-3          # h and c are coupled inside a unit
    np.testing.assert_array_equal(blocks[1, 2], np.broadcast_to(np.eye(2), (H, 2, 2)))

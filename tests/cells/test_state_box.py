"""CellFast.state_box: the box a cell's state cannot leave (jlstm.cells.state_box).

The declarations are checked against the cells themselves: with large random params and initial states
outside [-1, 1], every state of a sequential run lies in the box the cell declares for its initial state.
Cells whose state is unbounded (an LSTM's c without cell_clip, a projected h, a ReLU RNN, the min cells)
declare none.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm.cells.state_box import hull_box

BOXED = {
    "gru": lambda: jlstm.gru(5),
    "gru_reset_before": lambda: jlstm.gru(5, reset_after=False),
    "simple_rnn": lambda: jlstm.simple_rnn(5),
    "para_gru": lambda: jlstm.para_gru(5),
    "para_lstm": lambda: jlstm.para_lstm(5),
    "lstm_cell_clip": lambda: jlstm.lstm(5, cell_clip=0.5),
}
UNBOXED = {
    "lstm": lambda: jlstm.lstm(5),
    "lstm_proj_clip": lambda: jlstm.lstm(5, proj_size=3, cell_clip=0.5),
    "layer_norm_lstm": lambda: jlstm.layer_norm_lstm(5),
    "relu_rnn": lambda: jlstm.simple_rnn(5, activation=jax.nn.relu),
    "min_gru": lambda: jlstm.min_gru(5),
}


def _states(cell, params, state, xs):
    def step(s, x):
        s, _ = cell.step(params, s, x)
        return s, s

    return jax.lax.scan(step, state, xs)[1]


@pytest.mark.parametrize("name", BOXED)
def test_every_state_stays_in_the_declared_box(name):
    cell = BOXED[name]()
    params = jax.tree.map(lambda a: 6.0 * a + 0.5, cell.init(jax.random.key(0), 3))   # saturating gates
    state = cell.initial_state(params, (4,))
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    state = treedef.unflatten([3.0 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])
    xs = 4.0 * jax.random.normal(jax.random.key(2), (200, 4, 3))
    lo, hi = cell.fast.state_box(state)
    states = _states(cell, params, state, xs)
    for s, a, b in zip(jax.tree.leaves(states), jax.tree.leaves(lo), jax.tree.leaves(hi)):
        assert bool(jnp.all(a <= s)) and bool(jnp.all(s <= b)), name
    # the box is no wider than needed: [-1, 1] (or ±cell_clip for c) joined with the initial state
    for s0, a, b in zip(jax.tree.leaves(state), jax.tree.leaves(lo), jax.tree.leaves(hi)):
        assert bool(jnp.all(a <= s0)) and bool(jnp.all(s0 <= b))
        assert bool(jnp.all((a == s0) | (a >= -1.0))) and bool(jnp.all((b == s0) | (b <= 1.0)))


@pytest.mark.parametrize("name", UNBOXED)
def test_unbounded_states_declare_no_box(name):
    assert UNBOXED[name]().fast.state_box is None


def test_lstm_cell_state_leaves_any_unit_box_without_cell_clip():
    """Why the plain LSTM declares no box: its c grows past [-1, 1] (here by 10x)."""
    cell = jlstm.lstm(5)
    params = cell.init(jax.random.key(0), 3)
    params = params._replace(b=params.b + 10.0)              # input and forget gates open: c accumulates
    states = _states(cell, params, cell.initial_state(params, (2,)), jnp.ones((20, 2, 3)))
    assert float(jnp.max(jnp.abs(states.c))) > 10.0


def test_hull_box_widens_to_the_initial_state_and_leaves_unnamed_fields_open():
    s0 = jlstm.LSTMState(h=jnp.array([[-3.0, 0.2, 2.0]]), c=jnp.array([[5.0, -7.0, 0.0]]))
    lo, hi = hull_box(h=1.0)(s0)
    np.testing.assert_array_equal(lo.h, [[-3.0, -1.0, -1.0]])
    np.testing.assert_array_equal(hi.h, [[1.0, 1.0, 2.0]])
    assert bool(jnp.all(jnp.isneginf(lo.c))) and bool(jnp.all(jnp.isposinf(hi.c)))

"""jlstm.count_params: the number of scalars in any parameter pytree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm


def test_counts_every_leaf_of_cells_layers_and_plain_pytrees():
    I, H, P = 5, 7, 3
    full = jlstm.lstm(H, peephole="full", proj_size=P).init(jax.random.key(0), I)
    # w_x (I, 4H), w_h (P, 4H) (LSTMP: the recurrence reads the projection), b (4H), w_c (H, 3H), w_p (H, P)
    assert jlstm.count_params(full) == I * 4 * H + P * 4 * H + 4 * H + H * 3 * H + H * P
    assert jlstm.count_params(full) == sum(np.size(x) for x in jax.tree.leaves(full))
    plain = jlstm.lstm(H).init(jax.random.key(0), I)       # w_c and w_p are None: they count nothing
    assert plain.w_c is None and jlstm.count_params(plain) == I * 4 * H + H * 4 * H + 4 * H
    gru = jlstm.gru(H).init(jax.random.key(0), I)
    model = jlstm.stack(jlstm.recurrent(jlstm.gru(H)), jlstm.recurrent(jlstm.lstm(H)))
    stacked = model.init(jax.random.key(0), I)
    assert jlstm.count_params(stacked) == jlstm.count_params(gru) + jlstm.count_params(
        jlstm.lstm(H).init(jax.random.key(1), H))
    assert jlstm.count_params({"w": jnp.ones((2, 3)), "b": [np.zeros(4), 1.5], "none": None}) == 11
    assert jlstm.count_params({}) == 0 and isinstance(jlstm.count_params(stacked), int)


def test_a_cell_model_or_other_non_array_is_refused():
    """count_params(cell) once returned 1 and count_params(layer) 6: a cell is one leaf, a layer's
    functions six. Anything but arrays, numbers and None now says what to pass."""
    cell = jlstm.lstm(8)
    for wrong, at, what in ((cell, "the root", "Cell"), (jlstm.recurrent(cell), "the root", "SequenceModel"),
                            ({"params": cell.init(jax.random.key(0), 3), "cell": cell}, r"\['cell'\]", "Cell")):
        with pytest.raises(TypeError, match=rf"leaf at {at} is a jlstm.{what}, .*cell.init\(key, input_size\)"):
            jlstm.count_params(wrong)
    with pytest.raises(TypeError, match=r"leaf at \['act'\] is a function"):
        jlstm.count_params({"w": jnp.ones(3), "act": jnp.tanh})
    with pytest.raises(TypeError, match=r"leaf at \['name'\] is a str"):
        jlstm.count_params({"w": jnp.ones(3), "name": "lstm"})
    assert jlstm.count_params({"key": jax.random.key(0), "step": 3, "lr": 1e-3, "w": np.ones((2, 2))}) == 7

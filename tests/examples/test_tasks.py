"""jlstm.tasks.train_on_adding (jlstm.examples.tasks): a small GRU learns the adding problem; the documented
data and seeds; the argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm.examples.tasks import adding_problem, train_on_adding

LENGTH, BATCH, STEPS = 10, 32, 300


def test_a_small_gru_learns_the_adding_problem():
    """GRU(8) at T=10: 300 steps end under a tenth of the predict-the-mean loss (measured: 0.002-0.004 over
    seeds 0-3 against 0.167; 150 steps are not enough, 0.05-0.09)."""
    # The best constant prediction is the mean of y = u1 + u2, u ~ U(0, 1): its MSE is Var(y) = 2/12 = 1/6.
    baseline = float(jnp.var(adding_problem(jax.random.key(123), 100_000, LENGTH).ys))
    assert abs(baseline - 1 / 6) < 0.005
    cell = jlstm.gru(8)
    params, losses = train_on_adding(cell, STEPS, length=LENGTH, batch_size=BATCH, seed=0)
    assert losses.shape == (STEPS,) and losses.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(losses)))
    init = cell.init(jax.random.key(0), 2)
    assert jax.tree.structure(params) == jax.tree.structure(init)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(init)))
    # The read-out starts at zero, so step 0's loss is the mean of y² on the first batch, drawn from
    # split(key(seed + 1), steps)[0] as documented (E[y²] = 1 + 1/6: above the baseline).
    first = adding_problem(jax.random.split(jax.random.key(1), STEPS)[0], BATCH, LENGTH)
    np.testing.assert_allclose(losses[0], jnp.mean(first.ys ** 2), rtol=1e-6)
    assert float(losses[:10].mean()) > baseline
    assert float(losses[-20:].mean()) < 0.1 * baseline, float(losses[-20:].mean())


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be >= 1"),
    ({"length": 1}, "length must be >= 2"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"learning_rate": 0.0}, "learning_rate must be a positive finite number"),
    ({"learning_rate": float("nan")}, "learning_rate must be a positive finite number"),
    ({"clip_norm": -1.0}, "clip_norm must be a positive finite number"),
    ({"clip_norm": float("inf")}, "clip_norm must be a positive finite number"),
])
def test_bad_arguments_raise_before_any_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_on_adding(jlstm.gru(2), **kwargs)


def test_a_non_integer_step_count_is_a_type_error():
    with pytest.raises(TypeError, match="steps must be a Python int"):
        train_on_adding(jlstm.gru(2), 2.5)

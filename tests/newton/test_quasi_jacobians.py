"""``Newton(quasi=...)``: which Jacobian the quasi methods keep, and what ``quasi="auto"`` buys.

The time-averaged Jacobian (``quasi="mean"``) keeps the coupling between units that the blocks and
the diagonal drop; on a weakly driven network it cuts quasi-DEER's iterations several-fold (the
issue's case: an untrained ``lstm(16)`` at T=2048, 74-181 iterations with the diagonal). Where the
steps' Jacobians differ too much from their mean it diverges, and ``"auto"`` goes on with the blocks.
Every converged answer is checked against the sequential scan (float32: within 2e-5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm

TOL = 2e-5


def _run(cell, params, xs, newton, **kw):
    @jax.jit
    def run(p, x):
        _, y_seq = jlstm.scan(cell, p, x, **kw)
        _, ys, info = jlstm.scan(cell, p, x, method=newton, return_info=True, **kw)
        return jnp.max(jnp.abs(ys - y_seq)), info.iterations, info.converged

    err, iters, ok = run(params, xs)
    return float(err), int(iters), bool(ok)


@pytest.mark.parametrize("input_size", [2, 16])       # the adding problem's input size, and a wide one
def test_untrained_lstm16_at_T2048_converges_in_at_most_30(input_size):
    """The default quasi-DEER on an untrained lstm(16), T=2048: ≤ 30 iterations, within 2e-5 of sequential
    (the blocks alone needed 56 to over 300 at inputs 1-4; ``python -m benchmarks.quasi_deer_blocks``)."""
    cell = jlstm.lstm(16)
    for seed in (0, 1):
        params = cell.init(jax.random.key(seed), input_size)
        xs = jax.random.normal(jax.random.key(seed + 100), (2048, 1, input_size))
        err, iters, ok = _run(cell, params, xs, jlstm.Newton("quasi_deer"))
        assert ok and iters <= 30 and err <= TOL, (seed, iters, err)


def test_auto_leaves_the_mean_where_it_diverges():
    """The sLSTM's exponential gates: the time-averaged Jacobian alone diverges; "auto" still converges."""
    cell = jlstm.slstm(16)
    params = cell.init(jax.random.key(0), 16)
    xs = jax.random.normal(jax.random.key(1), (1024, 4, 16))

    @jax.jit
    def run(p, x):
        _, y_seq = jlstm.scan(cell, p, x)
        out = {}
        for quasi, max_iters in (("mean", 30), ("auto", 60), ("blocks", 60)):
            newton = jlstm.Newton("quasi_deer", quasi=quasi, max_iters=max_iters, on_failure="ignore")
            _, ys, info = jlstm.scan(cell, p, x, method=newton, return_info=True)
            out[quasi] = (jnp.max(jnp.abs(ys - y_seq)), info.iterations, info.converged)
        return out

    out = {k: (float(e), int(i), bool(c)) for k, (e, i, c) in run(params, xs).items()}
    assert not out["mean"][2], out
    err, iters, ok = out["auto"]
    assert ok and err <= TOL and iters <= out["blocks"][1] + 10, out


def test_mean_with_resets_lengths_and_gradients():
    """Resets cut the averaged recurrence (their Jacobian is 0); padding and the gradient match sequential."""
    cell = jlstm.gru(8)
    params = cell.init(jax.random.key(2), 3)
    T, B = 300, 3
    xs = jax.random.normal(jax.random.key(3), (T, B, 3))
    resets = jax.random.bernoulli(jax.random.key(4), 0.02, (T, B))
    lengths = jnp.array([T, 211, 57])
    newton = jlstm.Newton("quasi_deer", quasi="mean", max_iters=60)
    kw = dict(resets=resets, lengths=lengths)
    err, iters, ok = _run(cell, params, xs, jlstm.Newton("quasi_deer", quasi="mean", max_iters=60,
                                                      on_failure="ignore"), **kw)
    assert ok and err <= TOL, (iters, err)

    def loss(p, method):
        return jnp.sum(jnp.tanh(jlstm.scan(cell, p, xs, method=method, **kw)[1]) ** 2)

    g_seq = jax.jit(jax.grad(lambda p: loss(p, "sequential")))(params)
    g_new = jax.jit(jax.grad(lambda p: loss(p, newton)))(params)
    for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_seq)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


def test_quasi_options_are_checked():
    with pytest.raises(ValueError, match="quasi must be one of"):
        jlstm.Newton("quasi_deer", quasi="full")
    with pytest.raises(ValueError, match="contradicts"):
        jlstm.Newton("quasi_deer", blocks=False, quasi="mean")
    with pytest.raises(ValueError, match="serves method='quasi_deer'"):
        jlstm.Newton("quasi_elk", quasi="mean")
    assert jlstm.Newton("quasi_deer", blocks=False).quasi_jacobian(8) == "diagonal"
    assert jlstm.Newton("quasi_deer").quasi_jacobian(8) == "mean"
    assert jlstm.Newton("quasi_deer").quasi_jacobian(1024) == "blocks"
    assert jlstm.Newton("quasi_elk").quasi_jacobian(8) == "blocks"

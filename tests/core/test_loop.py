"""``jlstm.core.loop.projects_in_loop``: where the step loop projects each input, and that both layouts agree.

The hoisted layout (one projection of all T steps before the loop) is the one ``tests/cells/test_cells.py``
checks against NumPy transcriptions at batch 3; here the in-loop layout, which the CPU plan takes from
batch 8 for the gated cells, must give the same values and gradients, and the loop body must really hold
the input's product (else the comparison would be vacuous).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxpr_walk import dots_per_scan_body

import jlstm
import jlstm._scan as scan_mod
from jlstm.core.loop import projects_in_loop
from jlstm.core.plan import plan_for

T, I, H = 6, 3, 4
CPU = plan_for("cpu")


def _projection(cell, B):
    params = cell.init(jax.random.key(0), I)
    return params, jnp.zeros((T,) + ((B,) if B else ()) + (I,))


@pytest.mark.parametrize("factory,B,want", [
    (lambda: jlstm.gru(H), 8, True),                       # 3H wide projection, batch 8
    (lambda: jlstm.gru(H), 7, False),                      # below the plan's batch
    (lambda: jlstm.gru(H), 0, False),                      # unbatched
    (lambda: jlstm.lstm(H, proj_size=2), 16, True),        # 4H against an output of 2
    (lambda: jlstm.min_gru(H), 8, True),                   # exactly twice as wide
    (lambda: jlstm.simple_rnn(H), 32, False),              # as wide as its output
])
def test_the_rule(factory, B, want):
    cell = factory()
    params, xs = _projection(cell, B)
    assert projects_in_loop(CPU, cell.fast.project, params, xs, cell.output_size) is want
    assert projects_in_loop(plan_for("gpu"), cell.fast.project, params, xs, cell.output_size) is False


CELLS = {
    "gru": (lambda: jlstm.gru(H), {"fast": False}),
    "lstm_proj": (lambda: jlstm.lstm(H, proj_size=3), {}),
    "layer_norm_lstm": (lambda: jlstm.layer_norm_lstm(H), {}),
    "slstm": (lambda: jlstm.slstm(H, num_heads=2), {}),
    "min_gru": (lambda: jlstm.min_gru(H), {"method": "sequential"}),
    "para_lstm": (lambda: jlstm.para_lstm(H), {"method": "sequential"}),
}


@pytest.mark.parametrize("name", CELLS)
def test_in_loop_and_hoisted_layouts_agree(name, monkeypatch):
    factory, kw = CELLS[name]
    cell = factory()
    B = 8
    k = jax.random.split(jax.random.key(1), 3)
    params = cell.init(k[0], I)
    xs = jax.random.normal(k[1], (T, B, I))
    ct = jax.random.normal(k[2], (T, B, cell.output_size))
    lengths = jnp.array([6, 3, 0, 5, 6, 1, 2, 4])

    def value_and_grads():
        def run(p, x):  # a new function per layout: jit's cache is keyed on the function
            _, ys = jlstm.scan(cell, p, x, lengths=lengths, **kw)
            return ys

        loss = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(run(p, x) * ct), argnums=(0, 1)))
        return jax.jit(run)(params, xs), loss(params, xs), dots_per_scan_body(jax.make_jaxpr(run)(params, xs))

    results = {}
    for layout, start in (("in_loop", 8), ("hoisted", None)):
        plan = CPU._replace(step_inloop_from_batch=start)
        monkeypatch.setattr(scan_mod, "current_plan", lambda plan=plan: plan)
        results[layout] = value_and_grads()
    (ys_in, (v_in, g_in), dots_in), (ys_h, (v_h, g_h), dots_h) = results["in_loop"], results["hoisted"]
    assert len(dots_in) == len(dots_h) == 1 and dots_in[0] == dots_h[0] + 1, (dots_in, dots_h)
    np.testing.assert_allclose(ys_in, ys_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v_in, v_h, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_in), jax.tree.leaves(g_h), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g_in[0])) > 0      # the gradients are there

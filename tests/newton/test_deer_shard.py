"""jlstm.Newton(mesh=...): time split over 8 host CPU devices equals one device and the sequential scan."""

import textwrap

import jax
import pytest
from host_devices import run_on_host_devices

import jlstm

pytestmark = pytest.mark.slow          # started first (tests/conftest.py): processes, seconds each

# Run in a subprocess: the device count is fixed when JAX starts.
SCRIPT = textwrap.dedent(r"""
    import json
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import jlstm

    assert len(jax.devices()) == 8, jax.devices()
    mesh = jax.make_mesh((8,), ("time",))
    T, B, I = 61, 2, 3                                   # not a multiple of 8: padded inside
    out = {}
    for name, cell in (("gru", jlstm.gru(4)), ("lstm", jlstm.lstm(3, peephole="full"))):
        params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0), I))
        xs = jax.random.normal(jax.random.key(1), (T, B, I), jnp.float64)
        lengths = jnp.array([T, 45])

        def loss(p, method):
            final, ys, info = jlstm.scan(cell, p, xs, lengths=lengths, method=method, return_info=True)
            value = jnp.sum(jnp.cos(ys)) + sum(jnp.sum(a) for a in jax.tree.leaves(final))
            return value, (final, ys, info)

        run = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
        g0, (f0, y0, _) = run(params, "sequential")
        for method in ("deer", "quasi_deer"):
            # the same Jacobian on both sides: quasi="auto" keeps the time-averaged one only without mesh=
            g1, (f1, y1, i1) = run(params, jlstm.Newton(method, quasi="blocks"))
            g8, (f8, y8, i8) = run(params, jlstm.Newton(method, quasi="blocks", mesh=mesh, axis="time"))
            diff = lambda a, b: max(float(jnp.max(jnp.abs(x - y))) for x, y in
                                    zip(jax.tree.leaves(a), jax.tree.leaves(b)))
            out[f"{name}/{method}"] = {
                "sharded_vs_one": diff((f8, y8, g8), (f1, y1, g1)),
                "sharded_vs_sequential": diff((f8, y8, g8), (f0, y0, g0)),
                "iters": [int(i1.iterations), int(i8.iterations)],
                "converged": bool(i8.converged),
            }
    print("RESULT" + json.dumps(out))
""")


def test_sharded_over_time_equals_one_device():
    out = run_on_host_devices(SCRIPT, timeout=600)
    for case, r in out.items():
        assert r["converged"], (case, r)
        assert r["sharded_vs_one"] < 1e-9, (case, r)
        assert r["sharded_vs_sequential"] < 1e-6, (case, r)
        assert r["iters"][0] == r["iters"][1], (case, r)   # same Newton iterates, only split differently


def test_mesh_needs_an_undamped_method_and_a_mesh_axis():
    mesh = jax.make_mesh((1,), ("time",))
    with pytest.raises(ValueError, match="splits time"):
        jlstm.Newton("elk", mesh=mesh)
    with pytest.raises(ValueError, match="mesh axes"):
        jlstm.Newton("deer", mesh=mesh, axis="batch")

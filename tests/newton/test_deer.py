"""jlstm.scan(method="deer" | "quasi_deer" | "elk" | jlstm.Newton(...)) against the sequential scan.

The sequential scan is the reference (it is itself checked against NumPy transcriptions of
each cell in test_cells.py). Everything runs in float64 with lengths and a mask, and compares
outputs, final states and the gradients of params, inputs and the initial state to 1e-6.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jlstm

T, B, I = 12, 3, 2
TOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def x64():
    with jax.enable_x64(True):
        yield


CELLS = {
    "lstm": lambda: jlstm.lstm(3),
    "lstm_diagonal_peephole": lambda: jlstm.lstm(3, peephole="diagonal"),
    "lstm_full_peephole": lambda: jlstm.lstm(3, peephole="full"),
    "lstm_proj": lambda: jlstm.lstm(3, proj_size=2),
    "gru": lambda: jlstm.gru(3),
    "simple_rnn": lambda: jlstm.simple_rnn(3),
    "layer_norm_lstm": lambda: jlstm.layer_norm_lstm(3),
    "slstm": lambda: jlstm.slstm(4, num_heads=2),
    "mlstm": lambda: jlstm.mlstm(4, num_heads=2),
    "min_gru": lambda: jlstm.min_gru(3),
    "min_lstm": lambda: jlstm.min_lstm(3),
    "para_gru": lambda: jlstm.para_gru(3),
    "para_lstm": lambda: jlstm.para_lstm(3),
}
# Every cell runs one undamped method, deer and quasi_deer in turn, so each method meets every
# cell family (a method per cell keeps the compile time of this file within the suite's budget);
# the damped methods run on a cell of each family.
UNDAMPED = {c: ("deer",) if k % 2 == 0 else ("quasi_deer",) for k, c in enumerate(CELLS)}
UNDAMPED["lstm"] = ("deer", "quasi_deer")  # the plain LSTM runs both
DAMPED = {"lstm_full_peephole": ("elk",), "slstm": ("elk",), "gru": ("quasi_elk",), "simple_rnn": ("quasi_elk",),
          "para_lstm": ("elk",)}
CASES = {c: UNDAMPED[c] + DAMPED.get(c, ()) for c in CELLS}


def _setup(name, key=0, scale=0.3):
    cell = CELLS[name]()
    k1, k2, k3, k4 = jax.random.split(jax.random.key(key), 4)
    params = cell.init(k1, I)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(k2, len(leaves))
    params = treedef.unflatten([(a + scale * jax.random.normal(k, a.shape)).astype(jnp.float64)
                                for a, k in zip(leaves, keys)])
    xs = jax.random.normal(k3, (T, B, I), jnp.float64)
    state = jax.tree.map(lambda a: 0.1 * jax.random.normal(k4, a.shape, jnp.float64),
                         cell.initial_state(params, (B,)))
    lengths = jnp.array([T, 7, 0])
    mask = jnp.ones((T, B), bool).at[3, 0].set(False).at[5, 1].set(False)
    return cell, params, xs, state, lengths, mask


def _newton(method, **kw):
    return jlstm.Newton(method, on_failure="ignore", **kw)      # no fallback: the method alone is tested


def _run(cell, methods, reverse=False, remat=None):
    """One jitted function: ``{method: ((final, ys, info), grads)}`` of a loss reading all outputs."""

    def loss(params, xs, state, lengths, mask, method):
        final, ys, info = jlstm.scan(cell, params, xs, state, lengths=lengths, mask=mask, method=method,
                                     reverse=reverse, remat=remat, return_info=True)
        w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype).reshape(ys.shape))
        value = jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(final))
        return value, (final, ys, info)

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)

    @jax.jit
    def run(*args):
        return {m if isinstance(m, str) else m.name: grad(*args, m)[::-1] for m in methods}

    def call(*args):
        out = run(*args)
        return {m: (aux, g) for m, (g, (_, aux)) in out.items()}
    return call


def assert_close(a, b, tol=TOL):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=0)


@pytest.mark.parametrize("name", CELLS)
def test_matches_sequential(name):
    cell, params, xs, state, lengths, mask = _setup(name)
    xs = xs.at[10:, 1].set(jnp.nan)                    # NaN in the padding of sequence 1 (length 7)
    out = _run(cell, ("sequential",) + tuple(_newton(m) for m in CASES[name]))(params, xs, state, lengths, mask)
    (f0, y0, _), g0 = out.pop("sequential")
    for method, ((f1, y1, info), g1) in out.items():
        assert bool(info.converged) and float(info.residual) <= 1e-9, (method, info[:3])
        assert_close(y1, y0)
        assert_close(f1, f0)
        assert np.all(np.isfinite(np.concatenate([np.ravel(g) for g in jax.tree.leaves(g1)]))), method
        assert_close(g1, g0)
        assert float(jnp.max(jnp.abs(y1[7:, 1]))) == 0.0 and float(jnp.max(jnp.abs(y1[:, 2]))) == 0.0


def test_reverse_and_remat():
    cell, params, xs, state, lengths, mask = _setup("lstm_diagonal_peephole", key=1)
    out = _run(cell, ("sequential", _newton("deer"), _newton("quasi_elk")), reverse=True, remat=4)(
        params, xs, state, lengths, mask)
    ref = out.pop("sequential")
    for method, ((f1, y1, info), g1) in out.items():
        assert bool(info.converged), method
        assert_close((f1, y1, g1), (ref[0][0], ref[0][1], ref[1]))


def test_vmap_equals_batched_call():
    cell, params, xs, state, lengths, _ = _setup("gru", key=2)

    def one(x, s, n):
        return jlstm.scan(cell, params, x, s, lengths=n, method="quasi_deer")

    f_v, y_v = jax.jit(jax.vmap(one, in_axes=(1, 0, 0), out_axes=(0, 1)))(xs, state, lengths)
    f_b, y_b = jax.jit(one)(xs, state, lengths)
    assert_close((f_v, y_v), (f_b, y_b), 1e-9)


def _chaotic():
    """A tanh RNN with recurrent weights of norm ≈ 6: chaotic, Newton needs ~T iterations."""
    cell = jlstm.simple_rnn(6)
    params = cell.init(jax.random.key(3), I)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    params = params._replace(w_h=6.0 * jax.random.normal(jax.random.key(4), params.w_h.shape) / np.sqrt(6))
    xs = jax.random.normal(jax.random.key(5), (60, 2, I), jnp.float64)
    return cell, params, xs


def test_divergence_is_detected_and_falls_back_exactly():
    cell, params, xs, = _chaotic()
    lengths = jnp.array([60, 41])
    newton = jlstm.Newton("deer", max_iters=5)

    def loss(p, method):
        final, ys, info = jlstm.scan(cell, p, xs, lengths=lengths, method=method, return_info=True)
        return jnp.sum(ys ** 2) + jnp.sum(final.h), (final, ys, info)

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    g0, (f0, y0, _) = grad(params, "sequential")
    g1, (f1, y1, info) = grad(params, newton)
    assert not bool(info.converged) and int(info.iterations) == 5 and float(info.residual) > 1e-3
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y0))
    np.testing.assert_array_equal(np.asarray(f1.h), np.asarray(f0.h))
    assert_close(g1, g0, 1e-12)
    _, _, ignored = jlstm.scan(cell, params, xs, method=jlstm.Newton("deer", max_iters=5, on_failure="ignore"),
                               return_info=True)
    assert not bool(ignored.converged)


def test_raise_mode_raises_under_jit():
    cell, params, xs = _chaotic()
    newton = jlstm.Newton("quasi_deer", max_iters=3, on_failure="raise")
    run = jax.jit(lambda p: jlstm.scan(cell, p, xs, method=newton))
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(run(params))


def test_nan_iterates_count_as_not_converged():
    cell, params, xs = _chaotic()
    params = params._replace(w_h=params.w_h.at[0, 0].set(jnp.nan))
    _, ys, info = jlstm.scan(cell, params, xs, method=jlstm.Newton("deer", on_failure="ignore"), return_info=True)
    assert not bool(info.converged) and int(info.iterations) <= 1


@pytest.mark.parametrize("mesh", [False, True], ids=["one_device", "mesh"])
def test_an_all_nan_trajectory_is_not_converged(mesh):
    """In float32, XLA:CPU's max over 4096 or more NaNs is -inf: it once passed ``residual <= tol``."""
    cell = jlstm.simple_rnn(16)
    params = cell.init(jax.random.key(0), 2)
    params = params._replace(w_h=jnp.full_like(params.w_h, jnp.nan))
    xs = jax.random.normal(jax.random.key(1), (300, 1, 2), jnp.float32)       # 300·16 = 4800 residual terms
    kw = {"mesh": jax.make_mesh((1,), ("time",)), "axis": "time"} if mesh else {}
    _, ys, info = jlstm.scan(cell, params, xs, method=jlstm.Newton("deer", on_failure="ignore", **kw),
                             return_info=True)
    assert bool(jnp.all(jnp.isnan(ys))) and np.isnan(float(info.residual)) and not bool(info.converged)


def test_fixed_damping_takes_every_step():
    """``adapt=False`` is ELK with a fixed λ: each iteration is one damped step from the last iterate,
    taken whatever it does to the residual (a step once refused was refused forever, since λ stayed)."""
    from jlstm.core.linear import Algebra
    from jlstm.newton.linear import damped_solve
    from jlstm.newton.step import FlatState, evaluate, flat_step

    cell, params, xs = _chaotic()
    state = cell.initial_state(params, (2,))
    newton = jlstm.Newton("quasi_elk", damping=0.5, adapt=False, max_iters=4, tol=1e-300, on_failure="ignore")
    _, ys, info = jlstm.scan(cell, params, xs, state, method=newton, return_info=True)
    assert int(info.iterations) == 4

    spec = FlatState.of(state, (2,))
    f, alg, s0 = flat_step(cell, spec), Algebra(dense=False), spec.ravel(state)
    valid = jnp.ones(xs.shape[:2], bool)

    @jax.jit
    def written_out(S):                               # four damped steps, every one taken
        for _ in range(4):
            prev = jnp.concatenate([s0[None], S[:-1]])
            Fs, _, J = evaluate(f, params, prev, xs, valid, "diag")
            b = (Fs - alg.mv(J, prev)).at[0].set(Fs[0])
            S = jnp.clip(damped_solve(alg, J.at[0].set(0), b, S, 0.5), -1e8, 1e8)
        return evaluate(f, params, jnp.concatenate([s0[None], S[:-1]]), xs, valid)[1]

    want = written_out(jnp.broadcast_to(s0, (xs.shape[0], 2, spec.size)))
    np.testing.assert_allclose(ys, want, rtol=1e-9, atol=1e-9)


def test_warm_start_from_a_previous_trajectory():
    cell, params, xs, state, lengths, mask = _setup("gru", key=6)
    _, y0, info0 = jlstm.scan(cell, params, xs, state, lengths=lengths, method="quasi_deer", return_info=True)
    newton = jlstm.Newton("quasi_deer", init=info0.trajectory)
    _, y1, info1 = jlstm.scan(cell, params, xs, state, lengths=lengths, method=newton, return_info=True)
    assert int(info0.iterations) > 5 and int(info1.iterations) <= 3 and bool(info1.converged)
    assert_close(y1, y0, 1e-12)


def test_empty_sequence_and_unbatched_input():
    cell, params, _, _, _, _ = _setup("lstm")
    final, ys = jax.jit(lambda p, x: jlstm.scan(cell, p, x, method="deer"))(params, jnp.zeros((0, B, I)))
    assert ys.shape == (0, B, 3) and float(jnp.max(jnp.abs(final.h))) == 0.0
    xs = jax.random.normal(jax.random.key(7), (9, I), jnp.float64)
    f0, y0 = jlstm.scan(cell, params, xs)
    f1, y1 = jax.jit(lambda p, x: jlstm.scan(cell, p, x, method=_newton("elk")))(params, xs)
    assert_close((f1, y1), (f0, y0))


def test_training_changes_only_the_method():
    """Three optax steps on the same loss: switching method= is the only change."""
    cell, params, xs, _, lengths, _ = _setup("lstm", key=8)
    opt = optax.adam(0.05)

    def make_step(method):
        def loss(p):
            _, ys = jlstm.scan(cell, p, xs, lengths=lengths, method=method)
            return jnp.mean((ys[..., 0] - 0.5) ** 2)

        @jax.jit
        def step(p, s):
            value, g = jax.value_and_grad(loss)(p)
            updates, s = opt.update(g, s, p)
            return optax.apply_updates(p, updates), s, value
        return step

    results = {}
    for method in ("sequential", "deer", "quasi_deer"):
        p, s, step, losses = params, opt.init(params), make_step(method), []
        for _ in range(3):
            p, s, value = step(p, s)
            losses.append(float(value))
        results[method] = (p, losses)
    assert results["sequential"][1][-1] < results["sequential"][1][0]
    for method in ("deer", "quasi_deer"):
        np.testing.assert_allclose(results[method][1], results["sequential"][1], atol=TOL)
        assert_close(results[method][0], results["sequential"][0])


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "newton"}, "method must be one of"),
    ({"on_failure": "warn"}, "on_failure must be one of"),
    ({"max_iters": -1}, "max_iters must be an int"),
    ({"tol": 0.0}, "tol must be > 0"),
    ({"method": "deer", "damping": 0.5}, "needs method='elk'"),
])
def test_bad_options_say_what_to_pass(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jlstm.Newton(**kwargs)

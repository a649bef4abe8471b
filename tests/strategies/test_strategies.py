"""The evaluation strategies: objects equal their method strings, are frozen and hashable, and the
options they carry reach the code that runs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm.core.plan import PLANS, Plan

T, B, I = 13, 2, 3


def _data(cell, seed=0):
    kp, kx = jax.random.split(jax.random.key(seed))
    return cell.init(kp, I), jax.random.normal(kx, (T, B, I))


def _jit_ys(cell, method):
    """The outputs of ``jlstm.scan`` under ``jit`` (one program each: eager, the Newton and mLSTM forms
    dispatch op by op, 4x slower to run here)."""
    return jax.jit(lambda p, x: jlstm.scan(cell, p, x, method=method)[1])


def test_objects_equal_their_strings():
    lstm, mlstm = jlstm.lstm(4), jlstm.mlstm(8, num_heads=2, chunk_size=8)
    p, xs = _data(lstm)
    lengths = jnp.array([T, 5])
    for fast in (True, False):
        a = jlstm.scan(lstm, p, xs, method=jlstm.Sequential(fast=fast), lengths=lengths)[1]
        b = jlstm.scan(lstm, p, xs, method="sequential", fast=fast, lengths=lengths)[1]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    pm, xs = _data(mlstm)
    for obj, name in ((jlstm.Chunkwise(chunk_size=8), "chunkwise"), (jlstm.Parallel(), "parallel"),
                      (jlstm.Auto(), "auto")):
        a = _jit_ys(mlstm, obj)(pm, xs)
        b = _jit_ys(mlstm, name)(pm, xs)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the forms agree with the loop, and the chunk size is the object's
    loop = jlstm.scan(mlstm, pm, xs, method="sequential")[1]
    for size in (3, 5, 16):
        got = _jit_ys(mlstm, jlstm.Chunkwise(chunk_size=size))(pm, xs)
        np.testing.assert_allclose(np.asarray(got), np.asarray(loop), atol=2e-5)
    g = jlstm.gru(4)
    pg, xs = _data(g)
    a = _jit_ys(g, jlstm.Newton("deer"))(pg, xs)
    b = _jit_ys(g, "deer")(pg, xs)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_strategies_are_frozen_hashable_and_equal_by_value():
    objs = [jlstm.Sequential(unroll=2, remat="segment"), jlstm.Parallel(), jlstm.Chunkwise(chunk_size=8),
            jlstm.Auto(), jlstm.Newton("quasi_deer", max_iters=7)]
    again = [jlstm.Sequential(unroll=2, remat="segment"), jlstm.Parallel(), jlstm.Chunkwise(chunk_size=8),
             jlstm.Auto(), jlstm.Newton("quasi_deer", max_iters=7)]
    assert objs == again and [hash(o) for o in objs] == [hash(o) for o in again]
    assert jlstm.Chunkwise(chunk_size=8) != jlstm.Chunkwise(chunk_size=16)
    assert all(isinstance(o, jlstm.Strategy) for o in objs)
    for o in objs:
        field = dataclasses.fields(o)[0].name if dataclasses.fields(o) else None
        if field:
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(o, field, None)
    # usable as a static argument: a rebuilt strategy reuses the compiled program
    traces = []

    def f(method, p, x):
        traces.append(method)
        return jlstm.scan(jlstm.gru(4), p, x, method=method)[1]

    run = jax.jit(f, static_argnums=0)
    p, xs = _data(jlstm.gru(4))
    run(jlstm.Sequential(unroll=2), p, xs)
    run(jlstm.Sequential(unroll=2), p, xs)
    assert len(traces) == 1


def test_the_loop_options_reach_the_loop():
    cell = jlstm.lstm(4)
    p, xs = _data(cell)
    text = jax.jit(lambda p, x: jlstm.scan(cell, p, x, method=jlstm.Sequential(unroll=3, fast=False))[1]) \
        .lower(p, xs).as_text()
    loop = jax.jit(lambda p, x: jlstm.scan(cell, p, x, fast=False)[1]).lower(p, xs).as_text()
    assert text != loop                                # unroll=3 changes the loop's program
    ref = jlstm.scan(cell, p, xs, fast=False)[1]
    for strategy in (jlstm.Sequential(unroll=3, fast=False), jlstm.Sequential(remat="segment"),
                     jlstm.Sequential(remat=4, fast=False)):
        np.testing.assert_allclose(np.asarray(jlstm.scan(cell, p, xs, method=strategy)[1]), np.asarray(ref),
                                   atol=1e-6)


def test_newton_fallback_keeps_the_callers_loop():
    """A Newton method that cannot converge falls back to the caller's Sequential options."""
    cell = jlstm.simple_rnn(4)
    p, xs = _data(cell)
    p = p._replace(w_h=p.w_h * 8.0)                     # chaotic: Newton stops unconverged at 1 iteration
    newton = jlstm.Newton("deer", max_iters=1)
    got, info = (lambda r: (r[1], r[2]))(jlstm.scan(cell, p, xs, method=newton, remat="segment", unroll=2,
                                                    return_info=True))
    assert not bool(info.converged)
    want = jlstm.scan(cell, p, xs, method=jlstm.Sequential(unroll=2, remat="segment"))[1]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    text = jax.jit(lambda p, x: jlstm.scan(cell, p, x, method=newton, unroll=3)[1]).lower(p, xs).as_text()
    assert text.count("while") >= 2                      # the Newton loop and the fallback loop


def test_auto_decides_from_the_plan():
    mlstm, mingru = jlstm.mlstm(8, num_heads=2, parallel_max_length=16), jlstm.min_gru(4)
    auto = jlstm.Auto()
    assert auto.choose(mlstm, 16) == jlstm.Parallel() and auto.choose(mlstm, 17) == jlstm.Chunkwise()
    assert auto.choose(jlstm.lstm(4), 100) == jlstm.Sequential()
    assert auto.choose(mlstm, 16, regularised=True) == jlstm.Sequential()
    assert auto.resolve_plan() in PLANS.values()
    cpu, gpu = PLANS["cpu"], PLANS["gpu"]
    assert cpu.parallel_from_T is None and gpu.parallel_from_T == 32
    assert isinstance(jlstm.Auto(plan=gpu).resolve_plan(), Plan)
    assert jlstm.default_unroll("cpu") == cpu.unroll and jlstm.default_unroll("gpu") == gpu.unroll
    assert mingru.fast.auto_method(10_000) in ("sequential", "parallel")


def test_bad_strategies_are_refused_with_a_reason():
    cell = jlstm.gru(4)
    p, xs = _data(cell)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        jlstm.Chunkwise(chunk_size=0)
    with pytest.raises(ValueError, match="unroll must be a positive int"):
        jlstm.Sequential(unroll=0)
    with pytest.raises(ValueError, match="carries its own unroll, remat and fast"):
        jlstm.scan(cell, p, xs, method=jlstm.Sequential(unroll=2), unroll=4)
    with pytest.raises(ValueError, match="method='chunkwise' is not supported by gru"):
        jlstm.scan(cell, p, xs, method=jlstm.Chunkwise())
    with pytest.raises(ValueError, match="method='bogus' is not a method"):
        jlstm.scan(cell, p, xs, method="bogus")
    with pytest.raises(TypeError, match="method must be a str"):
        jlstm.scan(cell, p, xs, method=3)
    layer = jlstm.recurrent(cell, zoneout=0.1, method=jlstm.Newton("deer"))
    with pytest.raises(ValueError, match="act inside the step loop"):
        layer.apply(layer.init(jax.random.key(0), I), xs, key=jax.random.key(1))

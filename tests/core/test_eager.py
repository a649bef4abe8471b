"""``jlstm.core.eager``: an eager ``jlstm.scan`` or layer call compiles once per configuration.

A cell whose ``step`` counts its own traces shows when a call was traced (compiled) again. The
cached path must give the answers of a call inside the user's own ``jit`` and of the direct path,
leave traced calls (``jit``, ``grad``, ``vmap``) to the caller's trace, and keep eager-only
behaviour: Python-number leaves, ``jax.disable_jit()``, a raising Newton, errors on bad input.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm.core import eager

T, B, I, H = 5, 3, 2, 4


def _counting_cell():
    """An Elman cell that counts how often its ``step`` is traced (once per compile of a scan)."""
    traces = []

    def init(key, input_size):
        k1, k2 = jax.random.split(key)
        return {"w": jax.random.normal(k1, (input_size, H)) * 0.5, "u": jax.random.normal(k2, (H, H)) * 0.5}

    def initial_state(params, batch_shape=()):
        return jnp.zeros(jlstm.batch_tuple(batch_shape) + (H,))

    def step(params, h, x):
        traces.append(1)
        h = jnp.tanh(x @ params["w"] + h @ params["u"])
        return h, h

    cell = jlstm.Cell(init=init, initial_state=initial_state, step=step, output_size=H, name="counting")
    return cell, traces


def _inputs(seed=0):
    return jax.random.normal(jax.random.key(seed), (T, B, I))


def test_repeated_eager_calls_trace_once_and_agree_with_jit():
    eager.clear()
    cell, traces = _counting_cell()
    params = cell.init(jax.random.key(0), I)
    xs = _inputs()
    h1, ys1 = jlstm.scan(cell, params, xs)
    first = len(traces)
    assert first > 0
    h2, ys2 = jlstm.scan(cell, params, _inputs(1))              # new values, same shapes: no new trace
    assert len(traces) == first
    jitted = jax.jit(lambda p, x: jlstm.scan(cell, p, x))
    for x, (h, ys) in ((xs, (h1, ys1)), (_inputs(1), (h2, ys2))):
        want_h, want_ys = jitted(params, x)
        np.testing.assert_allclose(ys, want_ys, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(h, want_h, rtol=1e-6, atol=1e-6)
    assert not np.allclose(ys1, ys2)                           # the inputs really reached the program
    jlstm.scan(cell, params, jnp.ones((T + 1, B, I)))            # a new shape compiles anew
    assert len(traces) > first


def test_options_and_argument_structure_are_part_of_the_key():
    eager.clear()
    cell, traces = _counting_cell()
    params = cell.init(jax.random.key(0), I)
    xs = _inputs()
    _, fwd = jlstm.scan(cell, params, xs)
    _, rev = jlstm.scan(cell, params, xs, reverse=True)
    np.testing.assert_allclose(rev[::-1], jlstm.scan(cell, params, xs[::-1])[1], rtol=1e-6, atol=1e-6)
    assert not np.allclose(fwd, rev)
    lengths = jnp.array([T, 2, 0])
    _, short = jlstm.scan(cell, params, xs, lengths=lengths)
    np.testing.assert_array_equal(short[2:, 1], 0.0)
    np.testing.assert_allclose(short[:2, 1], fwd[:2, 1], rtol=1e-6)
    state = jnp.ones((B, H))
    _, from_state = jlstm.scan(cell, params, xs, state)
    assert not np.allclose(from_state[0], fwd[0])


def test_traced_calls_stay_in_the_callers_trace():
    cell, traces = _counting_cell()
    params = cell.init(jax.random.key(0), I)
    xs = _inputs()

    def loss(p, x):
        return jnp.sum(jlstm.scan(cell, p, x)[1] ** 2)

    g = jax.grad(loss)(params, xs)
    g_direct = jax.grad(lambda p, x: jnp.sum(_direct(cell, p, x) ** 2))(params, xs)
    for k in g:
        np.testing.assert_allclose(g[k], g_direct[k], rtol=1e-5, atol=1e-6)
    per_seq = jax.vmap(lambda x: jlstm.scan(cell, params, x)[1], in_axes=1, out_axes=1)(xs)
    np.testing.assert_allclose(per_seq, jlstm.scan(cell, params, xs)[1], rtol=1e-5, atol=1e-6)


def _direct(cell, params, xs):
    """The reference: a Python loop over ``step``."""
    h, ys = cell.initial_state(params, (B,)), []
    for t in range(T):
        h, y = cell.step(params, h, xs[t])
        ys.append(y)
    return jnp.stack(ys)


def test_eager_only_cases_take_the_direct_path():
    cell, traces = _counting_cell()
    params = cell.init(jax.random.key(0), I)
    xs = _inputs()
    jlstm.scan(cell, params, xs)
    n = len(traces)
    with jax.disable_jit():
        _, ys = jlstm.scan(cell, params, xs)
    assert len(traces) > n                                      # ran, not served from the cache
    np.testing.assert_allclose(ys, _direct(cell, params, xs), rtol=1e-5, atol=1e-6)
    python_params = {"w": np.asarray(params["w"]).tolist(), "u": params["u"]}
    assert not eager.concrete(python_params)                    # Python floats are no arrays
    assert eager.concrete(params, None, np.ones(2), np.float32(1))


def test_errors_are_raised_on_every_call():
    cell, _ = _counting_cell()
    params = cell.init(jax.random.key(0), I)
    xs = _inputs()
    jlstm.scan(cell, params, xs, lengths=jnp.array([T, 1, 0]))   # the program for these shapes is kept
    for _ in range(2):
        with pytest.raises(ValueError, match="lengths has shape"):          # found while tracing
            jlstm.scan(cell, params, xs, lengths=jnp.array([1, 2]))
        with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\] = \[0, 5\]"):   # read from the values
            jlstm.scan(cell, params, xs, lengths=jnp.array([T + 1, 1, 0]))
        with pytest.raises(ValueError, match=r"lengths must lie in"):
            jlstm.recurrent(cell).apply(params, jnp.moveaxis(xs, 0, 1), lengths=np.array([-1, 1, 0]),
                                        time_major=False)


def test_a_program_traced_under_one_plan_is_not_served_under_another(monkeypatch):
    import jlstm._scan as scan_mod

    eager.clear()
    cell, traces = _counting_cell()
    params = cell.init(jax.random.key(0), I)
    xs = _inputs()
    jlstm.scan(cell, params, xs)
    n = len(traces)
    plan = scan_mod.current_plan()
    monkeypatch.setattr(scan_mod, "current_plan", lambda: plan._replace(unroll=plan.unroll + 2))
    jlstm.scan(cell, params, xs)
    assert len(traces) > n                                      # traced again under the other plan
    monkeypatch.setattr(scan_mod, "current_plan", lambda: plan)
    m = len(traces)
    jlstm.scan(cell, params, xs)
    assert len(traces) == m                                     # the first plan's program is still kept


def test_a_raising_newton_raises_its_own_error_eagerly_and_compiles_once():
    cell, traces = _counting_cell()
    params = cell.init(jax.random.key(0), I)
    params = {"w": params["w"], "u": 6.0 * params["u"]}              # chaotic: one iteration cannot converge
    xs = _inputs() * 3.0
    newton = jlstm.Newton("deer", max_iters=1, on_failure="raise")
    messages = []
    for seed in range(2):
        with pytest.raises(jlstm.NewtonConvergenceError) as caught:
            jlstm.scan(cell, params, _inputs(seed) * 3.0, method=newton)
        assert type(caught.value) is jlstm.NewtonConvergenceError   # raised eagerly, not wrapped by a program
        messages.append(str(caught.value))
        if seed == 0:
            first = len(traces)
    assert len(traces) == first                                  # the second call reused the program
    with jax.disable_jit(), pytest.raises(jlstm.NewtonConvergenceError) as direct:
        jlstm.scan(cell, params, xs, method=newton)                # the op-by-op path, as before
    pattern = r"method='deer'\): Newton's method did not converge: estimated error \S+ > tol 1e-05 after 1 iter"
    for message in (messages[0], str(direct.value)):
        assert re.search(pattern, message), message
    # Converged: the same values as the solve that ignores failures, and as the sequential scan.
    enough = jlstm.Newton("deer", max_iters=T, on_failure="raise")
    _, ys, info = jlstm.scan(cell, params, xs, method=enough, return_info=True)
    _, ys_ignore = jlstm.scan(cell, params, xs, method=jlstm.Newton("deer", max_iters=T, on_failure="ignore"))
    assert bool(info.converged)
    np.testing.assert_array_equal(ys, ys_ignore)
    np.testing.assert_allclose(ys, jlstm.scan(cell, params, xs)[1], rtol=1e-5, atol=1e-5)


def test_a_warm_started_newton_compiles_once_and_uses_its_start():
    cell, traces = _counting_cell()
    params = cell.init(jax.random.key(0), I)
    xs = _inputs()
    _, ys_seq = jlstm.scan(cell, params, xs)
    exact = jlstm.scan(cell, params, xs, method="quasi_deer", return_info=True)[2].trajectory
    one_step = jax.jit(lambda p, x, init: jlstm.scan(
        cell, p, x, method=jlstm.Newton("deer", max_iters=1, init=init, on_failure="ignore"), return_info=True))
    starts = (exact, jnp.zeros_like(exact))
    runs = []
    for start in starts:
        newton = jlstm.Newton("deer", max_iters=1, init=start, on_failure="ignore")
        runs.append(jlstm.scan(cell, params, xs, method=newton, return_info=True))
        if len(runs) == 1:
            first = len(traces)
    assert len(traces) == first                                  # a new start value, the same program
    for start, run in zip(starts, runs):
        want = one_step(params, xs, start)                      # the same solve inside the user's jit
        for got, ref in zip(jax.tree.leaves(run), jax.tree.leaves(want)):
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    (_, ys_warm, info_warm), (_, ys_cold, info_cold) = runs
    assert bool(info_warm.converged) and not bool(info_cold.converged)   # the start reached the solve
    np.testing.assert_allclose(ys_warm, ys_seq, rtol=1e-5, atol=1e-5)
    raising = jlstm.Newton("deer", max_iters=1, init=jnp.zeros_like(exact), on_failure="raise")
    with pytest.raises(jlstm.NewtonConvergenceError) as caught:
        jlstm.scan(cell, params, xs, method=raising)
    assert type(caught.value) is jlstm.NewtonConvergenceError


def test_a_layer_with_a_raising_or_warm_started_newton_compiles_once():
    cell, traces = _counting_cell()
    params = cell.init(jax.random.key(0), I)
    exact = jlstm.scan(cell, params, _inputs(), method="quasi_deer", return_info=True)[2].trajectory
    raising = jlstm.recurrent(cell, method=jlstm.Newton("deer", max_iters=T, on_failure="raise"))
    _, ys = raising.apply(params, _inputs())
    np.testing.assert_allclose(ys, jlstm.scan(cell, params, _inputs())[1], rtol=1e-5, atol=1e-5)
    first = len(traces)
    raising.apply(params, _inputs(1))
    assert len(traces) == first                                  # new inputs, the same program
    failing = jlstm.recurrent(cell, method=jlstm.Newton("deer", max_iters=0, on_failure="raise"))
    with pytest.raises(jlstm.NewtonConvergenceError) as caught:
        failing.apply(params, _inputs())
    assert type(caught.value) is jlstm.NewtonConvergenceError
    outs = []
    for start in (exact, 0.5 * exact):                          # a new layer and start each call
        warm = jlstm.recurrent(cell, method=jlstm.Newton("deer", max_iters=1, init=start, on_failure="ignore"))
        outs.append(warm.apply(params, _inputs())[1])
        if len(outs) == 1:
            first = len(traces)
    assert len(traces) == first
    np.testing.assert_allclose(outs[0], jlstm.scan(cell, params, _inputs())[1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(outs[0], outs[1], atol=1e-4)            # one iteration from a worse start


def test_layer_apply_compiles_once_and_keeps_its_key_dynamic():
    eager.clear()
    cell, traces = _counting_cell()
    layer = jlstm.recurrent(cell, input_dropout=0.5)
    params = layer.init(jax.random.key(0), I)
    xs = _inputs()
    _, a = layer.apply(params, xs, key=jax.random.key(1))
    n = len(traces)
    _, b = layer.apply(params, xs, key=jax.random.key(2))
    assert len(traces) == n
    assert not np.allclose(a, b)                                # the key is an argument, not a constant
    _, again = layer.apply(params, xs, key=jax.random.key(1))
    np.testing.assert_array_equal(a, again)
    _, plain = layer.apply(params, xs)                          # no key: deterministic, its own program
    np.testing.assert_allclose(plain, jlstm.scan(cell, params, xs)[1], rtol=1e-6, atol=1e-6)


_SCALED_CALLS: list[bool] = []


def _scaled(factor, x):
    """``x * factor["k"]`` (or ``x * factor``), noting whether it ran on a tracer (compiled) or on the array."""
    _SCALED_CALLS.append(isinstance(x, jax.core.Tracer))
    return x * (factor["k"] if isinstance(factor, dict) else factor)


def test_an_unhashable_static_argument_runs_directly_and_a_hashable_one_compiled():
    _SCALED_CALLS.clear()
    out = eager.call(_scaled, ({"k": 2.0},), (jnp.ones(3),))           # a dict cannot key the cache
    np.testing.assert_allclose(out, 2.0 * np.ones(3))
    assert _SCALED_CALLS == [False]
    checked = []
    out = eager.call(_scaled, (3.0,), (jnp.ones(3),), check_values=lambda: checked.append(True))
    np.testing.assert_allclose(out, 3.0 * np.ones(3))
    assert _SCALED_CALLS == [False, True] and checked == [True]


def _xlstm_stack():
    from jlstm import xlstm

    E = 8
    return E, xlstm.block_stack([xlstm.mlstm_block(E, num_heads=2, round_to=8, chunk_size=4),
                                 xlstm.slstm_block(E, num_heads=2, conv1d_kernel_size=3, dropout=0.25)])


def test_an_xlstm_stack_called_eagerly_compiles_one_program_and_agrees_with_jit():
    """The xLSTM blocks' apply (norms, projections, a causal conv around the scan) ran op by op when eager:
    over a hundred programs on a first call, each operation dispatched on every call."""
    import collections

    E, stack = _xlstm_stack()
    params = stack.init(jax.random.key(0), E)
    xs = jax.random.normal(jax.random.key(1), (T, B, E))
    kw = dict(lengths=jnp.array([T, 3, 0]), mask=jnp.ones((T, B), bool).at[1, 0].set(False),
              resets=jnp.zeros((T, B), bool).at[2, 1].set(True), key=jax.random.key(2))
    compiles = collections.Counter()

    def count(event, _secs, **_kw):
        if event.endswith(("backend_compile_duration", "cache_retrieval_time_sec")):
            compiles[event] += 1

    eager.clear()
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        final, ys = stack.apply(params, xs, **kw)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert sum(compiles.values()) <= 3, compiles          # the program (op by op: over a hundred)
    assert eager._jitted.cache_info().currsize == 1
    stack.apply(params, xs + 1.0, **kw)                    # new values, same shapes: the same program
    assert eager._jitted.cache_info().hits == 1
    want_final, want_ys = jax.jit(lambda p, x: stack.apply(p, x, **kw))(params, xs)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(want_final), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    _, direct_ys = stack.apply.__wrapped__(params, xs, **kw)     # the direct path: the stack's glue op by op
    np.testing.assert_allclose(ys, direct_ys, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ys[:, 2], 0.0)
    # batch-major input and a carried state take the same path
    _, bm = stack.apply(params, jnp.moveaxis(xs, 0, 1), final, time_major=False)
    np.testing.assert_allclose(jnp.moveaxis(bm, 1, 0), jax.jit(stack.apply)(params, xs, final)[1], rtol=1e-5,
                               atol=1e-6)


def test_an_xlstm_stack_checks_length_values_before_the_compiled_call():
    E, stack = _xlstm_stack()
    params = stack.init(jax.random.key(0), E)
    xs = jnp.ones((T, B, E))
    with jax.disable_jit():
        with pytest.raises(ValueError) as direct:
            stack.apply(params, xs, lengths=jnp.array([T + 1, 1, 0]))
    with pytest.raises(ValueError, match=re.escape(str(direct.value))):
        stack.apply(params, xs, lengths=jnp.array([T + 1, 1, 0]))
    with pytest.raises(ValueError, match="xs must have shape"):    # trace-time checks still name the model
        stack.apply(params, jnp.ones((T, B, E + 1)))


def test_an_xlstm_block_with_a_raising_newton_raises_its_own_error_eagerly():
    """Compiled whole, the failure would come out of a callback as a JaxRuntimeError; such a model
    (at any depth: a block inside a stack) keeps the direct path, where each scan raises it itself."""
    from jlstm import xlstm

    E = 8
    raising = jlstm.Newton("deer", on_failure="raise", max_iters=1)
    block = xlstm.slstm_block(E, num_heads=2, method=raising)
    stack = xlstm.block_stack([xlstm.mlstm_block(E, num_heads=2, round_to=8), block])
    xs = 3.0 * jax.random.normal(jax.random.key(1), (40, 2, E))
    for model in (block, stack):
        params = model.init(jax.random.key(0), E)
        with pytest.raises(jlstm.NewtonConvergenceError, match="did not converge") as err:
            model.apply(params, xs)
        assert type(err.value) is jlstm.NewtonConvergenceError      # not a JaxRuntimeError that matches it
    converging = xlstm.slstm_block(E, num_heads=2, method=jlstm.Newton("deer", on_failure="raise"))
    params = converging.init(jax.random.key(0), E)
    _, ys = converging.apply(params, xs[:6])
    np.testing.assert_allclose(ys, xlstm.slstm_block(E, num_heads=2).apply(params, xs[:6])[1], atol=1e-4)


def test_options_that_compare_equal_but_differ_in_type_do_not_share_a_program():
    """``True == 1`` and both hash alike: a refused ``reverse=1`` once poisoned the cache for ``reverse=True``
    (the kept program held the 1 and raised on the valid call), and ``unroll=True`` (a full unroll) was
    served ``unroll=1``'s program."""
    eager.clear()
    cell, traces = _counting_cell()
    params = cell.init(jax.random.key(0), I)
    xs = _inputs()
    for _ in range(2):
        with pytest.raises(TypeError, match="reverse must be True or False, got 1"):
            jlstm.scan(cell, params, xs, reverse=1)
        _, ys = jlstm.scan(cell, params, xs, reverse=True)
        np.testing.assert_allclose(ys[::-1], jlstm.scan(cell, params, xs[::-1])[1], rtol=1e-6, atol=1e-6)
    jlstm.scan(cell, params, xs, unroll=1)
    n = len(traces)
    jlstm.scan(cell, params, xs, unroll=True)
    assert len(traces) > n                                      # its own program
    assert eager._typed((1, (True, 1.0))) != eager._typed((True, (1, 1)))
    jlstm.scan(cell, params, xs, method=jlstm.Sequential(unroll=1))
    n = len(traces)
    jlstm.scan(cell, params, xs, method=jlstm.Sequential(unroll=True))     # equal strategies, not one program
    assert len(traces) > n
    assert jlstm.gru(4) == jlstm.gru(4) and eager._typed(jlstm.gru(4)) == eager._typed(jlstm.gru(4))


def _count_compiles(fn):
    """``fn()``'s value and the number of programs its call compiled or read from the compilation cache."""
    compiles = []

    def count(event, _secs, **_kw):
        if event.endswith(("backend_compile_duration", "cache_retrieval_time_sec")):
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        out = jax.block_until_ready(fn())
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    return out, len(compiles)


def _front_doors():
    """The front doors over whole arrays, each as (its call on ``args``, ``args``): once op by op when eager
    (mlstm_core: 63 programs on a first call; linear_recurrence and lstm_sequence compiled their loop
    again on every call, 0.2-0.35 s each)."""
    k = jax.random.split(jax.random.key(3), 8)
    q, kk, v = jax.random.normal(k[0], (3, T, B, 2, 4))
    i_pre, f_pre = jax.random.normal(k[1], (2, T, B, 2))
    resets = jnp.zeros((T, B), bool).at[2, 1].set(True)
    a, b = jax.nn.sigmoid(jax.random.normal(k[2], (T, B, H))), jax.random.normal(k[3], (T, B, H))
    cell = jlstm.lstm(H)
    p = cell.init(k[4], I)
    xs, h0 = jax.random.normal(k[5], (T, B, I)), jax.random.normal(k[6], (B, H))
    return {
        "mlstm_core": (lambda *x: jlstm.mlstm_core(*x, method="chunkwise", chunk_size=2, return_state=True),
                       (q, kk, v, i_pre, f_pre)),
        "mlstm_core_resets": (lambda *x: jlstm.mlstm_core(*x[:5], resets=x[5]), (q, kk, v, i_pre, f_pre, resets)),
        "linear_recurrence": (lambda *x: jlstm.linear_recurrence(*x, reverse=True, method="blocked"), (a, b, h0)),
        "linear_recurrence_number": (lambda *x: jlstm.linear_recurrence(0.5, *x, resets=resets), (b,)),
        "lstm_sequence": (lambda *x: jlstm.lstm_sequence(*x, resets=resets), (p.w_x, p.w_h, p.b, xs, h0, h0)),
    }


@pytest.mark.parametrize("name", list(_front_doors()))
def test_array_front_doors_compile_once_when_eager_and_agree_with_jit_and_the_direct_path(name):
    call, args = _front_doors()[name]
    eager.clear()
    out, first = _count_compiles(lambda: call(*args))
    assert first <= 2, first                                   # the program
    shifted = [~x if x.dtype == jnp.bool_ else x + 1.0 for x in args]
    again, repeat = _count_compiles(lambda: call(*shifted))    # new values, same shapes: the same program
    assert repeat == 0 and eager._jitted.cache_info().hits == 1
    jitted = (jax.jit(call)(*args), jax.jit(call)(*shifted))
    for got, want in zip(jax.tree.leaves((out, again)), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with jax.disable_jit():                                     # the direct path, op by op
        direct = call(*args)
    for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(direct), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_python_number_operand_keys_the_program_by_type_and_value():
    b = jax.random.normal(jax.random.key(0), (T, B))
    eager.clear()
    half = jlstm.linear_recurrence(0.5, b)
    np.testing.assert_allclose(half, jlstm.linear_recurrence(jnp.full((T, B), 0.5), b), rtol=1e-6)
    quarter = jlstm.linear_recurrence(0.25, b)                  # another number: another program
    assert not np.allclose(half, quarter)
    np.testing.assert_allclose(jlstm.linear_recurrence(1, b), jnp.cumsum(b, 0), rtol=1e-5, atol=1e-6)
    jlstm.linear_recurrence(1.0, b)
    assert eager._jitted.cache_info().currsize == 5             # the array a and 0.5, 0.25, 1, 1.0
    assert jlstm.linear_recurrence(1, b).dtype == jnp.float32   # a weakly typed int, as the direct call
    with pytest.raises(TypeError, match="b must hold floating point"):
        jlstm.linear_recurrence(0.5, jnp.ones((T, B), jnp.int32))

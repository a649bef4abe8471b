"""The cell contract: a user cell of three functions works everywhere; cells compare by value."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm import streaming

H, I, T, B = 4, 3, 7, 3


# The README's "Write your own cell" example: an IndRNN (Li et al. 2018), three functions.
def indrnn_init(key, input_size):
    kw, ku = jax.random.split(key)
    return {"w": jax.random.normal(kw, (input_size, H)) * 0.5,
            "u": jax.random.uniform(ku, (H,), minval=-0.9, maxval=0.9),
            "b": jnp.zeros((H,))}


def indrnn_initial_state(params, batch_shape=()):
    return jnp.zeros(jlstm.batch_tuple(batch_shape) + (H,), params["w"].dtype)


def indrnn_step(params, h, x):
    h = jnp.tanh(x @ params["w"] + params["u"] * h + params["b"])
    return h, h


CELL = jlstm.Cell(init=indrnn_init, initial_state=indrnn_initial_state, step=indrnn_step,
                  output_size=H, name="indrnn")


def _data(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = CELL.init(k1, I)
    xs = jax.random.normal(k2, (T, B, I))
    return params, xs


def _loop(params, xs_b, length, reverse):
    """A Python loop over the user's step for one sequence: the reference."""
    h = indrnn_initial_state(params)
    ys = np.zeros((xs_b.shape[0], H))
    order = range(length - 1, -1, -1) if reverse else range(length)
    for t in order:
        h, y = indrnn_step(params, h, xs_b[t])
        ys[t] = y
    return h, ys


@pytest.mark.parametrize("reverse", [False, True])
def test_user_cell_scan_equals_python_loop(reverse):
    params, xs = _data()
    lengths = jnp.array([7, 4, 0])
    xs = xs.at[5:, 1].set(jnp.nan)  # padding of sequence 1 is NaN: must not leak
    h, ys = jax.jit(jlstm.scan, static_argnums=0, static_argnames="reverse")(
        CELL, params, xs, lengths=lengths, reverse=reverse)
    for b in range(B):
        h_ref, ys_ref = _loop(params, np.asarray(xs[:, b]), int(lengths[b]), reverse)
        np.testing.assert_allclose(h[b], h_ref, atol=1e-6)
        np.testing.assert_allclose(ys[:, b], ys_ref, atol=1e-6)


def test_user_cell_mask_keeps_state():
    params, xs = _data(1)
    mask = jnp.ones((T, B), bool).at[2, 0].set(False).at[4:, 2].set(False)
    h, ys = jlstm.scan(CELL, params, xs, mask=mask)
    for b in range(B):
        hb = indrnn_initial_state(params)
        for t in range(T):
            if mask[t, b]:
                hb, y = indrnn_step(params, hb, xs[t, b])
                np.testing.assert_allclose(ys[t, b], y, atol=1e-6)
            else:
                np.testing.assert_array_equal(ys[t, b], 0.0)
        np.testing.assert_allclose(h[b], hb, atol=1e-6)


def test_user_cell_grad_equals_loop_grad():
    params, xs = _data(2)
    lengths = jnp.array([7, 3, 5])

    def loss_scan(p):
        return jnp.sum(jlstm.scan(CELL, p, xs, lengths=lengths)[1] ** 2)

    def loss_loop(p):
        total = 0.0
        for b in range(B):
            h = indrnn_initial_state(p)
            for t in range(int(lengths[b])):
                h, y = indrnn_step(p, h, xs[t, b])
                total = total + jnp.sum(y ** 2)
        return total

    g1, g2 = jax.grad(loss_scan)(params), jax.grad(loss_loop)(params)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-5, atol=1e-6)


def test_user_cell_in_layers_stack_bidirectional_vmap():
    params, xs = _data(3)
    lengths = jnp.array([7, 2, 5])
    bi = jlstm.bidirectional(CELL, merge="sum")
    model = jlstm.stack(jlstm.recurrent(CELL), bi)
    mp = model.init(jax.random.key(4), I)
    (s0, s1), ys = model.apply(mp, xs, lengths=lengths)
    _, y0 = jlstm.scan(CELL, mp[0], xs, lengths=lengths)
    _, yf = jlstm.scan(CELL, mp[1].forward, y0, lengths=lengths)
    _, yb = jlstm.scan(CELL, mp[1].backward, y0, lengths=lengths, reverse=True)
    np.testing.assert_allclose(ys, yf + yb, atol=1e-6)
    # vmap over an extra batch of parameter sets
    ps = jax.vmap(lambda k: CELL.init(k, I))(jax.random.split(jax.random.key(5), 2))
    hv, _ = jax.vmap(lambda p: jlstm.scan(CELL, p, xs))(ps)
    h0, _ = jlstm.scan(CELL, jax.tree.map(lambda a: a[0], ps), xs)
    np.testing.assert_allclose(hv[0], h0, atol=1e-6)


def test_user_cell_streaming_and_checkpoint(tmp_path):
    params, xs = _data(6)
    lengths = jnp.array([7, 4, 1])
    step = jax.jit(streaming.make_stream_step(CELL))
    outs = list(streaming.stream(step, params, [xs[:3], xs[3:]], lengths=lengths))
    h_one, ys_one = jlstm.scan(CELL, params, xs, lengths=lengths)
    np.testing.assert_allclose(outs[-1][0], h_one, atol=1e-6)
    np.testing.assert_allclose(jnp.concatenate([o[1] for o in outs]), ys_one, atol=1e-6)
    path = tmp_path / "indrnn.ckpt"
    jlstm.checkpoint.save(path, params)
    loaded, _ = jlstm.checkpoint.load(path, like=params)
    for k in params:
        np.testing.assert_array_equal(loaded[k], params[k])


def test_user_cell_errors_are_clear():
    params, xs = _data()
    with pytest.raises(ValueError, match="recurrent_dropout acts on h_\\(t-1\\)"):
        jlstm.recurrent(CELL, recurrent_dropout=0.2)
    bad = jlstm.Cell(init=indrnn_init, initial_state=indrnn_initial_state, step=indrnn_step,
                     output_size=H + 1, name="indrnn")
    with pytest.raises(ValueError, match=r"returned y of shape \(3, 4\), expected \(3, 5\)"):
        jlstm.scan(bad, params, xs)
    with pytest.raises(ValueError, match="method='parallel' is not supported by indrnn"):
        jlstm.scan(CELL, params, xs, method="parallel")
    with pytest.raises(TypeError, match="output_size must be a positive Python int"):
        jlstm.Cell(init=indrnn_init, initial_state=indrnn_initial_state, step=indrnn_step, output_size=0)
    with pytest.raises(TypeError, match="step must be a function"):
        jlstm.Cell(init=indrnn_init, initial_state=indrnn_initial_state, step=None, output_size=H)


def test_make_cell_step_is_step_projected_of_project():
    cell = jlstm.make_cell(
        init=indrnn_init, initial_state=indrnn_initial_state,
        project=lambda p, x: x @ p["w"] + p["b"],
        step_projected=lambda p, h, xp, recurrent_mask=None: (
            (h2 := jnp.tanh(xp + p["u"] * (h if recurrent_mask is None else h * recurrent_mask))), h2),
        output_size=H, name="indrnn_projected")
    params, xs = _data(7)
    h1, ys1 = jlstm.scan(cell, params, xs)
    h2, ys2 = jlstm.scan(CELL, params, xs)
    np.testing.assert_allclose(ys1, ys2, atol=1e-6)
    s, y = cell.step(params, indrnn_initial_state(params, B), xs[0])
    np.testing.assert_allclose(y, ys2[0], atol=1e-6)
    # make_cell cells support recurrent dropout
    layer = jlstm.recurrent(cell, recurrent_dropout=0.5)
    _, ys = layer.apply(params, xs, key=jax.random.key(0))
    assert ys.shape == (T, B, H)


def test_cells_and_models_equal_by_value():
    assert jlstm.lstm(16) == jlstm.lstm(16)
    assert hash(jlstm.lstm(16, peephole="full")) == hash(jlstm.lstm(16, peephole="full"))
    assert jlstm.lstm(16) != jlstm.lstm(16, peephole="full")
    assert jlstm.lstm(16) != jlstm.lstm(17)
    assert jlstm.gru(8) != jlstm.simple_rnn(8)
    assert jlstm.gru(8, reset_after=False) == jlstm.gru(8, reset_after=False) != jlstm.gru(8)
    assert jlstm.gru(8, reset_after=False).name == "gru(8, reset_after=False)"
    assert jlstm.recurrent(jlstm.gru(8)) == jlstm.recurrent(jlstm.gru(8))
    assert jlstm.recurrent(jlstm.gru(8)) != jlstm.recurrent(jlstm.gru(8), reverse=True)
    assert jlstm.stack(jlstm.recurrent(jlstm.gru(8))) == jlstm.stack(jlstm.recurrent(jlstm.gru(8)))
    assert jlstm.bidirectional(jlstm.lstm(4)) == jlstm.bidirectional(jlstm.lstm(4))
    assert jlstm.lstm(16).config.hidden_size == 16 and jlstm.lstm(16).hidden_size == 16


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_rnn", "layer_norm_lstm", "slstm", "mlstm", "min_gru",
                                  "min_lstm", "para_gru", "para_lstm"])
def test_every_built_in_cell_equals_itself_rebuilt(name):
    """ParaGRU and ParaLSTM once held a fresh initialiser closure in their config: each rebuilt cell was
    new to every cache, and an eager DEER scan of a rebuilt ``para_gru(8)`` compiled again (1.2 s)."""
    factory = getattr(jlstm, name)
    assert factory(8) == factory(8) and hash(factory(8)) == hash(factory(8)) and factory(8) != factory(16)


def test_rebuilt_cell_does_not_recompile():
    traces = []

    def run(cell, params, xs):
        traces.append(1)
        return jlstm.scan(cell, params, xs)[1]

    f = jax.jit(run, static_argnums=0)
    params = jlstm.gru(4).init(jax.random.key(0), 2)
    xs = jnp.ones((3, 2))
    for _ in range(3):
        f(jlstm.gru(4), params, xs)
    assert len(traces) == 1
    f(jlstm.gru(4, dtype=jnp.float32), params, xs)  # a different option: a new program
    assert len(traces) == 2


def test_initial_state_accepts_an_int_batch():
    for cell in (jlstm.lstm(4), jlstm.gru(4), jlstm.simple_rnn(4), jlstm.layer_norm_lstm(4)):
        p = cell.init(jax.random.key(0), 2)
        s = cell.initial_state(p, 32)
        assert all(leaf.shape == (32, 4) for leaf in jax.tree.leaves(s))
    with pytest.raises(TypeError, match="batch_shape must be an int or a tuple"):
        cell.initial_state(p, 2.5)


def test_lengths_outside_range_rejected():
    cell = jlstm.gru(4)
    p = cell.init(jax.random.key(0), 2)
    xs = jnp.ones((5, 2, 2))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\] = \[0, 5\], got values from 1 to 6"):
        jlstm.scan(cell, p, xs, lengths=jnp.array([6, 1]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        jlstm.scan(cell, p, xs, lengths=jnp.array([-1, 1]))


def test_layers_carry_configs_of_both_directions():
    fwd, bwd = jlstm.lstm(4), jlstm.lstm(4, cell_clip=3.0)
    model = jlstm.bidirectional(fwd, bwd)
    assert model.config.forward.config.cell == fwd
    assert model.config.backward.config.cell == bwd
    assert "backward=lstm(4, cell_clip=3.0)" in model.name


def test_auto_method_takes_the_loop_under_step_regularisers():
    calls = []

    def parallel(params, xs, state, valid, *, unroll, remat):
        calls.append(1)
        return jlstm.time_loop(lambda s, x: indrnn_step(params, s, x), state, xs, valid)

    cell = jlstm.make_cell(init=indrnn_init, initial_state=indrnn_initial_state,
                           project=lambda p, x: x,
                           step_projected=lambda p, h, x, recurrent_mask=None: indrnn_step(p, h, x),
                           output_size=H, name="indrnn_auto", methods=(("parallel", parallel),),
                           auto_method=lambda T: "parallel")
    params, xs = _data(8)
    _, ys_auto = jlstm.scan(cell, params, xs)
    assert calls == [1]
    _, ys_seq = jlstm.scan(cell, params, xs, method="sequential")
    np.testing.assert_allclose(ys_auto, ys_seq, atol=1e-6)
    layer = jlstm.recurrent(cell, zoneout=0.3)  # "auto" must fall back to the loop, not raise
    _, ys = layer.apply(params, xs, key=jax.random.key(1))
    assert calls == [1] and ys.shape == (T, B, H)
    with pytest.raises(ValueError, match="need method='sequential'"):
        jlstm.recurrent(cell, zoneout=0.3, method="parallel").apply(params, xs, key=jax.random.key(1))


@pytest.mark.parametrize("cell", [jlstm.slstm(4, num_heads=2), jlstm.mlstm(4, num_heads=2)])
def test_zoneout_refused_for_stabilised_states(cell):
    with pytest.raises(ValueError, match="log-space stabiliser"):
        jlstm.recurrent(cell, zoneout=0.1)

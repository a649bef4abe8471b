"""Sequence layers: recurrent, stack, bidirectional, LSTMP, dropout and zoneout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm

T, B, I = 7, 3, 4


def _close(a, b, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=atol)


@pytest.fixture
def xs():
    return jax.random.normal(jax.random.key(0), (T, B, I))


def test_recurrent_layer_is_scan(xs):
    cell = jlstm.gru(5)
    layer = jlstm.recurrent(cell)
    p = layer.init(jax.random.key(1), I)
    L = jnp.array([7, 2, 5])
    _close(layer.apply(p, xs, lengths=L), jlstm.scan(cell, p, xs, lengths=L))
    assert layer.output_size == 5


def test_stack_chains_layers_and_states(xs):
    c1, c2 = jlstm.lstm(6), jlstm.gru(3)
    model = jlstm.stack(jlstm.recurrent(c1), jlstm.recurrent(c2))
    p = model.init(jax.random.key(1), I)
    assert p[0].w_x.shape == (I, 24) and p[1].w_x.shape == (6, 9)
    L = jnp.array([7, 4, 1])
    (s1, s2), ys = model.apply(p, xs, lengths=L)
    f1, y1 = jlstm.scan(c1, p[0], xs, lengths=L)
    f2, y2 = jlstm.scan(c2, p[1], y1, lengths=L)
    _close((s1, s2, ys), (f1, f2, y2))
    assert model.output_size == 3
    init = model.initial_state(p, (B,))
    _close(model.apply(p, xs, init, lengths=L), ((s1, s2), ys))


def test_stack_dropout_only_with_a_key(xs):
    model = jlstm.stack(jlstm.recurrent(jlstm.lstm(6)), jlstm.recurrent(jlstm.lstm(6)),
                        inter_layer_dropout=0.5)
    p = model.init(jax.random.key(1), I)
    _, a = model.apply(p, xs)
    _, b = model.apply(p, xs)
    _, c = model.apply(p, xs, key=jax.random.key(3))
    _, d = model.apply(p, xs, key=jax.random.key(3))
    _, e = model.apply(p, xs, key=jax.random.key(4))
    _close(a, b)
    _close(c, d)
    assert not np.allclose(a, c) and not np.allclose(c, e)


def _stack_of_two(**dropout):
    return jlstm.stack(jlstm.recurrent(jlstm.lstm(6)), jlstm.recurrent(jlstm.lstm(6)), **dropout)


def _xlstm_layer(**dropout):
    from jlstm.interop._xlstm import slstm_layer

    return slstm_layer(4, 2, **dropout)


@pytest.mark.parametrize("build, name", [(_stack_of_two, "inter_layer_dropout"), (_xlstm_layer, "output_dropout")],
                         ids=["stack", "xlstm_slstm_layer"])
def test_dropout_rate_is_a_deprecated_alias(xs, build, name):
    new = build(**{name: 0.5})
    with pytest.warns(DeprecationWarning, match=rf"dropout_rate= is deprecated.*pass {name}=") as rec:
        old = build(dropout_rate=0.5)
    assert rec[0].filename == __file__                      # the warning points at the caller's line
    assert old == new and old.config.get(name) == 0.5 and old.config.get("dropout_rate") is None
    p = new.init(jax.random.key(1), I)
    _close(old.apply(p, xs, key=jax.random.key(3)), new.apply(p, xs, key=jax.random.key(3)))
    with pytest.raises(TypeError, match=rf"both {name}= and dropout_rate="):
        build(**{name: 0.0}, dropout_rate=0.5)


@pytest.mark.parametrize("merge", ["concat", "sum", "mean"])
def test_bidirectional_matches_two_scans(xs, merge):
    cell = jlstm.lstm(5)
    layer = jlstm.bidirectional(cell, merge=merge)
    p = layer.init(jax.random.key(2), I)
    L = jnp.array([7, 3, 0])
    state, ys = layer.apply(p, xs, lengths=L)
    ff, yf = jlstm.scan(cell, p.forward, xs, lengths=L)
    fb, yb = jlstm.scan(cell, p.backward, xs, lengths=L, reverse=True)
    want = {"concat": jnp.concatenate([yf, yb], -1), "sum": yf + yb, "mean": (yf + yb) / 2}[merge]
    _close(ys, want)
    _close(state, jlstm.BidirectionalState(ff, fb))
    assert ys.shape[-1] == layer.output_size
    # the backward direction starts at each sequence's last valid step
    for b in range(B):
        n = int(L[b])
        _, y_alone = jlstm.scan(cell, p.backward, xs[:n, b][::-1])
        _close(yb[:n, b], y_alone[::-1])


def test_bidirectional_with_a_different_backward_cell(xs):
    layer = jlstm.bidirectional(jlstm.lstm(4), jlstm.gru(2))
    p = layer.init(jax.random.key(0), I)
    assert isinstance(p.backward, jlstm.GRUParams)
    _, ys = layer.apply(p, xs)
    assert ys.shape == (T, B, 6)
    with pytest.raises(ValueError, match="equal output sizes"):
        jlstm.bidirectional(jlstm.lstm(4), jlstm.gru(2), merge="sum")


def test_lstmp_projection_layer(xs):
    cell = jlstm.lstm(8, proj_size=3)
    p = cell.init(jax.random.key(0), I)
    assert p.w_h.shape == (3, 32) and p.w_p.shape == (8, 3)
    state, ys = jlstm.recurrent(cell).apply(p, xs)
    assert ys.shape == (T, B, 3) and state.h.shape == (B, 3) and state.c.shape == (B, 8)
    s = cell.initial_state(p, (B,))
    for t in range(T):
        s, y = cell.step(p, s, xs[t])
        _close(y, ys[t])


def test_cell_clip_bounds_the_cell_state(xs):
    cell = jlstm.lstm(4, cell_clip=0.05, forget_bias=5.0)
    p = cell.init(jax.random.key(0), I)
    final, _ = jlstm.scan(cell, p, 10 * xs)
    assert float(jnp.max(jnp.abs(final.c))) <= 0.05 + 1e-7


def test_zoneout_inference_is_the_expectation(xs):
    cell = jlstm.gru(4)
    rate = 0.3
    layer = jlstm.recurrent(cell, zoneout=rate)
    p = layer.init(jax.random.key(0), I)
    final, ys = layer.apply(p, xs)
    s = cell.initial_state(p, (B,))
    for t in range(T):
        new, _ = cell.step(p, s, xs[t])
        s = jax.tree.map(lambda n, o: rate * o + (1 - rate) * n, new, s)
        _close(ys[t], s.h)
    _close(final, s)


def test_zoneout_training_keeps_or_updates_each_unit(xs):
    cell = jlstm.lstm(4)
    layer = jlstm.recurrent(cell, zoneout=0.5)
    p = layer.init(jax.random.key(0), I)
    s0 = jax.tree.map(lambda a: a + 0.7, cell.initial_state(p, (B,)))
    final, ys = layer.apply(p, xs[:1], s0, key=jax.random.key(5))
    new, _ = cell.step(p, s0, xs[0])
    for got, old, upd in zip(final, s0, new):
        took_old = np.isclose(got, old)
        took_new = np.isclose(got, upd)
        assert (took_old | took_new).all() and took_old.any() and took_new.any()


def test_recurrent_dropout_leaves_the_first_step_alone(xs):
    layer = jlstm.recurrent(jlstm.lstm(6), recurrent_dropout=0.5)
    p = layer.init(jax.random.key(0), I)
    _, plain = layer.apply(p, xs)
    _, dropped = layer.apply(p, xs, key=jax.random.key(1))
    _close(dropped[0], plain[0])          # h_0 = 0, so the mask has nothing to drop
    assert not np.allclose(dropped[1:], plain[1:])
    _, again = layer.apply(p, xs, key=jax.random.key(1))
    _close(dropped, again)


def test_input_dropout_zeroes_inputs_with_a_key(xs):
    cell = jlstm.simple_rnn(3)
    layer = jlstm.recurrent(cell, input_dropout=0.999999)
    p = layer.init(jax.random.key(0), I)
    _, ys = layer.apply(p, xs, key=jax.random.key(1))
    _, zeros_in = jlstm.scan(cell, p, jnp.zeros_like(xs))
    _close(ys, zeros_in)


def test_layers_under_jit_and_grad(xs):
    model = jlstm.stack(jlstm.bidirectional(jlstm.lstm(4)), jlstm.recurrent(jlstm.layer_norm_lstm(3)),
                        inter_layer_dropout=0.1)
    p = model.init(jax.random.key(0), I)
    L = jnp.array([7, 5, 2])

    @jax.jit
    def loss(p, key):
        _, ys = model.apply(p, xs, lengths=L, key=key)
        return jnp.mean(ys ** 2)

    g = jax.grad(loss)(p, jax.random.key(2))
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(g))

"""The sLSTM cell: a NumPy transcription of its equations, gradients, 100,000 steps with saturated
gates (the stabiliser), and every layer and feature of jlstm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from np_reference import run, sigmoid

import jlstm

# one compiled program per call signature (eager scans dispatch, and compile, op by op)
scan = jax.jit(jlstm.scan, static_argnums=0,
               static_argnames=("reverse", "time_major", "method", "remat", "unroll", "fast", "return_info"))

H, NH, I, B, T = 6, 2, 4, 3, 13
D = H // NH


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def np_slstm_step(p, *, heads, forget_gate, headwise):
    """One sLSTM step for one example, gate by gate and head by head (float64)."""
    w_x, r, b = (np.asarray(a, np.float64) for a in p)
    d = r.shape[1]
    Hn = heads * d

    def gate_pre(g, x, h):
        out = []
        for k in range(heads):
            if headwise:
                din = w_x.shape[1]
                xin = x[k * din:(k + 1) * din] @ w_x[k][:, g * d:(g + 1) * d]
            else:
                xin = x @ w_x[:, g * Hn + k * d:g * Hn + (k + 1) * d]
            out.append(xin + h[k * d:(k + 1) * d] @ r[k][:, g * d:(g + 1) * d])
        return np.concatenate(out) + b[g * Hn:(g + 1) * Hn]

    def step(state, x):
        h, c, n, m = state
        i_t, f_t, z_t, o_t = (gate_pre(g, x, h) for g in range(4))
        log_f = np.log(sigmoid(f_t)) if forget_gate == "sigmoid" else f_t
        m_new = np.where(n == 0, i_t, np.maximum(log_f + m, i_t))
        i = np.exp(i_t - m_new)
        f = np.where(n == 0, 0.0, np.exp(log_f + m - m_new))  # c = n = 0 there: f does not matter
        c_new = f * c + i * np.tanh(z_t)
        n_new = f * n + i
        return sigmoid(o_t) * c_new / n_new, c_new, n_new, m_new

    return step


CONFIGS = {
    "sigmoid": dict(num_heads=NH),
    "exponential+headwise": dict(num_heads=NH, forget_gate="exponential", headwise_input=True),
}


def _setup(name, dtype=jnp.float32, seed=0):
    opts = CONFIGS[name]
    cell = jlstm.slstm(H, param_dtype=dtype, **opts)
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    params = cell.init(k1, I)
    params = params._replace(b=jax.random.normal(k2, params.b.shape, dtype),
                             w_h=params.w_h * 1.5)
    xs = 1.5 * jax.random.normal(k3, (T, B, I), dtype)
    ks = jax.random.split(k4, 4)
    n0 = jnp.abs(jax.random.normal(ks[2], (B, H), dtype)) + 0.5
    n0 = n0.at[0, :2].set(0.0)  # two fresh units (n = 0, c = 0)
    c0 = jnp.where(n0 == 0, 0.0, jax.random.normal(ks[1], (B, H), dtype))
    state0 = jlstm.SLSTMState(h=jax.random.normal(ks[0], (B, H), dtype) * 0.5, c=c0, n=n0,
                              m=jax.random.normal(ks[3], (B, H), dtype))
    np_step = np_slstm_step(params, heads=opts["num_heads"], forget_gate=opts.get("forget_gate", "sigmoid"),
                            headwise=opts.get("headwise_input", False))
    return cell, params, xs, state0, np_step


def _np_state(state):
    return tuple(np.asarray(a, np.float64) for a in state)


@pytest.mark.parametrize("name", CONFIGS)
def test_scan_matches_numpy(name):
    cell, params, xs, state0, np_step = _setup(name)
    lengths = np.array([T, 5, 0])
    final, ys = scan(cell, params, xs, state0, lengths=jnp.asarray(lengths))
    want_final, want_ys = run(np_step, _np_state(state0), np.asarray(xs), lengths)
    np.testing.assert_allclose(ys, want_ys, atol=1e-5, rtol=1e-5)
    for field, want in zip(jlstm.SLSTMState._fields, want_final):
        np.testing.assert_allclose(getattr(final, field), want, atol=1e-5, rtol=1e-5, err_msg=field)


@pytest.mark.parametrize("name", ["sigmoid", "exponential+headwise"])
def test_step_matches_numpy_float64(name, x64):
    cell, params, xs, state0, np_step = _setup(name, jnp.float64)
    state, y = cell.step(params, state0, xs[0])
    for b in range(B):
        want = np_step(tuple(a[b] for a in _np_state(state0)), np.asarray(xs[0, b]))
        np.testing.assert_allclose(y[b], want[0], atol=1e-12, rtol=1e-12)
        for field, w in zip(jlstm.SLSTMState._fields, want):
            np.testing.assert_allclose(getattr(state, field)[b], w, atol=1e-12, rtol=1e-12, err_msg=field)


def test_block_diagonal_recurrence():
    """A head's gates read only that head's units: changing head 1's h leaves head 0 unchanged."""
    cell, params, xs, state0, _ = _setup("sigmoid")
    _, y0 = cell.step(params, state0, xs[0])
    _, y1 = cell.step(params, state0._replace(h=state0.h.at[:, D:].add(1.0)), xs[0])
    np.testing.assert_allclose(y1[:, :D], y0[:, :D], atol=0)
    assert not np.allclose(y1[:, D:], y0[:, D:])


def test_check_grads_order_1(x64):
    cell, params, xs, state0, _ = _setup("exponential+headwise", jnp.float64)
    xs, state0 = xs[:5, 1:], jax.tree.map(lambda a: a[1:], state0)

    def f(params, xs, h, c):
        final, ys = scan(cell, params, xs, state0._replace(h=h, c=c), lengths=jnp.array([5, 3]),
                               reverse=True)
        return ys, final.c

    check_grads(f, (params, xs, state0.h, state0.c), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("forget_gate", ["sigmoid", "exponential"])
def test_100k_steps_with_saturated_gates(forget_gate):
    """Gate pre-activations of ±50 for 100,000 steps: the stabiliser keeps everything finite."""
    n_steps = 100_000
    cell = jlstm.slstm(2, forget_gate=forget_gate)
    params = jlstm.SLSTMParams(w_x=jnp.eye(8), w_h=jnp.zeros((1, 2, 8)), b=jnp.zeros(8))
    xs = 50.0 * jnp.sign(jax.random.normal(jax.random.key(0), (n_steps, 1, 8)))
    final, ys = jax.jit(lambda xs: scan(cell, params, xs))(xs)
    assert bool(jnp.isfinite(ys).all()) and all(bool(jnp.isfinite(a).all()) for a in final)
    assert float(jnp.abs(ys).max()) <= 1.0 and float(final.n.min()) >= 1.0
    # an unstabilised run would hold exp(50 · t) in n; the stabilised one agrees with float64 NumPy
    head = 300
    _, want_ys = run(np_slstm_step(params, heads=1, forget_gate=forget_gate, headwise=False),
                     _np_state(cell.initial_state(params, 1)), np.asarray(xs[:head]))
    np.testing.assert_allclose(ys[:head], want_ys, atol=1e-5)
    with jax.enable_x64(True):
        _, ys64 = scan(jlstm.slstm(2, forget_gate=forget_gate, param_dtype=jnp.float64),
                             jax.tree.map(lambda a: a.astype(jnp.float64), params), xs.astype(jnp.float64))
    np.testing.assert_allclose(ys, ys64, atol=1e-5)


def test_jit_vmap_grad():
    cell, params, xs, state0, _ = _setup("sigmoid")
    f = jax.jit(lambda p, x, s: scan(cell, p, x, s))
    _, ys = f(params, xs, state0)
    per_seq = jax.vmap(lambda x, s: scan(cell, params, x, s)[1], in_axes=(1, 0), out_axes=1)(xs, state0)
    np.testing.assert_allclose(per_seq, ys, atol=1e-6)
    g = jax.grad(lambda p: f(p, xs, state0)[1].sum())(params)
    assert all(bool(jnp.isfinite(a).all()) for a in g)


def test_layers_streaming_and_checkpoint(tmp_path):
    cell, params, xs, state0, _ = _setup("exponential+headwise")
    lengths = jnp.array([T, 6, 1])
    # recurrent with remat and recurrent dropout (the recurrent matmul is per head)
    layer = jlstm.recurrent(cell, remat="segment", recurrent_dropout=0.3)
    apply = jax.jit(layer.apply)
    _, ys = apply(params, xs, lengths=lengths)
    np.testing.assert_allclose(ys, scan(cell, params, xs, lengths=lengths)[1], atol=1e-6)
    _, ys_drop = apply(params, xs, lengths=lengths, key=jax.random.key(1))
    assert not np.allclose(ys_drop, ys)
    # bidirectional and stack
    model = jlstm.stack(jlstm.bidirectional(cell), jlstm.recurrent(jlstm.slstm(4, num_heads=2)),
                        inter_layer_dropout=0.1)
    mp = model.init(jax.random.key(2), I)
    _, y_model = jax.jit(model.apply)(mp, xs, lengths=lengths, key=jax.random.key(3))
    bi_ys = jax.jit(jlstm.bidirectional(cell).apply)(mp[0], xs, lengths=lengths)[1]
    back = scan(cell, mp[0].backward, xs, lengths=lengths, reverse=True)[1]
    np.testing.assert_allclose(bi_ys[..., H:], back, atol=1e-6)
    assert y_model.shape == (T, B, 4)
    # streaming: chunks carrying the state equal one run
    step = jax.jit(jlstm.streaming.make_stream_step(cell))
    outs = list(jlstm.streaming.stream(step, params, [xs[:4], xs[4:5], xs[5:]], state0, lengths=lengths))
    final, ys_one = scan(cell, params, xs, state0, lengths=lengths)
    np.testing.assert_allclose(jnp.concatenate([o[1] for o in outs]), ys_one, atol=1e-6)
    for a, b in zip(outs[-1][0], final):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # checkpoint round trip
    path = tmp_path / "slstm.ckpt"
    jlstm.checkpoint.save(path, params)
    loaded, _ = jlstm.checkpoint.load(path, cell.init(jax.random.key(9), I))
    assert type(loaded) is jlstm.SLSTMParams
    for a, b in zip(loaded, params):
        np.testing.assert_array_equal(a, b)


def test_clear_errors():
    with pytest.raises(ValueError, match="not a multiple of num_heads=4"):
        jlstm.slstm(6, num_heads=4)
    with pytest.raises(ValueError, match="forget_gate"):
        jlstm.slstm(4, forget_gate="tanh")
    with pytest.raises(ValueError, match="input_size=5 is not a multiple of num_heads=2"):
        jlstm.slstm(4, num_heads=2, headwise_input=True).init(jax.random.key(0), 5)
    cell, params, xs, state0, _ = _setup("sigmoid")
    with pytest.raises(ValueError, match="method='parallel' is not supported.*'sequential'"):
        scan(cell, params, xs, method="parallel")
    with pytest.raises(ValueError, match="state.m has shape"):
        scan(cell, params, xs, state0._replace(m=jnp.zeros((B, H + 1))))
    with pytest.raises(ValueError, match="params.w_x has shape"):
        scan(jlstm.slstm(H, num_heads=NH, headwise_input=True), params, xs)
    assert cell == jlstm.slstm(H, num_heads=NH) and cell != jlstm.slstm(H, num_heads=1)

"""minGRU and minLSTM: a NumPy transcription, the parallel form against the step loop, long
sequences with saturated gates, every layer, and the reference package minGRU_pytorch."""


import episodes
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

H, I, B, T = 4, 3, 3, 23
CELLS = {"min_gru": (jlstm.min_gru, 2), "min_lstm": (jlstm.min_lstm, 3)}


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _g(v):
    return np.where(v >= 0, v + 0.5, sigmoid(v))


def np_min_gru_step(p):
    """h_t = (1 - z) h + z g(h̃), z = σ(x W_z + b_z), h̃ = x W_h + b_h (blocks h̃, z)."""
    w, b = np.asarray(p.w_x, np.float64), np.asarray(p.b, np.float64)
    W_h, W_z, b_h, b_z = w[:, :H], w[:, H:], b[:H], b[H:]

    def step(state, x):
        (h,) = state
        z = sigmoid(x @ W_z + b_z)
        return ((1.0 - z) * h + z * _g(x @ W_h + b_h),)

    return step


def np_min_lstm_step(p):
    """h_t = f/(f+i) h + i/(f+i) g(h̃) with f, i = σ(x W + b) (blocks h̃, f, i)."""
    w, b = np.asarray(p.w_x, np.float64), np.asarray(p.b, np.float64)
    W_h, W_f, W_i = w[:, :H], w[:, H:2 * H], w[:, 2 * H:]
    b_h, b_f, b_i = b[:H], b[H:2 * H], b[2 * H:]

    def step(state, x):
        (h,) = state
        f, i = sigmoid(x @ W_f + b_f), sigmoid(x @ W_i + b_i)
        return (f / (f + i) * h + i / (f + i) * _g(x @ W_h + b_h),)

    return step


NP_STEPS = {"min_gru": np_min_gru_step, "min_lstm": np_min_lstm_step}


def _setup(name, dtype=jnp.float32, seed=0):
    factory, k = CELLS[name]
    cell = factory(H, param_dtype=dtype)
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    params = cell.init(k1, I)
    params = params._replace(b=jax.random.normal(k2, params.b.shape, dtype))  # non-zero biases
    xs = 2.0 * jax.random.normal(k3, (T, B, I), dtype)
    h0 = type(cell.initial_state(params, B))(h=jax.random.normal(k4, (B, H), dtype))  # any sign
    return cell, params, xs, h0


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_scan_matches_numpy(name, method):
    cell, params, xs, h0 = _setup(name)
    lengths = np.array([T, 9, 0])
    final, ys = scan(cell, params, xs, h0, lengths=jnp.asarray(lengths), method=method)
    (want_h,), want_ys = run(NP_STEPS[name](params), (np.asarray(h0.h),), np.asarray(xs), lengths)
    np.testing.assert_allclose(ys, want_ys, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(final.h, want_h, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", CELLS)
def test_step_matches_numpy_float64(name, x64):
    cell, params, xs, h0 = _setup(name, jnp.float64)
    state, y = cell.step(params, h0, xs[0])
    (want,) = NP_STEPS[name](params)((np.asarray(h0.h),), np.asarray(xs[0]))
    np.testing.assert_allclose(y, want, atol=1e-13, rtol=1e-13)
    np.testing.assert_allclose(state.h, want, atol=1e-13, rtol=1e-13)


OPTIONS = {
    "lengths": dict(lengths=jnp.array([T, 11, 0])),
    "mask+reverse": dict(mask=jnp.asarray(np.random.default_rng(0).random((T, B)) < 0.7), reverse=True),
    "lengths+reverse+batch-major": dict(lengths=jnp.array([5, T, 17]), reverse=True, time_major=False),
}


@pytest.mark.parametrize("name,case", [("min_gru", "mask+reverse"), ("min_gru", "lengths+reverse+batch-major"),
                                       ("min_lstm", "mask+reverse"), ("min_lstm", "lengths")])
def test_parallel_matches_sequential_values_and_grads(name, case, x64):
    cell, params, xs, h0 = _setup(name, jnp.float64)
    opts = OPTIONS[case]
    if not opts.get("time_major", True):
        xs = jnp.swapaxes(xs, 0, 1)

    def loss(method, params, xs, h0):
        final, ys = scan(cell, params, xs, h0, method=method, **opts)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(final.h ** 3), (final, ys)

    grads = {}
    for method in ("sequential", "parallel"):
        g, aux = jax.grad(lambda *a: loss(method, *a), argnums=(0, 1, 2), has_aux=True)(params, xs, h0)
        grads[method] = (g, aux)
    (g_seq, (f_seq, y_seq)), (g_par, (f_par, y_par)) = grads["sequential"], grads["parallel"]
    np.testing.assert_allclose(y_par, y_seq, atol=1e-12, rtol=1e-10)
    np.testing.assert_allclose(f_par.h, f_seq.h, atol=1e-12, rtol=1e-10)
    for a, b in zip(jax.tree.leaves(g_par), jax.tree.leaves(g_seq)):
        np.testing.assert_allclose(a, b, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", CELLS)
def test_check_grads_order_1(name, x64):
    """Finite differences check the parallel form's gradients; the test above ties the loop's to them."""
    cell, params, xs, h0 = _setup(name, jnp.float64)
    xs = xs[:6, :2]
    h0 = type(h0)(h=h0.h[:2])

    def f(params, xs, h):
        final, ys = scan(cell, params, xs, type(h0)(h=h), lengths=jnp.array([6, 4]), method="parallel")
        return ys, final.h

    check_grads(f, (params, xs, h0.h), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", CELLS)
def test_100k_steps_with_saturated_gates(name):
    """Pre-activations of ±50 for 100,000 steps: no overflow, and both forms agree."""
    factory, k = CELLS[name]
    cell = factory(2)
    params = type(cell.init(jax.random.key(0), 2 * k))(w_x=jnp.eye(2 * k), b=jnp.zeros(2 * k))
    xs = 50.0 * jnp.sign(jax.random.normal(jax.random.key(1), (100_000, 2, 2 * k)))
    xs = xs.at[:, 1, :2].set(jnp.linspace(-60.0, 60.0, 100_000)[:, None])  # a candidate sweeping through g
    h0 = type(cell.initial_state(params, 2))(h=jnp.array([[-3.0, 2.0], [0.5, -1.0]]))
    f_par, y_par = scan(cell, params, xs, h0, method="parallel")
    f_seq, y_seq = scan(cell, params, xs, h0, method="sequential")
    assert bool(jnp.isfinite(y_par).all()) and bool(jnp.isfinite(y_seq).all())
    np.testing.assert_allclose(y_par, y_seq, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(f_par.h, f_seq.h, atol=1e-5, rtol=1e-5)
    # h is a convex combination of h0 and the g(h̃): it stays within their range.
    assert float(jnp.abs(y_seq).max()) <= 60.5 + 1e-3


def test_min_lstm_gates_below_sigmoid_underflow():
    """f, i = σ(-120) underflow to 0 in float32; the normalised gates f', i' stay finite."""
    cell = jlstm.min_lstm(1)
    params = jlstm.MinLSTMParams(w_x=jnp.eye(3), b=jnp.zeros(3))
    xs = jnp.array([[[1.0, -120.0, -121.0]], [[2.0, 0.0, 0.0]]])
    for method in ("sequential", "parallel"):
        _, ys = scan(cell, params, xs, method=method)
        i_norm = 1.0 / (1.0 + np.exp(1.0))  # i/(f+i) with log(i/f) = -1
        np.testing.assert_allclose(ys[0, 0, 0], i_norm * 1.5, rtol=1e-5)
        assert bool(jnp.isfinite(ys).all())


@pytest.mark.parametrize("name", CELLS)
def test_jit_vmap_and_auto(name):
    cell, params, xs, h0 = _setup(name)
    f = jax.jit(lambda p, x, h: scan(cell, p, x, h, method="parallel"))
    final, ys = f(params, xs, h0)
    # vmap over the batch axis of unbatched sequences gives the batched result
    per_seq = jax.vmap(lambda x, h: scan(cell, params, x, type(h0)(h=h), method="parallel")[1],
                       in_axes=(1, 0), out_axes=1)(xs, h0.h)
    np.testing.assert_allclose(per_seq, ys, atol=1e-6)
    step_v = jax.vmap(cell.step, in_axes=(None, 0, 0))(params, h0, xs[0])
    np.testing.assert_allclose(step_v[1], cell.step(params, h0, xs[0])[1], atol=1e-6)
    _, ys_auto, info = scan(cell, params, xs, h0, return_info=True)
    assert info is None
    np.testing.assert_allclose(ys_auto, ys, atol=1e-5)
    assert cell.fast.auto_method(10_000) == ("sequential" if jax.default_backend() == "cpu" else "parallel")


def test_layers():
    """recurrent (remat), bidirectional and stack with dropout; min_lstm shares min_gru's code path."""
    name = "min_gru"
    cell, params, xs, h0 = _setup(name)
    lengths = jnp.array([T, 9, 1])
    # recurrent layer = scan; remat keeps the values
    layer = jlstm.recurrent(cell, method="parallel", remat="step")
    _, ys = jax.jit(layer.apply)(params, xs, lengths=lengths)
    np.testing.assert_allclose(ys, scan(cell, params, xs, lengths=lengths)[1], atol=1e-5)
    g1 = jax.jit(jax.grad(lambda p: layer.apply(p, xs, lengths=lengths)[1].sum()))(params)
    g2 = jax.grad(lambda p: scan(cell, p, xs, lengths=lengths, method="sequential")[1].sum())(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    # bidirectional: the backward half is the reversed scan
    bi = jlstm.bidirectional(cell, method="parallel")
    bp = bi.init(jax.random.key(3), I)
    _, ys_bi = jax.jit(bi.apply)(bp, xs, lengths=lengths)
    back = scan(cell, bp.backward, xs, lengths=lengths, reverse=True, method="sequential")[1]
    np.testing.assert_allclose(ys_bi[..., H:], back, atol=1e-5)
    # stack with dropout between layers (a key switches it on)
    model = jlstm.stack(jlstm.recurrent(cell), jlstm.recurrent(CELLS[name][0](2)),
                        inter_layer_dropout=0.5)
    mp = model.init(jax.random.key(4), I)
    apply = jax.jit(model.apply)
    _, y_det = apply(mp, xs, lengths=lengths)
    _, y_drop = apply(mp, xs, lengths=lengths, key=jax.random.key(5))
    assert y_det.shape == y_drop.shape == (T, B, 2) and not np.allclose(y_det, y_drop)


@pytest.mark.parametrize("name", CELLS)
def test_streaming_and_checkpoint(name, tmp_path):
    cell, params, xs, h0 = _setup(name)
    lengths = jnp.array([T, 9, 1])
    # streaming: chunks carrying the state give one run's outputs and final state
    step = jax.jit(jlstm.streaming.make_stream_step(cell, method="parallel"))
    chunks = [xs[:7], xs[7:8], xs[8:]]
    outs = list(jlstm.streaming.stream(step, params, chunks, h0, lengths=lengths))
    final, ys_one = scan(cell, params, xs, h0, lengths=lengths)
    np.testing.assert_allclose(jnp.concatenate([o[1] for o in outs]), ys_one, atol=1e-5)
    np.testing.assert_allclose(outs[-1][0].h, final.h, atol=1e-5)
    # checkpoint round trip
    path = tmp_path / "p.ckpt"
    jlstm.checkpoint.save(path, params)
    loaded, _ = jlstm.checkpoint.load(path, cell.init(jax.random.key(9), I))
    assert type(loaded) is type(params)
    for a, b in zip(loaded, params):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", CELLS)
def test_clear_errors(name):
    cell, params, xs, h0 = _setup(name)
    layer = jlstm.recurrent(cell, recurrent_dropout=0.2, method="sequential")
    with pytest.raises(ValueError, match="no recurrent matmul.*input_dropout or zoneout"):
        layer.apply(params, xs, key=jax.random.key(0))
    with pytest.raises(ValueError, match="need method='sequential'"):
        jlstm.recurrent(cell, zoneout=0.1, method="parallel").apply(params, xs, key=jax.random.key(0))
    with pytest.raises(ValueError, match="'parallel'"):
        scan(cell, params, xs, method="chunkwise")
    with pytest.raises(ValueError, match="input_size=3"):
        cell.step(params, h0, jnp.ones((B, I + 1)))
    with pytest.raises(ValueError, match="state.h has shape"):
        scan(cell, params, xs, type(h0)(h=jnp.zeros((B, H + 1))), method="parallel")
    assert cell == CELLS[name][0](H) and hash(cell) == hash(CELLS[name][0](H)) and cell != CELLS[name][0](H + 1)


@pytest.mark.parametrize("name", CELLS)
def test_matches_minGRU_pytorch(name):
    """The reference modules (log-space parallel form, and its one-step form) on shared weights."""
    torch = pytest.importorskip("torch")
    minGRU_pytorch = pytest.importorskip("minGRU_pytorch")  # in the dev extra
    factory, k = CELLS[name]
    torch.manual_seed(0)
    from minGRU_pytorch.minLSTM import minLSTM

    ref = (minGRU_pytorch.minGRU(I) if name == "min_gru" else minLSTM(I)).double()
    W = ref.to_hidden_and_gate.weight if name == "min_gru" else ref.to_hidden_and_f_i_gate.weight
    cell = factory(I, param_dtype=jnp.float64)
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    with jax.enable_x64(True):
        params = type(cell.init(jax.random.key(0), I))(w_x=jnp.asarray(W.detach().numpy().T),
                                                        b=jnp.zeros(k * I, jnp.float64))
        xs = jnp.asarray(x.detach().numpy().transpose(1, 0, 2))
        final, ys = scan(cell, params, xs, method="parallel")
        gx, gw = jax.grad(lambda xs, p: jnp.sum(jnp.sin(scan(cell, p, xs, method="sequential")[1])),
                          argnums=(0, 1))(xs, params)
    out = ref(x)  # parallel (log space) from h0 = 0
    torch.sin(out).sum().backward()
    np.testing.assert_allclose(ys, out.detach().numpy().transpose(1, 0, 2), atol=1e-10, rtol=1e-8)
    np.testing.assert_allclose(gx, x.grad.numpy().transpose(1, 0, 2), atol=1e-9, rtol=1e-7)
    np.testing.assert_allclose(gw.w_x, W.grad.numpy().T, atol=1e-9, rtol=1e-7)
    # the reference's one-step form from a positive state
    h = torch.rand(B, 1, I, dtype=torch.float64) + 0.1
    with torch.no_grad():
        out1 = ref(x[:, :1].detach(), prev_hidden=h)
    with jax.enable_x64(True):
        _, y1 = cell.step(params, type(final)(h=jnp.asarray(h.numpy()[:, 0])), xs[0])
    np.testing.assert_allclose(y1, out1.numpy()[:, 0], atol=1e-12)


@pytest.mark.parametrize("name", CELLS)
def test_parallel_form_with_resets_equals_episodes_alone(name):
    """Resets at step 0, on consecutive steps and at random ones; the state argument is not zero, so
    a reset must start from the cell's initial state (zeros), not from it."""
    cell, params, xs, h0 = _setup(name)
    resets = episodes.random_resets(np.random.default_rng(1), T, B, p=0.15,
                                    at=((0, 1), (5, 0), (6, 0), (T - 1, 2)))
    mask = np.random.default_rng(2).uniform(size=(T, B)) > 0.2
    # minGRU with a mask, minLSTM with lengths and reverse (the form's code is shared: linear_form)
    ragged = ({"mask": jnp.asarray(mask)} if name == "min_gru"
              else {"lengths": jnp.array([T, 9, 14]), "reverse": True})
    episodes.check_scan_against_episodes(cell, params, xs, resets, ("parallel",), state=h0, **ragged)

"""jlstm.mlstm and jlstm.mlstm_core against a NumPy transcription of the paper's equations.

The three forms (sequential loop over ``step``, parallel, chunkwise) must agree in values,
final states and gradients, with lengths, masks and reverse; and the layers, streaming and
checkpoints must work with the cell.
"""

import functools
import math

import episodes
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jlstm
from jlstm import checkpoint, streaming

FORMS = ("sequential", "parallel", "chunkwise")
core = jax.jit(jlstm.mlstm_core, static_argnames=("method", "chunk_size", "eps", "return_state", "unroll"))
T, B, I, H, NH = 11, 2, 3, 8, 2


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_mlstm_sequence(w_x, b_x, xs, num_heads, eps=1e-6):
    """Paper equations, one batch row, one head and one step at a time (float64)."""
    w_x, b_x, xs = (np.asarray(a, np.float64) for a in (w_x, b_x, xs))
    Tn, Bn, _ = xs.shape
    Hn = (w_x.shape[1] - 2 * num_heads) // 4
    d = Hn // num_heads
    ys = np.zeros((Tn, Bn, Hn))
    C = np.zeros((Bn, num_heads, d, d))
    n = np.zeros((Bn, num_heads, d))
    m = np.full((Bn, num_heads), -np.inf)
    for b in range(Bn):
        for t in range(Tn):
            p = xs[t, b] @ w_x + b_x
            for h in range(num_heads):
                sl = slice(h * d, (h + 1) * d)
                q, k, v, o = (p[j * Hn:(j + 1) * Hn][sl] for j in range(4))
                i_pre, f_pre = p[4 * Hn + h], p[4 * Hn + num_heads + h]
                k = k / math.sqrt(d)
                log_f = _np_log_sigmoid(f_pre)
                m_new = max(log_f + m[b, h], i_pre)
                f_gate = math.exp(log_f + m[b, h] - m_new)
                i_gate = math.exp(i_pre - m_new)
                C[b, h] = f_gate * C[b, h] + i_gate * np.outer(k, v)
                n[b, h] = f_gate * n[b, h] + i_gate * k
                m[b, h] = m_new
                denom = max(abs(q @ n[b, h]), math.exp(-m_new)) + eps
                ys[t, b, sl] = (1.0 / (1.0 + np.exp(-o))) * (q @ C[b, h]) / denom
    return ys, (C, n, m)


def np_core_parallel(q, k, v, i_pre, f_pre, eps=1e-6):
    """The decay-masked matrix form for one sequence and head: q, k, v [T, d], gates [T]."""
    Tn, d = q.shape
    F = np.concatenate([[0.0], np.cumsum(_np_log_sigmoid(f_pre))])
    log_d = np.full((Tn, Tn), -np.inf)
    for t in range(Tn):
        for s in range(t + 1):
            log_d[t, s] = F[t + 1] - F[s + 1] + i_pre[s]
    mx = log_d.max(axis=1, keepdims=True)
    c = (q @ k.T / math.sqrt(d)) * np.exp(log_d - mx)
    norm = np.maximum(np.abs(c.sum(axis=1, keepdims=True)), np.exp(-mx))
    return (c / (norm + eps)) @ v


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _data(dtype, seed=0, heads=NH, hidden=H):
    cell = jlstm.mlstm(hidden, num_heads=heads, chunk_size=4)
    rng = np.random.default_rng(seed)
    p = cell.init(jax.random.key(seed), I)
    p = jlstm.MLSTMParams(jnp.asarray(rng.normal(0, 0.7, p.w_x.shape), dtype),
                          jnp.asarray(rng.normal(0, 1.0, p.b_x.shape), dtype))
    xs = jnp.asarray(rng.normal(size=(T, B, I)), dtype)
    return cell, p, xs


def test_step_matches_numpy_transcription():
    cell, p, xs = _data(jnp.float32)
    state = cell.initial_state(p, B)
    step = jax.jit(cell.step)
    ys = []
    for t in range(T):
        state, y = step(p, state, xs[t])
        ys.append(y)
    want, (C, n, m) = np_mlstm_sequence(p.w_x, p.b_x, xs, NH)
    np.testing.assert_allclose(np.stack(ys), want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(state.c, C, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(state.n, n, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(state.m, m, atol=1e-5, rtol=1e-5)


def test_core_parallel_matches_numpy_matrix_form(x64):
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 9, 1, 4))
    i_pre, f_pre = rng.normal(0, 3, size=(2, 9, 1))
    for method in FORMS:
        h = core(*(jnp.asarray(a) for a in (q, k, v, i_pre, f_pre)), method=method, chunk_size=4)
        np.testing.assert_allclose(h[:, 0], np_core_parallel(q[:, 0], k[:, 0], v[:, 0], i_pre[:, 0], f_pre[:, 0]),
                                   atol=1e-12, rtol=1e-10)


def _ragged():
    lengths = jnp.array([T, 6])
    mask = jnp.asarray(np.random.default_rng(5).uniform(size=(T, B)) > 0.3)
    return lengths, mask


@jax.jit
def _run_all(p, xs, lengths, mask):
    """Every form with lengths, a mask and reverse at once, plus value-and-grad of a scalar loss."""
    cell = jlstm.mlstm(H, num_heads=NH, chunk_size=4)
    w = jnp.cos(jnp.arange(T * B * H).reshape(T, B, H))
    out = {}
    for method in FORMS:
        def loss(p, xs, method=method):
            s, ys = jlstm.scan(cell, p, xs, lengths=lengths, mask=mask, reverse=True, method=method)
            return jnp.sum(ys * w) + jnp.sum(s.n) + jnp.sum(jnp.tanh(s.c)), (s, ys)

        (_, aux), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, xs)
        out[method] = (aux, grads)
    return out


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-10)])
def test_forms_agree_values_states_grads(dtype, tol):
    with jax.enable_x64(dtype == jnp.float64):
        cell, p, xs = _data(dtype)
        lengths, mask = _ragged()
        out = _run_all(p, xs, lengths, mask)
        ref = out["sequential"]
        for method in ("parallel", "chunkwise"):
            for a, b in zip(jax.tree.leaves(out[method]), jax.tree.leaves(ref)):
                assert a.dtype == b.dtype
                np.testing.assert_allclose(a, b, atol=tol, rtol=tol, err_msg=method)
        # past each length the outputs are zero and the gradients with respect to xs too
        (s, ys), (_, gx) = out["chunkwise"]
        assert not np.any(np.asarray(ys[6:, 1])) and not np.any(np.asarray(gx[6:, 1]))
        assert np.any(np.asarray(gx[:6, 1]))


def test_step_matches_numpy_with_reverse_lengths(x64):
    cell, p, xs = _data(jnp.float64)
    run = jax.jit(lambda p, xs, n: jlstm.scan(cell, p, xs, lengths=n, reverse=True, method="chunkwise"))
    _, ys = run(p, xs, jnp.array([T, 6]))
    for b, L in enumerate((T, 6)):
        want, _ = np_mlstm_sequence(p.w_x, p.b_x, xs[:L, b:b + 1][::-1], NH)
        np.testing.assert_allclose(ys[:L, b], want[::-1, 0], atol=1e-12, rtol=1e-10)


def test_check_grads_order_1(x64):
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(a) for a in rng.normal(size=(3, 5, 1, 2, 2)))
    i_pre, f_pre = (jnp.asarray(a) for a in rng.normal(0, 2, size=(2, 5, 1, 2)))
    valid = jnp.array([[True], [True], [False], [True], [True]])
    for method in FORMS:
        @jax.jit
        def f(q, k, v, i_pre, f_pre, method=method):
            return jlstm.mlstm_core(q, k, v, i_pre, f_pre, method=method, chunk_size=2, valid=valid)

        check_grads(f, (q, k, v, i_pre, f_pre), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@jax.jit
def _halves_and_padding(q, k, v, i_pre, f_pre, valid):
    """Per form: a run split in two halves (state carried) and a run with NaN in the padding."""
    nan_q = jnp.where(valid[..., None, None], q, jnp.nan)
    out = {}
    for method in FORMS:
        h1, s1 = jlstm.mlstm_core(q[:4], k[:4], v[:4], i_pre[:4], f_pre[:4], method=method, return_state=True)
        h2, s2 = jlstm.mlstm_core(q[4:], k[4:], v[4:], i_pre[4:], f_pre[4:], method=method, chunk_size=4,
                                  state=s1, return_state=True)

        def padded(q, method=method):
            h, s = jlstm.mlstm_core(q, k, v, i_pre, f_pre, method=method, chunk_size=4, valid=valid,
                                    return_state=True)
            return jnp.sum(h) + jnp.sum(s.c), (h, s)

        g, (h, s) = jax.grad(padded, has_aux=True)(nan_q)
        out[method] = (jnp.concatenate([h1, h2]), s2, h, s, g)
    return out


def test_core_initial_state_and_padding_nan(x64):
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(a) for a in rng.normal(size=(3, 10, 2, 2, 3)))
    i_pre, f_pre = (jnp.asarray(a) for a in rng.normal(0, 3, size=(2, 10, 2, 2)))
    valid = jnp.arange(10)[:, None] < jnp.array([10, 7])
    full, s_full = core(q, k, v, i_pre, f_pre, method="sequential", return_state=True)
    short, s_short = core(q[:7, 1:], k[:7, 1:], v[:7, 1:], i_pre[:7, 1:], f_pre[:7, 1:], method="sequential",
                          return_state=True)
    for method, (h_split, s_split, h_pad, s_pad, g) in _halves_and_padding(q, k, v, i_pre, f_pre, valid).items():
        # streaming: the second half started from the first half's final state equals one run
        np.testing.assert_allclose(h_split, full, atol=1e-12, rtol=1e-10, err_msg=method)
        for a, b in zip(s_split, s_full):
            np.testing.assert_allclose(a, b, atol=1e-12, rtol=1e-10, err_msg=method)
        # NaN in the padding changes neither values nor gradients
        np.testing.assert_allclose(h_pad[:7, 1:], short, atol=1e-12, rtol=1e-10, err_msg=method)
        assert not np.any(np.asarray(h_pad[7:, 1]))
        for a, b in zip(s_pad, s_full):
            np.testing.assert_allclose(a[0], b[0], atol=1e-12, rtol=1e-10, err_msg=method)
        for a, b in zip(s_pad, s_short):
            np.testing.assert_allclose(a[1:], b, atol=1e-12, rtol=1e-10, err_msg=method)
        assert np.all(np.isfinite(g)) and not np.any(np.asarray(g)[7:, 1])


@jax.jit
def _long(i_pre, f_pre, q):
    k = v = q
    return [jlstm.mlstm_core(q, k, v, i_pre, f_pre, method=m, return_state=True)
            for m in ("chunkwise", "sequential")]


def test_long_sequence_large_gates_no_overflow():
    T_long = 100_000
    rng = np.random.default_rng(0)
    i_pre = jnp.asarray(rng.uniform(-50, 50, (T_long, 1)), jnp.float32)
    f_pre = jnp.asarray(rng.uniform(-50, 50, (T_long, 1)), jnp.float32)
    q = jnp.asarray(np.abs(rng.normal(size=(T_long, 1, 2))), jnp.float32)  # q.n > 0: well conditioned
    (h_c, s_c), (h_s, s_s) = _long(i_pre, f_pre, q)
    for a in (h_c, h_s, *s_c, *s_s):
        assert np.all(np.isfinite(a))
    np.testing.assert_allclose(h_c, h_s, atol=1e-4, rtol=1e-4)
    # the stabiliser tracks the gates: m_T = max(log σ(f̃_T) + m_(T-1), ĩ_T) >= ĩ_T
    assert float(s_c.m[0]) >= float(i_pre[-1, 0]) and abs(float(s_c.m[0])) < 100


def test_jit_vmap_and_auto():
    cell, p, xs = _data(jnp.float32)

    @jax.jit
    def forms(p, xs):
        seq = jlstm.scan(cell, p, xs, method="sequential")[1]
        auto = jlstm.scan(cell, p, xs)[1]  # parallel at this T
        per_row = jax.vmap(lambda x: jlstm.scan(cell, p, x, method="chunkwise")[1], in_axes=1, out_axes=1)(xs)
        batch_major = jlstm.scan(cell, p, jnp.moveaxis(xs, 0, 1), time_major=False, method="parallel")[1]
        return seq, auto, per_row, jnp.moveaxis(batch_major, 1, 0)

    seq, *others = forms(p, xs)
    for ys in others:
        np.testing.assert_allclose(ys, seq, atol=1e-5, rtol=1e-5)
    assert cell.fast.auto_method(64) == "parallel" and cell.fast.auto_method(65) == "chunkwise"


def test_layers_streaming_checkpoint(tmp_path):
    cell, p, xs = _data(jnp.float32)
    lengths = jnp.array([T, 6])
    bi = jlstm.bidirectional(cell, method="parallel")
    st = jlstm.stack(jlstm.recurrent(cell), jlstm.recurrent(jlstm.mlstm(4, num_heads=2)))
    bp, sp = bi.init(jax.random.key(1), I), st.init(jax.random.key(2), I)

    @jax.jit
    def layers(p, bp, sp, xs):
        ref = jlstm.scan(cell, p, xs, lengths=lengths, method="sequential")[1]
        layer = jlstm.recurrent(cell, method="chunkwise").apply(p, xs, lengths=lengths)[1]
        back = jlstm.scan(cell, bp.backward, xs, lengths=lengths, reverse=True, method="sequential")[1]
        return ref, layer, back, bi.apply(bp, xs, lengths=lengths)[1], st.apply(sp, xs, lengths=lengths)[1]

    ref, layer, back, ys_bi, ys_st = layers(p, bp, sp, xs)
    np.testing.assert_allclose(layer, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ys_bi[..., H:], back, atol=1e-5, rtol=1e-5)
    assert ys_st.shape == (T, B, 4) and np.all(np.isfinite(ys_st)) and not np.any(np.asarray(ys_st[6:, 1]))
    # streaming: chunks carry the state, same outputs as one run
    step = jax.jit(streaming.make_stream_step(cell, method="parallel"))
    outs = [ys for _, ys in streaming.stream(step, p, [xs[:4], xs[4:8], xs[8:]], lengths=lengths)]
    np.testing.assert_allclose(jnp.concatenate(outs), ref, atol=1e-5, rtol=1e-5)
    # checkpoint: params and a mid-stream state round-trip bit-exactly
    state, _ = step(p, None, xs[:4])
    tree = {"params": p, "state": state}
    checkpoint.save(tmp_path / "m.ckpt", tree)
    back_tree, _ = checkpoint.load(tmp_path / "m.ckpt", tree)
    for a, b in zip(jax.tree.leaves(back_tree), jax.tree.leaves(tree)):
        np.testing.assert_array_equal(a, b)


def test_equal_configs_and_clear_errors():
    assert jlstm.mlstm(8, num_heads=2) == jlstm.mlstm(8, num_heads=2)
    assert hash(jlstm.mlstm(8, num_heads=2)) == hash(jlstm.mlstm(8, num_heads=2))
    assert jlstm.mlstm(8, num_heads=2) != jlstm.mlstm(8, num_heads=4)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        jlstm.mlstm(10, num_heads=4)
    cell, p, xs = _data(jnp.float32)
    with pytest.raises(ValueError, match="'chunkwise'"):
        jlstm.scan(cell, p, xs, method="associative")
    with pytest.raises(ValueError, match="recurrent dropout"):
        jlstm.recurrent(cell, recurrent_dropout=0.5).apply(p, xs, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"state.c has shape"):
        jlstm.scan(cell, p, xs, cell.initial_state(p, 3))
    with pytest.raises(ValueError, match="input_size=3"):
        cell.step(p, cell.initial_state(p, B), xs[0, :, :2])
    q = jnp.ones((4, 2, 3))
    with pytest.raises(ValueError, match=r"i_pre has shape \(4, 2, 1\), expected \(4, 2\)"):
        jlstm.mlstm_core(q, q, q, jnp.ones((4, 2, 1)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="method='fast'"):
        jlstm.mlstm_core(q, q, q, jnp.ones((4, 2)), jnp.ones((4, 2)), method="fast")


# --------------------------------------------------------------------------------------------
# Resets inside a sequence: every form against each episode run alone (tests/episodes.py)

RT = 12
# resets on the borders of chunks of 4 (4, 8) and of 5 (5, 10), inside chunks (6, 11), at step 0, and on
# consecutive steps
RESETS = episodes.random_resets(np.random.default_rng(7), RT, 3, p=0.1,
                                at=((4, 0), (8, 0), (6, 1), (0, 1), (10, 1), (11, 1), (5, 2), (10, 2)))
# a chunk size that divides T and one that does not; "sequential" (the step loop) is the scan's own, and
# mlstm_core's sequential form is checked below
RESET_METHODS = ("parallel", jlstm.Chunkwise(chunk_size=4), jlstm.Chunkwise(chunk_size=5))


def _reset_data(seed=11):
    cell, p, _ = _data(jnp.float32, seed=seed)
    xs = jnp.asarray(np.random.default_rng(seed).normal(size=(RT, 3, I)), jnp.float32)
    s0 = cell.initial_state(p, 3)
    s0 = jlstm.MLSTMState(s0.c + 0.3, s0.n + 0.2, jnp.zeros_like(s0.m))  # not the zero state: resets ignore it
    return cell, p, xs, s0


def test_resets_every_form_equals_episodes_alone_with_lengths():
    cell, p, xs, s0 = _reset_data()
    episodes.check_scan_against_episodes(cell, p, xs, RESETS, RESET_METHODS, state=s0,
                                         lengths=jnp.array([RT, 9, 11]))


def test_resets_with_mask_and_with_reverse():
    cell, p, xs, s0 = _reset_data(12)
    mask = np.random.default_rng(3).uniform(size=(RT, 3)) > 0.25
    episodes.check_scan_against_episodes(cell, p, xs, RESETS, ("parallel",), state=s0, mask=jnp.asarray(mask))
    episodes.check_scan_against_episodes(cell, p, xs, RESETS, (jlstm.Chunkwise(chunk_size=5),), state=s0,
                                         lengths=jnp.array([RT, 9, 11]), reverse=True)


def test_core_resets_equal_episodes_alone_at_saturated_gates():
    """mlstm_core with resets, each method, against the NumPy matrix form run on each episode alone,
    with forget gates at ±30 and input gates up to 20: exact cuts, finite gradients."""
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(a, jnp.float32) for a in rng.normal(size=(3, RT, 2, NH, 4)))
    i_pre = jnp.asarray(rng.uniform(-5, 20, size=(RT, 2, NH)), jnp.float32)
    f_pre = jnp.asarray(rng.choice([-30.0, 30.0, 0.5], size=(RT, 2, NH)), jnp.float32)
    resets = jnp.asarray(RESETS[:, :2])
    want = np.zeros(q.shape)
    for b, h in np.ndindex(2, NH):
        for ep in episodes.episodes_of(RESETS[:, b], np.ones(RT, bool)):
            sl = slice(ep[0], ep[-1] + 1)
            args = (np.asarray(a[sl, b, h], np.float64) for a in (q, k, v, i_pre, f_pre))
            want[sl, b, h] = np_core_parallel(*args)
    for method, size in (("parallel", 64), ("chunkwise", 4), ("chunkwise", 5), ("sequential", 64)):
        run = functools.partial(core, method=method, chunk_size=size, resets=resets)
        np.testing.assert_allclose(run(q, k, v, i_pre, f_pre), want, atol=2e-5, rtol=2e-5, err_msg=method)
        grads = jax.grad(lambda *a: jnp.sum(jnp.sin(run(*a))), argnums=(0, 3, 4))(q, k, v, i_pre, f_pre)
        assert all(bool(jnp.isfinite(g).all()) for g in grads), method


def test_core_resets_errors():
    q = jnp.ones((4, 2, 1, 3))
    g = jnp.ones((4, 2, 1))
    with pytest.raises(ValueError, match=r"resets must be a bool array of shape \(4, 2\)"):
        jlstm.mlstm_core(q, q, q, g, g, resets=jnp.zeros((4, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"resets must be a bool array of shape \(4, 2\)"):
        jlstm.mlstm_core(q, q, q, g, g, resets=jnp.zeros((4,), bool))

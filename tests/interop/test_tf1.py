"""jlstm <-> TF1 LSTMCell and GRUCell checkpoints, against NumPy transcriptions of TF1's steps.

TensorFlow is not a test dependency (a multi-GB install for one converter); the reference below is
written from the equations of ``LSTMCell.call`` in ``tensorflow/python/ops/rnn_cell_impl.py``: gate
blocks i, j, f, o of ``concat[x, m] kernel + bias``, ``forget_bias`` added to f at run time, the i and
f peepholes reading ``c_{t-1}`` and the o peephole the new (clipped) ``c_t``, then the projection; and
from ``GRUCell.call``: ``[r | u] = σ(concat[x, h] gates/kernel + gates/bias)``, the candidate
``tanh(concat[x, r ⊙ h] candidate/kernel + candidate/bias)``, ``h_t = u ⊙ h + (1 - u) ⊙ candidate``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm import interop

T, B, I, H = 7, 3, 4, 5


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _tf1_run(v, scope, xs, c0, m0, *, forget_bias, cell_clip=None):
    """TF1's LSTMCell over time, in float64: outputs m_t and the final LSTMStateTuple (c, m)."""
    kernel, bias = v[f"{scope}/kernel"], v[f"{scope}/bias"]
    peep = f"{scope}/w_f_diag" in v
    proj = v.get(f"{scope}/projection/kernel")
    c, m, outs = c0, m0, []
    for x in xs:
        i, j, f, o = np.split(np.concatenate([x, m], axis=1) @ kernel + bias, 4, axis=1)
        if peep:
            c = (_sigmoid(f + forget_bias + v[f"{scope}/w_f_diag"] * c) * c
                 + _sigmoid(i + v[f"{scope}/w_i_diag"] * c) * np.tanh(j))
        else:
            c = _sigmoid(f + forget_bias) * c + _sigmoid(i) * np.tanh(j)
        if cell_clip is not None:
            c = np.clip(c, -cell_clip, cell_clip)
        m = (_sigmoid(o + v[f"{scope}/w_o_diag"] * c) if peep else _sigmoid(o)) * np.tanh(c)
        if proj is not None:
            m = m @ proj
        outs.append(m)
    return np.stack(outs), (c, m)


def _variables(scope, rng, *, peepholes=False, num_proj=None, extra=(), inputs=I):
    R = num_proj or H
    v = {f"{scope}/kernel": rng.uniform(-0.6, 0.6, (inputs + R, 4 * H)),
         f"{scope}/bias": rng.uniform(-0.6, 0.6, 4 * H)}
    if peepholes:
        v.update({f"{scope}/w_{g}_diag": rng.uniform(-0.6, 0.6, H) for g in "ifo"})
    if num_proj:
        v[f"{scope}/projection/kernel"] = rng.uniform(-0.6, 0.6, (H, num_proj))
    for name in extra:                                      # optimizer slots and other layers' variables
        v[name] = rng.uniform(-1, 1, 3)
    return {k: np.asarray(a, np.float32) for k, a in v.items()}


CASES = {
    "basic": dict(peepholes=False, num_proj=None, forget_bias=1.0, cell_clip=None),
    "peepholes_clip_projection": dict(peepholes=True, num_proj=3, forget_bias=0.5, cell_clip=0.8),
    "peepholes_zero_forget_bias": dict(peepholes=True, num_proj=None, forget_bias=0.0, cell_clip=None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lstm_cell_checkpoint_matches_tf1(case):
    opts = CASES[case]
    rng = np.random.default_rng(0)
    scope = "rnn/lstm_cell"
    v = _variables(scope, rng, peepholes=opts["peepholes"], num_proj=opts["num_proj"],
                   extra=(f"{scope}/kernel/Adam", f"{scope}/kernel/Adam_1", "global_step"))
    v["dense/kernel"] = rng.uniform(-1, 1, (H, 8)).astype(np.float32)    # a read-out layer, shaped like a cell
    v["dense/bias"] = np.zeros(8, np.float32)
    cell, params = interop.from_tf1_lstm({k + ":0": a for k, a in v.items()}, forget_bias=opts["forget_bias"],
                                         cell_clip=opts["cell_clip"])
    R = opts["num_proj"] or H
    assert cell == jlstm.lstm(H, peephole="diagonal" if opts["peepholes"] else None, proj_size=opts["num_proj"],
                              cell_clip=opts["cell_clip"])
    xs = rng.standard_normal((T, B, I)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32)
    m0 = rng.standard_normal((B, R)).astype(np.float32)
    want, (c_w, m_w) = _tf1_run({k: a.astype(np.float64) for k, a in v.items()}, scope, xs.astype(np.float64),
                                c0.astype(np.float64), m0.astype(np.float64), forget_bias=opts["forget_bias"],
                                cell_clip=opts["cell_clip"])
    final, ys = jax.jit(jlstm.scan, static_argnums=0)(cell, params, jnp.asarray(xs), jlstm.LSTMState(m0, c0))
    np.testing.assert_allclose(ys, want, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(final.h, m_w, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(final.c, c_w, atol=2e-5, rtol=2e-5)
    back = interop.to_tf1_lstm(params, forget_bias=opts["forget_bias"])       # and back to TF1's variables
    assert set(back) == {k for k in v if k.startswith(scope) and "Adam" not in k}
    for name, a in back.items():
        np.testing.assert_allclose(a, v[name], rtol=0, atol=1e-6)


def test_multi_rnn_cell_needs_a_scope_and_old_names_convert():
    rng = np.random.default_rng(1)
    cells = ["rnn/multi_rnn_cell/cell_0/lstm_cell", "rnn/multi_rnn_cell/cell_1/lstm_cell"]
    v = {**_variables(cells[0], rng), **_variables(cells[1], rng, inputs=H)}    # cell 1 reads cell 0's h
    with pytest.raises(ValueError, match="several cells.*scope="):
        interop.from_tf1_lstm(v)
    with pytest.raises(ValueError, match="no LSTM cell under scope='rnn/lstm_cell'"):
        interop.from_tf1_lstm(v, scope="rnn/lstm_cell")
    _, p1 = interop.from_tf1_lstm(v, scope=cells[1] + "/")
    old = {"rnn/basic_lstm_cell/weights": v[cells[1] + "/kernel"],
           "rnn/basic_lstm_cell/biases": v[cells[1] + "/bias"]}
    _, p_old = interop.from_tf1_lstm(old)                   # TensorFlow before 1.2 named them weights and biases
    for a, b in zip(p1, p_old):
        assert (a is None and b is None) or np.array_equal(a, b)
    # The two cells stacked, as MultiRNNCell runs them.
    xs = rng.standard_normal((T, B, I)).astype(np.float32)
    zeros = np.zeros((B, H), np.float32)
    mid, _ = _tf1_run(v, cells[0], xs, zeros, zeros, forget_bias=1.0)
    want, _ = _tf1_run(v, cells[1], mid.astype(np.float32), zeros, zeros, forget_bias=1.0)
    cell, p0 = interop.from_tf1_lstm(v, scope=cells[0])
    _, ys = jlstm.stack(jlstm.recurrent(cell), jlstm.recurrent(cell)).apply((p0, p1), jnp.asarray(xs))
    np.testing.assert_allclose(ys, want, atol=2e-5, rtol=2e-5)


def _tf1_gru_run(v, scope, xs, h):
    gk, gb, ck, cb = (v[f"{scope}/{part}/{leaf}"] for part in ("gates", "candidate")
                      for leaf in ("kernel", "bias"))
    outs = []
    for x in xs:
        r, u = np.split(_sigmoid(np.concatenate([x, h], 1) @ gk + gb), 2, axis=1)
        cand = np.tanh(np.concatenate([x, r * h], 1) @ ck + cb)
        h = u * h + (1 - u) * cand
        outs.append(h)
    return np.stack(outs)


def test_gru_cell_checkpoint_matches_tf1_and_goes_back():
    rng = np.random.default_rng(3)
    scope = "encoder/rnn/gru_cell"
    v = {f"{scope}/gates/kernel": rng.uniform(-0.6, 0.6, (I + H, 2 * H)),
         f"{scope}/gates/bias": rng.uniform(0.5, 1.5, 2 * H),            # TF1 initialises it to 1
         f"{scope}/candidate/kernel": rng.uniform(-0.6, 0.6, (I + H, H)),
         f"{scope}/candidate/bias": rng.uniform(-0.6, 0.6, H)}
    v = {k: np.asarray(a, np.float32) for k, a in v.items()}
    with pytest.raises(ValueError, match="convert it with jlstm.interop.from_tf1_gru"):
        interop.from_tf1_lstm(v)
    cell, params = interop.from_tf1_gru({**v, f"{scope}/gates/kernel/Adam:0": np.zeros(3, np.float32)})
    assert cell == jlstm.gru(H, reset_after=False)
    xs = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    want = _tf1_gru_run({k: a.astype(np.float64) for k, a in v.items()}, scope, xs.astype(np.float64),
                        h0.astype(np.float64))
    final, ys = jax.jit(jlstm.scan, static_argnums=0)(cell, params, jnp.asarray(xs), jlstm.GRUState(h0))
    np.testing.assert_allclose(ys, want, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(final.h, want[-1], atol=2e-5, rtol=2e-5)
    back = interop.to_tf1_gru(params, scope=scope)
    assert set(back) == set(v) and all(np.array_equal(back[k], v[k]) for k in v)
    with pytest.raises(ValueError, match="no GRU cell under scope='rnn/gru_cell'"):
        interop.from_tf1_gru(v, scope="rnn/gru_cell")
    with pytest.raises(ValueError, match="several GRU cells"):
        interop.from_tf1_gru({**v, **interop.to_tf1_gru(params, scope="decoder/gru_cell")})
    with pytest.raises(TypeError, match="ResetBeforeGRUParams"):
        interop.to_tf1_gru(jlstm.gru(H).init(jax.random.key(0), I))


def test_bad_tf1_variables_raise_and_name_the_fix():
    rng = np.random.default_rng(2)
    gru = {"rnn/gru_cell/gates/kernel": np.zeros((I + H, 2 * H), np.float32),
           "rnn/gru_cell/gates/bias": np.ones(2 * H, np.float32),
           "rnn/gru_cell/candidate/kernel": np.zeros((I + H, H), np.float32),
           "rnn/gru_cell/candidate/bias": np.zeros(H, np.float32)}
    with pytest.raises(ValueError, match="found no GRU cell"):
        interop.from_tf1_gru({k: a for k, a in gru.items() if "candidate" not in k})
    with pytest.raises(TypeError, match="dict of TF1 variable name"):
        interop.from_tf1_lstm([("rnn/lstm_cell/kernel", np.zeros(3))])
    with pytest.raises(ValueError, match="found no LSTM cell"):
        interop.from_tf1_lstm({"dense/bias": np.zeros(3, np.float32)})
    v = _variables("rnn/lstm_cell", rng, peepholes=True)
    partial = {k: a for k, a in v.items() if not k.endswith("w_o_diag")}
    with pytest.raises(ValueError, match="not all of"):
        interop.from_tf1_lstm(partial)
    wrong = dict(v, **{"rnn/lstm_cell/kernel": v["rnn/lstm_cell/kernel"][:, :-1]})
    with pytest.raises(ValueError, match="rnn/lstm_cell/kernel has shape"):
        interop.from_tf1_lstm(wrong)
    with pytest.raises(TypeError, match="floating point"):
        interop.from_tf1_lstm(dict(v, **{"rnn/lstm_cell/bias": np.arange(4 * H)}))
    keras_vars = {"lstm/lstm_cell/kernel": np.zeros((I, 4 * H), np.float32),   # tf.keras: not a TF1 cell
                  "lstm/lstm_cell/recurrent_kernel": np.zeros((H, 4 * H), np.float32),
                  "lstm/lstm_cell/bias": np.zeros(4 * H, np.float32)}
    with pytest.raises(ValueError, match="recurrent_kernel.*Keras"):
        interop.from_tf1_lstm(keras_vars)
    with pytest.raises(ValueError, match="recurrent_kernel.*Keras"):
        interop.from_tf1_lstm({**keras_vars, **v}, scope="lstm/lstm_cell")
    assert interop.from_tf1_lstm({**keras_vars, **v})[0] == jlstm.lstm(H, peephole="diagonal")
    full = jlstm.lstm(H, peephole="full").init(jax.random.key(0), I)
    with pytest.raises(ValueError, match="diagonal peepholes only"):
        interop.to_tf1_lstm(full)
    with pytest.raises(TypeError, match="LSTMParams"):
        interop.to_tf1_lstm(jlstm.gru(H).init(jax.random.key(0), I))

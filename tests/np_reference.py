"""Independent NumPy (float64) transcriptions of every cell's equations.

Written gate by gate with the article's names (W_xi, W_hi, W_ci, ...) sliced out of the
packed jlstm params, so a mistake in the packing or in the fused math shows up.
"""

from __future__ import annotations

import numpy as np


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _blocks(w, n):
    w = np.asarray(w, np.float64)
    k = w.shape[-1] // n
    return [w[..., j * k:(j + 1) * k] for j in range(n)]


def lstm_step(p, h, c, x, *, peephole=None, cell_clip=None):
    """One LSTM step; the article's equations when peephole='full'."""
    W_xi, W_xf, W_xc, W_xo = _blocks(p.w_x, 4)
    W_hi, W_hf, W_hc, W_ho = _blocks(p.w_h, 4)
    b_i, b_f, b_c, b_o = _blocks(p.b, 4)
    x, h, c = (np.asarray(a, np.float64) for a in (x, h, c))
    pre_i = x @ W_xi + h @ W_hi + b_i
    pre_f = x @ W_xf + h @ W_hf + b_f
    pre_o = x @ W_xo + h @ W_ho + b_o
    if peephole == "full":
        W_ci, W_cf, W_co = _blocks(p.w_c, 3)
        pre_i, pre_f, pre_o = pre_i + c @ W_ci, pre_f + c @ W_cf, pre_o + c @ W_co
    elif peephole == "diagonal":
        w = np.asarray(p.w_c, np.float64)
        pre_i, pre_f = pre_i + w[0] * c, pre_f + w[1] * c
    i_t, f_t = sigmoid(pre_i), sigmoid(pre_f)
    c_t = f_t * c + i_t * np.tanh(x @ W_xc + h @ W_hc + b_c)
    if cell_clip is not None:
        c_t = np.clip(c_t, -cell_clip, cell_clip)
    if peephole == "diagonal":
        pre_o = pre_o + np.asarray(p.w_c, np.float64)[2] * c_t
    o_t = sigmoid(pre_o)
    h_t = o_t * np.tanh(c_t)
    if getattr(p, "w_p", None) is not None:
        h_t = h_t @ np.asarray(p.w_p, np.float64)
    return h_t, c_t


def gru_step(p, h, x):
    W_xr, W_xz, W_xn = _blocks(p.w_x, 3)
    W_hr, W_hz, W_hn = _blocks(p.w_h, 3)
    b_xr, b_xz, b_xn = _blocks(p.b_x, 3)
    b_hr, b_hz, b_hn = _blocks(p.b_h, 3)
    x, h = np.asarray(x, np.float64), np.asarray(h, np.float64)
    r = sigmoid(x @ W_xr + b_xr + h @ W_hr + b_hr)
    z = sigmoid(x @ W_xz + b_xz + h @ W_hz + b_hz)
    n = np.tanh(x @ W_xn + b_xn + r * (h @ W_hn + b_hn))
    return (1.0 - z) * n + z * h


def gru_reset_before_step(p, h, x):
    """Cho et al. (2014), Keras' reset_after=False: the reset gate scales h before W_hn; one bias."""
    W_xr, W_xz, W_xn = _blocks(p.w_x, 3)
    W_hr, W_hz, W_hn = _blocks(p.w_h, 3)
    b_r, b_z, b_n = _blocks(p.b, 3)
    x, h = np.asarray(x, np.float64), np.asarray(h, np.float64)
    r = sigmoid(x @ W_xr + h @ W_hr + b_r)
    z = sigmoid(x @ W_xz + h @ W_hz + b_z)
    n = np.tanh(x @ W_xn + (r * h) @ W_hn + b_n)
    return (1.0 - z) * n + z * h


def rnn_step(p, h, x, activation=np.tanh):
    x, h = np.asarray(x, np.float64), np.asarray(h, np.float64)
    return activation(x @ np.asarray(p.w_x, np.float64) + h @ np.asarray(p.w_h, np.float64)
                      + np.asarray(p.b, np.float64))


def _ln(v, eps):
    mu = v.mean(-1, keepdims=True)
    return (v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + eps)


def layer_norm_lstm_step(p, h, c, x, eps=1e-5):
    f64 = lambda a: np.asarray(a, np.float64)
    x, h, c = f64(x), f64(h), f64(c)
    z = _ln(x @ f64(p.w_x), eps) * f64(p.gamma_x) + _ln(h @ f64(p.w_h), eps) * f64(p.gamma_h) + f64(p.b)
    zi, zf, zg, zo = _blocks(z, 4)
    c_t = sigmoid(zf) * c + sigmoid(zi) * np.tanh(zg)
    h_t = sigmoid(zo) * np.tanh(_ln(c_t, eps) * f64(p.gamma_c) + f64(p.beta_c))
    return h_t, c_t


def run(step, state, xs, lengths=None):
    """Run ``step(state, x) -> state`` over xs [T, B, I] one example at a time.

    ``state`` is a tuple of [B, ...] arrays whose first entry is the output. Steps at
    or past ``lengths[b]`` are skipped and output zeros. Returns (final_state, ys).
    """
    T, B = xs.shape[0], xs.shape[1]
    finals, ys = [], np.zeros((T, B, state[0].shape[-1]))
    for b in range(B):
        s = tuple(np.asarray(a[b], np.float64) for a in state)
        L = T if lengths is None else int(lengths[b])
        for t in range(min(L, T)):
            s = step(s, np.asarray(xs[t, b], np.float64))
            ys[t, b] = s[0]
        finals.append(s)
    return tuple(np.stack(f) for f in zip(*finals)), ys


def _para_projection(p, x, heads):
    """ParaRNN's input projection gate by gate: head k maps its inputs to its units of every gate."""
    w, b = np.asarray(p.w_x, np.float64), np.asarray(p.b, np.float64)
    x = np.asarray(x, np.float64)
    H = b.shape[0] // 3
    Ih, Hh = w.shape[0] // heads, H // heads
    gates = np.zeros(x.shape[:-1] + (3, H))
    for k in range(heads):
        out = x[..., k * Ih:(k + 1) * Ih] @ w[k * Ih:(k + 1) * Ih]          # [..., 3·Hh]
        for g in range(3):
            gates[..., g, k * Hh:(k + 1) * Hh] = out[..., g * Hh:(g + 1) * Hh]
    return [gates[..., g, :] + b[g * H:(g + 1) * H] for g in range(3)]


def para_gru_step(p, h, x, heads=1):
    xz, xr, xn = _para_projection(p, x, heads)
    a = np.asarray(p.a, np.float64)
    h = np.asarray(h, np.float64)
    z, r = sigmoid(xz + a[0] * h), sigmoid(xr + a[1] * h)
    n = np.tanh(xn + a[2] * (r * h))
    return z * n + (1.0 - z) * h


def para_lstm_step(p, h, c, x, heads=1):
    xf, xo, xc = _para_projection(p, x, heads)
    a, w_p = np.asarray(p.a, np.float64), np.asarray(p.p, np.float64)
    h, c = np.asarray(h, np.float64), np.asarray(c, np.float64)
    f = sigmoid(xf + a[0] * h + w_p[0] * c)
    c_t = f * c + (1.0 - f) * np.tanh(xc + a[2] * h)
    h_t = sigmoid(xo + a[1] * h + w_p[1] * c_t) * np.tanh(c_t)
    return h_t, c_t

"""An independent float64 NumPy reference of every jlstm cell and layer, for the golden files.

Written from the equations (the cell pages under docs/cells/ and the cell docstrings), gate by gate,
one example and one time step at a time, with no code shared with jlstm or with tests/np_reference.py.
Params are plain dicts of NumPy arrays keyed by the field names of jlstm's NamedTuples.

Row-vector convention: ``pre = x @ W_x + h @ W_h + b``.
"""

from __future__ import annotations

import numpy as np


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _cols(w, n, k):
    """Block ``k`` of ``n`` equal column blocks of ``w``."""
    size = w.shape[-1] // n
    return w[..., k * size:(k + 1) * size]


def _ln(v, eps=1e-5):
    mu = np.mean(v)
    var = np.mean((v - mu) ** 2)
    return (v - mu) / np.sqrt(var + eps)


# --------------------------------------------------------------------------------------
# cells: step(p, state: tuple, x) -> (state, y), one example, float64
# --------------------------------------------------------------------------------------

def lstm_step(p, state, x, *, peephole=None, cell_clip=None):
    """LSTM step; gate blocks i, f, g, o; peepholes (i, f, o) full or diagonal."""
    h, c = state
    pre = {}
    for k, gate in enumerate("ifgo"):
        pre[gate] = x @ _cols(p["w_x"], 4, k) + h @ _cols(p["w_h"], 4, k) + _cols(p["b"], 4, k)
    if peephole == "full":
        # the article: all three gates read c_{t-1} through (H, H) matrices
        pre["i"] = pre["i"] + c @ _cols(p["w_c"], 3, 0)
        pre["f"] = pre["f"] + c @ _cols(p["w_c"], 3, 1)
        pre["o"] = pre["o"] + c @ _cols(p["w_c"], 3, 2)
    elif peephole == "diagonal":
        pre["i"] = pre["i"] + p["w_c"][0] * c
        pre["f"] = pre["f"] + p["w_c"][1] * c
    i, f, g = _sig(pre["i"]), _sig(pre["f"]), np.tanh(pre["g"])
    c_new = f * c + i * g
    if cell_clip is not None:
        c_new = np.minimum(np.maximum(c_new, -cell_clip), cell_clip)
    if peephole == "diagonal":
        pre["o"] = pre["o"] + p["w_c"][2] * c_new       # Gers: o reads the new cell state
    h_new = _sig(pre["o"]) * np.tanh(c_new)
    if p.get("w_p") is not None:
        h_new = h_new @ p["w_p"]
    return (h_new, c_new), h_new


def layer_norm_lstm_step(p, state, x, eps=1e-5):
    h, c = state
    z = _ln(x @ p["w_x"], eps) * p["gamma_x"] + _ln(h @ p["w_h"], eps) * p["gamma_h"] + p["b"]
    i, f, g, o = (_cols(z, 4, k) for k in range(4))
    c_new = _sig(f) * c + _sig(i) * np.tanh(g)
    h_new = _sig(o) * np.tanh(_ln(c_new, eps) * p["gamma_c"] + p["beta_c"])
    return (h_new, c_new), h_new


def gru_step(p, state, x):
    """PyTorch's GRU: r, z, n with the recurrent bias of n inside the reset product."""
    (h,) = state
    xr, xz, xn = (x @ _cols(p["w_x"], 3, k) + _cols(p["b_x"], 3, k) for k in range(3))
    hr, hz, hn = (h @ _cols(p["w_h"], 3, k) + _cols(p["b_h"], 3, k) for k in range(3))
    r = _sig(xr + hr)
    z = _sig(xz + hz)
    n = np.tanh(xn + r * hn)
    h_new = (1.0 - z) * n + z * h
    return (h_new,), h_new


def simple_rnn_step(p, state, x):
    (h,) = state
    h_new = np.tanh(x @ p["w_x"] + h @ p["w_h"] + p["b"])
    return (h_new,), h_new


# --------------------------------------------------------------------------------------
# sequences and layers over a batch [T, B, I]
# --------------------------------------------------------------------------------------

def run_one(step, state, xs, length, reverse=False):
    """One example: xs [T, I]. Returns (final_state, ys [T, out]) with zeros past ``length``."""
    T = xs.shape[0]
    L = T if length is None else max(0, min(int(length), T))
    order = range(L - 1, -1, -1) if reverse else range(L)
    ys = [None] * T
    for t in order:
        state, ys[t] = step(state, xs[t])
    out = state[0].shape[-1]
    ys = [np.zeros(out) if y is None else y for y in ys]
    return state, np.stack(ys) if T else np.zeros((0, out))


def run_batch(step, states, xs, lengths=None, reverse=False):
    """xs [T, B, I]; ``states`` a tuple of [B, ...] arrays. Returns (final tuple, ys [T, B, out])."""
    B = xs.shape[1]
    finals, ys = [], []
    for b in range(B):
        s0 = tuple(np.asarray(a[b], np.float64) for a in states)
        f, y = run_one(step, s0, np.asarray(xs[:, b], np.float64),
                       None if lengths is None else lengths[b], reverse)
        finals.append(f)
        ys.append(y)
    final = tuple(np.stack([f[k] for f in finals]) for k in range(len(states)))
    return final, np.stack(ys, axis=1)


def zeros_state(fields_sizes, B):
    return tuple(np.zeros((B, n)) for n in fields_sizes)


def stack_run(layers, xs, lengths=None):
    """layers: list of (step, state_sizes, reverse). Each reads the previous layer's outputs."""
    finals, ys = [], np.asarray(xs, np.float64)
    for step, sizes, reverse in layers:
        f, ys = run_batch(step, zeros_state(sizes, xs.shape[1]), ys, lengths, reverse)
        finals.append(f)
    return finals, ys


def bidirectional_run(fwd, bwd, xs, lengths=None, merge="concat"):
    """fwd/bwd: (step, state_sizes). The backward pass starts at each last valid step."""
    B = xs.shape[1]
    ff, yf = run_batch(fwd[0], zeros_state(fwd[1], B), xs, lengths, False)
    fb, yb = run_batch(bwd[0], zeros_state(bwd[1], B), xs, lengths, True)
    if merge == "concat":
        ys = np.concatenate([yf, yb], axis=-1)
    elif merge == "sum":
        ys = yf + yb
    else:
        ys = 0.5 * (yf + yb)
    return (ff, fb), ys

"""The cell variants every core test runs over, each with its NumPy reference step."""

from __future__ import annotations

import jax.numpy as jnp
import np_reference as ref

import jlstm


def _lstm_case(**kw):
    def np_step(p):
        return lambda s, x: ref.lstm_step(p, s[0], s[1], x, peephole=kw.get("peephole"),
                                          cell_clip=kw.get("cell_clip"))
    return (lambda H: jlstm.lstm(H, **kw)), np_step, ("h", "c")


CASES = {
    "lstm": _lstm_case(),
    "lstm_full_peephole": _lstm_case(peephole="full"),
    "lstm_diagonal_peephole": _lstm_case(peephole="diagonal"),
    "lstm_proj": _lstm_case(proj_size=3),
    "lstm_clip": _lstm_case(cell_clip=0.3),
    "gru": (lambda H: jlstm.gru(H), lambda p: (lambda s, x: (ref.gru_step(p, s[0], x),)), ("h",)),
    "gru_reset_before": (lambda H: jlstm.gru(H, reset_after=False),
                         lambda p: (lambda s, x: (ref.gru_reset_before_step(p, s[0], x),)), ("h",)),
    "simple_rnn": (lambda H: jlstm.simple_rnn(H),
                   lambda p: (lambda s, x: (ref.rnn_step(p, s[0], x),)), ("h",)),
    "relu_rnn": (lambda H: jlstm.simple_rnn(H, activation=jnp.tanh),
                 lambda p: (lambda s, x: (ref.rnn_step(p, s[0], x),)), ("h",)),
    "layer_norm_lstm": (lambda H: jlstm.layer_norm_lstm(H),
                        lambda p: (lambda s, x: ref.layer_norm_lstm_step(p, s[0], s[1], x)),
                        ("h", "c")),
    "para_gru": (lambda H: jlstm.para_gru(H), lambda p: (lambda s, x: (ref.para_gru_step(p, s[0], x),)), ("h",)),
    "para_lstm": (lambda H: jlstm.para_lstm(H), lambda p: (lambda s, x: ref.para_lstm_step(p, s[0], s[1], x)),
                  ("h", "c")),
}
CASES.pop("relu_rnn")
NAMES = sorted(CASES)


def perturb(params, key, scale=0.3):
    """Give every parameter (biases, peepholes, gains) random non-trivial values."""
    import jax

    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
                              for leaf, k in zip(leaves, keys)])

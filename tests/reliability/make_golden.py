"""Regenerate the golden fixtures in tests/reliability/golden/ (run once; the .npz are committed).

    cd <repo> && PYTHONPATH=. python tests/reliability/make_golden.py

Weights are deterministic ``arange``-based values (see ``rel_common.det_params``), inputs are
``arange`` scaled into [-1, 1], and every expected output comes from the float64 NumPy
reference in ``rel_reference.py``: jlstm is used only for the *shapes* of its params (the
template from ``init``), never for an expected value.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rel_common as rc  # noqa: E402
import rel_reference as ref  # noqa: E402

import jlstm  # noqa: E402

T, B, I, H = 6, 3, 3, 4
LENGTHS = np.array([6, 3, 0])
# The layer fixtures use 4 sequences so every length class appears: full, partial, 1, 0.
LAYER_B, LAYER_LENGTHS = 4, np.array([6, 4, 1, 0])


def variants():
    """(key, reverse, bias, use_lengths, nonzero_initial_state)."""
    for reverse in (False, True):
        for bias in (True, False):
            for use_len in (False, True):
                d, b = ("rev" if reverse else "fwd"), ("bias" if bias else "nobias")
                key = f"{d}_{b}_{'len' if use_len else 'full'}"
                yield key, reverse, bias, use_len, False
        yield f"{'rev' if reverse else 'fwd'}_bias_len_state0", reverse, True, True, True


def initial_state(name, cell, params, salt=99):
    fields = rc.state_fields(name)
    zero = cell.initial_state(params, (B,))
    return tuple(rc.det_values(getattr(zero, f).shape, salt + k) for k, f in enumerate(fields))


def cell_fixture(name):
    cell = rc.make_cell(name, H)
    template = cell.init(jax.random.key(0), I)
    xs = rc.arange_inputs(T, B, I)
    out = {"xs": xs, "lengths": LENGTHS}
    for bias in (True, False):
        p = rc.det_params(template, salt=1, bias=bias)
        for k, v in rc.flat_named(p).items():
            out[f"params_{'bias' if bias else 'nobias'}{k}"] = v
    p_bias = rc.det_params(template, salt=1)
    s0 = initial_state(name, cell, p_bias)
    for k, f in enumerate(rc.state_fields(name)):
        out[f"state0.{f}"] = s0[k].astype(np.float32)
    for key, reverse, bias, use_len, nonzero in variants():
        p = rc.det_params(template, salt=1, bias=bias)
        step = rc.ref_step(name, p)
        sizes = [getattr(cell.initial_state(p, (B,)), f).shape[-1] for f in rc.state_fields(name)]
        st = tuple(out[f"state0.{f}"].astype(np.float64) for f in rc.state_fields(name)) if nonzero \
            else ref.zeros_state(sizes, B)
        final, ys = ref.run_batch(step, st, xs.astype(np.float64), LENGTHS if use_len else None, reverse)
        out[f"{key}.ys"] = ys
        for k, f in enumerate(rc.state_fields(name)):
            out[f"{key}.final.{f}"] = final[k]
    return out


def layer_models():
    """name -> (model, reference runner(params) -> (finals, ys)) for the layer fixtures."""
    models = {}

    def sizes(name, Hn):
        return [Hn] * len(rc.state_fields(name)) if name != "lstm_proj" else [rc.PROJ, Hn]

    # stack: lstm -> reversed gru -> simple rnn
    stack = jlstm.stack(jlstm.recurrent(jlstm.lstm(4)), jlstm.recurrent(jlstm.gru(3), reverse=True),
                        jlstm.recurrent(jlstm.simple_rnn(2)))

    def stack_ref(p, xs, lengths):
        layers = [(rc.ref_step("lstm", p[0]), sizes("lstm", 4), False),
                  (rc.ref_step("gru", p[1]), sizes("gru", 3), True),
                  (rc.ref_step("simple_rnn", p[2]), sizes("simple_rnn", 2), False)]
        return ref.stack_run(layers, xs, lengths)

    models["stack"] = (stack, stack_ref)
    for merge in ("concat", "sum", "mean"):
        bi = jlstm.bidirectional(jlstm.lstm(4), merge=merge)

        def bi_ref(p, xs, lengths, merge=merge):
            return ref.bidirectional_run((rc.ref_step("lstm", p.forward), sizes("lstm", 4)),
                                         (rc.ref_step("lstm", p.backward), sizes("lstm", 4)),
                                         xs, lengths, merge)

        models[f"bidirectional_{merge}"] = (bi, bi_ref)
    mixed = jlstm.bidirectional(jlstm.lstm(4, peephole="full"), jlstm.gru(3))

    def mixed_ref(p, xs, lengths):
        return ref.bidirectional_run((rc.ref_step("lstm_full", p.forward), sizes("lstm_full", 4)),
                                     (rc.ref_step("gru", p.backward), sizes("gru", 3)), xs, lengths)

    models["bidirectional_mixed"] = (mixed, mixed_ref)
    # a stack of two bidirectional layers: the second reads the merged outputs of the first
    deep = jlstm.stack(jlstm.bidirectional(jlstm.gru(3)),
                       jlstm.bidirectional(jlstm.layer_norm_lstm(2), merge="sum"))

    def deep_ref(p, xs, lengths):
        f1, y1 = ref.bidirectional_run((rc.ref_step("gru", p[0].forward), [3]),
                                       (rc.ref_step("gru", p[0].backward), [3]), xs, lengths)
        f2, y2 = ref.bidirectional_run((rc.ref_step("layer_norm_lstm", p[1].forward), [2, 2]),
                                       (rc.ref_step("layer_norm_lstm", p[1].backward), [2, 2]),
                                       y1, lengths, "sum")
        return [f1, f2], y2

    models["stack_bidirectional"] = (deep, deep_ref)
    return models


def layer_fixture():
    xs = rc.arange_inputs(T, LAYER_B, I)
    out = {"xs": xs, "lengths": LAYER_LENGTHS}
    for name, (model, runner) in layer_models().items():
        p = rc.det_params(model.init(jax.random.key(0), I), salt=2)
        for k, v in rc.flat_named(p).items():
            out[f"{name}.params{k}"] = v
        for use_len in (False, True):
            finals, ys = runner(p, xs.astype(np.float64), LAYER_LENGTHS if use_len else None)
            tag = f"{name}.{'len' if use_len else 'full'}"
            out[f"{tag}.ys"] = ys
            for k, leaf in enumerate(jax.tree.leaves(finals)):
                out[f"{tag}.final{k}"] = leaf
    return out


def main():
    os.makedirs(rc.GOLDEN, exist_ok=True)
    for name in rc.CELL_NAMES:
        np.savez(os.path.join(rc.GOLDEN, f"{name}.npz"), **cell_fixture(name))
    np.savez(os.path.join(rc.GOLDEN, "layers.npz"), **layer_fixture())
    print("wrote", sorted(os.listdir(rc.GOLDEN)))


if __name__ == "__main__":
    main()

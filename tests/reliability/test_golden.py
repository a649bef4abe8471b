"""Golden values (property 2 of docs/testing.md).

Fixed ``arange``-based weights on ``arange`` inputs; the expected outputs and final states
were computed once by the float64 NumPy reference (``rel_reference.py``) and stored in
``golden/*.npz`` by ``make_golden.py``. Every cell, forward and reverse, with and without
bias, with and without lengths, from zeros and from a non-zero state; every layer kind.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rel_common as rc

import jlstm

ATOL = 1e-5


def _load(name):
    with np.load(os.path.join(rc.GOLDEN, f"{name}.npz")) as d:
        return dict(d)


# The fused fast path exists for the plain LSTM only; every other cell runs one code path.
CELL_CASES = [(n, d, True) for n in rc.CELL_NAMES for d in ("fwd", "rev")] + [
    ("lstm", d, False) for d in ("fwd", "rev")]


@pytest.mark.parametrize("name,direction,fast", CELL_CASES,
                         ids=[f"{n}-{d}-{'fast' if f else 'plain'}" for n, d, f in CELL_CASES])
def test_cell_golden(name, direction, fast):
    g = _load(name)
    xs, lengths = jnp.asarray(g["xs"]), jnp.asarray(g["lengths"])
    cell = rc.make_cell(name, 4)
    template = cell.init(jax.random.key(0), xs.shape[-1])
    fields = rc.state_fields(name)
    params = {b: rc.fill_like(template, g, prefix=f"params_{b}") for b in ("bias", "nobias")}
    state0 = type(cell.initial_state(params["bias"]))(*[jnp.asarray(g[f"state0.{f}"]) for f in fields])
    reverse = direction == "rev"

    @jax.jit
    def run_all(params, state0, xs, lengths):
        out = {}
        for bias in ("bias", "nobias"):
            for use_len in ("full", "len"):
                out[f"{direction}_{bias}_{use_len}"] = jlstm.scan(
                    cell, params[bias], xs, lengths=lengths if use_len == "len" else None,
                    reverse=reverse, fast=fast)
        # from a non-zero initial state, with lengths (a zero length keeps the initial state)
        out[f"{direction}_bias_len_state0"] = jlstm.scan(cell, params["bias"], xs, state0, lengths=lengths,
                                                         reverse=reverse, fast=fast)
        return out

    results = run_all(params, state0, xs, lengths)
    assert len(results) == 5
    for key, (final, ys) in results.items():
        np.testing.assert_allclose(ys, g[f"{key}.ys"], atol=ATOL, rtol=1e-5, err_msg=key)
        for f in fields:
            np.testing.assert_allclose(getattr(final, f), g[f"{key}.final.{f}"], atol=ATOL, rtol=1e-5,
                                       err_msg=f"{key} final {f}")
    final = results[f"{direction}_bias_len_state0"][0]
    for k, f in enumerate(fields):
        np.testing.assert_array_equal(getattr(final, f)[2], state0[k][2])  # length 0 keeps the state


@pytest.mark.parametrize("name", rc.CELL_NAMES)
def test_golden_fixture_is_not_trivial(name):
    """Guard the fixtures themselves: the clip binds, the bias matters, padding is zero."""
    g = _load(name)
    assert not np.allclose(g["fwd_bias_full.ys"], g["fwd_nobias_full.ys"], atol=1e-3)
    assert not np.allclose(g["fwd_bias_full.ys"], g["rev_bias_full.ys"], atol=1e-3)
    assert np.all(g["fwd_bias_len.ys"][3:, 1] == 0) and np.all(g["fwd_bias_len.ys"][:, 2] == 0)
    assert np.abs(g["fwd_bias_full.ys"]).max() > 0.05
    if name == "lstm_clip":
        assert np.isclose(np.abs(g["fwd_bias_full.final.c"]).max(), rc.CLIP)


def _layer_models():
    import make_golden

    return make_golden.layer_models()


LAYER_NAMES = ["stack", "bidirectional_concat", "bidirectional_sum", "bidirectional_mean",
               "bidirectional_mixed", "stack_bidirectional"]


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_golden(name):
    g = _load("layers")
    model = _layer_models()[name][0]
    xs, lengths = jnp.asarray(g["xs"]), jnp.asarray(g["lengths"])
    params = rc.fill_like(model.init(jax.random.key(0), xs.shape[-1]), g, prefix=f"{name}.params")
    results = jax.jit(lambda p, x, L: {"full": model.apply(p, x), "len": model.apply(p, x, lengths=L)})(
        params, xs, lengths)
    for use_len, (final, ys) in results.items():
        tag = f"{name}.{use_len}"
        assert ys.shape[-1] == model.output_size
        np.testing.assert_allclose(ys, g[f"{tag}.ys"], atol=ATOL, rtol=1e-5, err_msg=tag)
        leaves = jax.tree.leaves(final)
        for k, leaf in enumerate(leaves):
            np.testing.assert_allclose(leaf, g[f"{tag}.final{k}"], atol=ATOL, rtol=1e-5,
                                       err_msg=f"{tag} final leaf {k}")
        assert f"{tag}.final{len(leaves)}" not in g

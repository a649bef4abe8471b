"""A table of bad calls: each must fail at trace time, in jlstm's own code, saying what is wrong.

For every row: the error type (ValueError or TypeError), that the frame which raised lies
inside the jlstm package (not deep in JAX or NumPy), and that the message names the
problem (a regex on its key words). Rows marked ``jit`` make the call under ``jax.jit``.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import pytest
import rel_common as rc

import jlstm

T, B, I, H = 5, 2, 3, 4
KEY = jax.random.key(0)
CELL = jlstm.lstm(H)
P = CELL.init(KEY, I)
XS = jnp.ones((T, B, I))
GRU = jlstm.gru(H)
GP = GRU.init(KEY, I)


def scan(*args, jit=False, **kw):
    """Call jlstm.scan, optionally under jax.jit with the arrays as traced arguments."""
    if not jit:
        return jlstm.scan(*args, **kw)
    cell, rest = args[0], args[1:]
    arrays = {k: v for k, v in kw.items() if hasattr(v, "shape")}
    static = {k: v for k, v in kw.items() if k not in arrays}
    return jax.jit(lambda rest, arrays: jlstm.scan(cell, *rest, **arrays, **static))(rest, arrays)


def _bidir():
    return jlstm.bidirectional(CELL)


def _stack():
    return jlstm.stack(jlstm.recurrent(CELL), jlstm.recurrent(GRU))


def _checkpoint_corrupt(tmp_path):
    ckpt = pytest.importorskip("jlstm.checkpoint")
    path = os.path.join(tmp_path, "params.ckpt")
    ckpt.save(path, P, metadata={"step": 1})
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])          # truncated half-way
    ckpt.load(path, P)


def _checkpoint_other_shape(tmp_path):
    ckpt = pytest.importorskip("jlstm.checkpoint")
    path = os.path.join(tmp_path, "params.ckpt")
    ckpt.save(path, P)
    ckpt.load(path, jlstm.lstm(H + 1).init(KEY, I))


# (id, call(tmp_path), error type, regex the message must match)
CASES = [
    # --- inputs
    ("xs_wrong_width", lambda _: scan(CELL, P, jnp.ones((T, B, I + 2))), ValueError, r"5 features.*input_size=3"),
    ("xs_wrong_width_jit", lambda _: scan(CELL, P, jnp.ones((T, B, 1)), jit=True), ValueError, r"input_size=3"),
    ("xs_rank_1", lambda _: scan(CELL, P, jnp.ones(T)), ValueError, r"time and a feature axis"),
    ("xs_integer_dtype", lambda _: scan(CELL, P, jnp.ones((T, B, I), jnp.int32)), TypeError, r"floating.*int32"),
    ("xs_bool_dtype", lambda _: scan(CELL, P, jnp.ones((T, B, I), bool)), TypeError, r"floating.*bool"),
    ("xs_python_list", lambda _: scan(CELL, P, [[[1.0] * I] * B] * T), TypeError, r"xs must be an array"),
    ("time_major_not_bool", lambda _: scan(CELL, P, XS, time_major="yes"), TypeError, r"time_major"),
    ("step_x_wrong_width", lambda _: CELL.step(P, CELL.initial_state(P, (B,)), jnp.ones((B, 1))),
     ValueError, r"input_size=3"),
    # --- lengths and masks
    ("lengths_wrong_shape", lambda _: scan(CELL, P, XS, lengths=jnp.array([5, 5, 5])), ValueError,
     r"lengths has shape \(3,\).*\(2,\)"),
    ("lengths_wrong_shape_jit", lambda _: scan(CELL, P, XS, lengths=jnp.array([[5, 5]]), jit=True),
     ValueError, r"lengths has shape \(1, 2\)"),
    ("lengths_float", lambda _: scan(CELL, P, XS, lengths=jnp.array([5.0, 3.0])), TypeError, r"integers.*float"),
    ("lengths_nan_jit", lambda _: scan(CELL, P, XS, lengths=jnp.array([5.0, jnp.nan]), jit=True),
     TypeError, r"lengths must be integers"),
    ("lengths_bool", lambda _: scan(CELL, P, XS, lengths=jnp.array([True, False])), TypeError, r"integers"),
    ("mask_wrong_shape", lambda _: scan(CELL, P, XS, mask=jnp.ones((T - 1, B), bool)), ValueError,
     r"mask has shape \(4, 2\), expected \(5, 2\)"),
    ("mask_int_dtype_jit", lambda _: scan(CELL, P, XS, mask=jnp.ones((T, B), jnp.int32), jit=True), TypeError,
     r"mask must be boolean"),
    # --- cell options
    ("hidden_negative", lambda _: jlstm.lstm(-1), ValueError, r"hidden_size must be >= 1, got -1"),
    ("hidden_zero", lambda _: jlstm.gru(0), ValueError, r"hidden_size must be >= 1, got 0"),
    ("hidden_float", lambda _: jlstm.simple_rnn(2.5), TypeError, r"hidden_size must be a Python int"),
    ("hidden_bool", lambda _: jlstm.lstm(True), TypeError, r"hidden_size must be a Python int"),
    ("hidden_str", lambda _: jlstm.layer_norm_lstm("8"), TypeError, r"hidden_size must be a Python int"),
    ("proj_size_zero", lambda _: jlstm.lstm(H, proj_size=0), ValueError, r"proj_size must be >= 1"),
    ("unknown_peephole", lambda _: jlstm.lstm(H, peephole="diag"), ValueError,
     r"unknown peephole='diag'.*'diagonal'"),
    ("cell_clip_negative", lambda _: jlstm.lstm(H, cell_clip=-1.0), ValueError, r"cell_clip.*-1\.0"),
    ("dtype_integer", lambda _: jlstm.lstm(H, dtype=jnp.int32), TypeError, r"dtype must be a floating.*int32"),
    ("dtype_not_a_dtype", lambda _: jlstm.gru(H, dtype="foo"), TypeError, r"dtype='foo' is not a dtype"),
    ("param_dtype_integer", lambda _: jlstm.simple_rnn(H, param_dtype=jnp.int8), TypeError, r"param_dtype"),
    ("activation_not_callable", lambda _: jlstm.simple_rnn(H, activation="tanh"), TypeError, r"activation"),
    ("layer_norm_eps_zero", lambda _: jlstm.layer_norm_lstm(H, eps=0.0), ValueError, r"eps must be positive"),
    ("init_input_size_zero", lambda _: CELL.init(KEY, 0), ValueError, r"input_size must be >= 1"),
    # --- scan options
    ("unknown_remat", lambda _: scan(CELL, P, XS, remat="full"), ValueError, r"unknown remat='full'"),
    ("remat_zero", lambda _: scan(CELL, P, XS, remat=0), ValueError, r"remat.*>= 1, got 0"),
    ("unroll_zero", lambda _: scan(CELL, P, XS, unroll=0), ValueError, r"unroll must be a positive int.*0"),
    ("unroll_negative", lambda _: scan(CELL, P, XS, unroll=-1), ValueError, r"unroll must be a positive int.*-1"),
    ("unroll_string", lambda _: scan(CELL, P, XS, unroll="x"), (ValueError, TypeError), r"unroll.*'x'"),
    ("scan_non_cell_model", lambda _: jlstm.scan(jlstm.recurrent(CELL), P, XS), TypeError,
     r"cell must be a jlstm.Cell.*SequenceModel"),
    ("scan_non_cell_function", lambda _: jlstm.scan(CELL.step, P, XS), TypeError, r"cell must be a jlstm.Cell"),
    # --- params and states that belong elsewhere
    ("params_from_gru", lambda _: scan(CELL, GP, XS), TypeError, r"params must be a LSTMParams, got GRUParams"),
    ("params_from_gru_jit", lambda _: scan(CELL, GP, XS, jit=True), TypeError, r"LSTMParams.*GRUParams"),
    ("params_other_size", lambda _: scan(CELL, jlstm.lstm(H + 1).init(KEY, I), XS), ValueError,
     r"w_x has shape \(3, 20\), expected \(3, 16\)"),
    ("params_without_peepholes", lambda _: scan(jlstm.lstm(H, peephole="full"), P, XS), ValueError,
     r"w_c is None.*\(4, 12\)"),
    ("params_without_projection", lambda _: scan(jlstm.lstm(H, proj_size=2), P, XS), ValueError,
     r"w_h has shape \(4, 16\), expected \(2, 16\)"),
    ("params_initial_state_from_gru", lambda _: CELL.initial_state(GP, (B,)), TypeError, r"LSTMParams"),
    ("state_from_gru", lambda _: scan(CELL, P, XS, jlstm.GRUState(jnp.zeros((B, H)))), TypeError,
     r"state must be a LSTMState, got GRUState"),
    ("state_other_size_jit", lambda _: scan(CELL, P, XS, jlstm.lstm(H + 1).initial_state(
        jlstm.lstm(H + 1).init(KEY, I), (B,)), jit=True), ValueError,
     r"state.h has shape \(2, 5\).*\[\.\.\., 4\]"),
    ("state_batch_mismatch", lambda _: scan(CELL, P, XS, CELL.initial_state(P, (B + 1,))), ValueError,
     r"batch shape \(2,\).*batch shape \(3,\)"),
    ("state_fields_disagree", lambda _: scan(CELL, P, XS, jlstm.LSTMState(jnp.zeros((B, H)), jnp.zeros((3, H)))),
     ValueError, r"state.c has batch shape \(3,\), expected \(2,\)"),
    ("state_unbatched_for_batched_xs", lambda _: scan(CELL, P, XS, CELL.initial_state(P)), ValueError,
     r"batch shape"),
    # --- layers
    ("key_python_int", lambda _: jlstm.recurrent(CELL, input_dropout=0.1).apply(P, XS, key=0), TypeError,
     r"key must be a PRNG key"),
    ("key_float_array", lambda _: jlstm.recurrent(CELL, recurrent_dropout=0.1).apply(P, XS, key=jnp.zeros(2)),
     TypeError, r"key must be a PRNG key.*float32"),
    ("key_uint32_wrong_shape", lambda _: _stack().apply(_stack().init(KEY, I), XS,
                                                          key=jnp.zeros(3, jnp.uint32)), TypeError, r"PRNG key"),
    ("input_dropout_above_one", lambda _: jlstm.recurrent(CELL, input_dropout=1.5), ValueError,
     r"input_dropout must lie in \[0, 1\), got 1\.5"),
    ("inter_layer_dropout_negative", lambda _: jlstm.stack(jlstm.recurrent(CELL), inter_layer_dropout=-0.1),
     ValueError, r"inter_layer_dropout must lie in"),
    ("zoneout_one", lambda _: jlstm.recurrent(CELL, zoneout=1.0), ValueError, r"zoneout"),
    ("recurrent_dropout_string", lambda _: jlstm.recurrent(CELL, recurrent_dropout="0.1"), TypeError,
     r"recurrent_dropout"),
    ("recurrent_unknown_remat", lambda _: jlstm.recurrent(CELL, remat="always"), ValueError, r"remat"),
    ("recurrent_of_non_cell", lambda _: jlstm.recurrent("lstm"), TypeError, r"jlstm.Cell"),
    ("stack_of_cells", lambda _: jlstm.stack(CELL), TypeError, r"SequenceModel"),
    ("stack_empty", lambda _: jlstm.stack(), ValueError, r"at least one layer"),
    ("stack_params_wrong_length", lambda _: _stack().apply((P,), XS), ValueError,
     r"params must be a tuple with one entry per layer \(2\), got 1"),
    ("stack_state_wrong_length", lambda _: _stack().apply(_stack().init(KEY, I), XS, state=(None,) * 3),
     ValueError, r"state must be a tuple.*\(2\), got 3"),
    ("stack_params_swapped_jit", lambda _: jax.jit(_stack().apply)(_stack().init(KEY, I)[::-1], XS), TypeError,
     r"GRUParams|LSTMParams"),
    ("unknown_merge", lambda _: jlstm.bidirectional(CELL, merge="max"), ValueError, r"unknown merge='max'"),
    ("bidirectional_reverse_option", lambda _: jlstm.bidirectional(CELL, reverse=True), ValueError, r"reverse"),
    ("bidirectional_params_tuple", lambda _: _bidir().apply((P, P), XS), TypeError,
     r"BidirectionalParams.*tuple"),
    ("bidirectional_state_tuple", lambda _: _bidir().apply(_bidir().init(KEY, I), XS, state=(None, None)),
     TypeError, r"BidirectionalState"),
    ("bidirectional_merge_sizes", lambda _: jlstm.bidirectional(CELL, jlstm.gru(H + 1), merge="sum"),
     ValueError, r"equal output sizes"),
    # --- checkpoints (run once jlstm.checkpoint exists)
    ("checkpoint_corrupt", _checkpoint_corrupt, ValueError, r"(?i)corrupt|truncat|invalid|damaged|read"),
    ("checkpoint_other_shape", _checkpoint_other_shape, ValueError, r"(?i)shape"),
]

# Bad calls that slipped through at first, now checked by the core.
CASES += [
    ("key_batch_of_keys", lambda _: jlstm.recurrent(CELL, input_dropout=0.1).apply(
        P, XS, key=jax.random.split(KEY, 2)), TypeError, r"key must be a (single )?PRNG key"),
    ("cell_clip_string", lambda _: jlstm.lstm(H, cell_clip="1.0"), TypeError, r"cell_clip"),
    ("state_integer_dtype", lambda _: scan(CELL, P, XS, jlstm.LSTMState(jnp.zeros((B, H), jnp.int32),
                                                                      jnp.zeros((B, H), jnp.int32))),
     TypeError, r"state.*float"),
    ("params_integer_dtype", lambda _: scan(CELL, jax.tree.map(lambda a: a.astype(jnp.int32), P), XS),
     TypeError, r"params.*float"),
]


def assert_raised_in_jlstm(excinfo) -> None:
    """The innermost frame of the traceback (where ``raise`` ran) must be jlstm's own code."""
    tb = excinfo.value.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    assert filename.startswith(rc.JLSTM_DIR + os.sep), (
        f"{type(excinfo.value).__name__} raised from {filename}:{tb.tb_lineno}, not from jlstm: "
        f"{excinfo.value}")


def _params():
    out = []
    for case in CASES:
        out.append(pytest.param(*case[1:], id=case[0]))
    return out


def test_table_is_large_and_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 25


@pytest.mark.parametrize("call,error,message", _params())
def test_bad_call_raises_clear_error_from_jlstm(call, error, message, tmp_path):
    with pytest.raises(error) as excinfo:
        call(str(tmp_path))
    assert isinstance(excinfo.value, (ValueError, TypeError))
    assert_raised_in_jlstm(excinfo)
    text = str(excinfo.value)
    assert len(text) > 30, f"message too short to help: {text!r}"
    assert re.search(message, text, flags=re.S), (
        f"message {text!r} does not match {message!r}")

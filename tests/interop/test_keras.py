"""jlstm <-> Keras 3 LSTM / GRU / Bidirectional layers (JAX backend), on the same inputs.

Keras is batch-major; the converted jlstm models are time-major, so the tests call
``apply(..., time_major=False)``. Outputs, final states (``return_state=True``) and input
gradients must agree to 1e-5.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jlstm  # noqa: E402
from jlstm import interop  # noqa: E402

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":  # pragma: no cover - set before keras was first imported
    pytest.skip("these tests run Keras on its JAX backend (KERAS_BACKEND=jax)", allow_module_level=True)

TOL = dict(atol=1e-5, rtol=1e-5)
B, T, I, U = 3, 5, 4, 3


def _build(layer, seed):
    """Build for [B, T, I] and fill every weight with uniform(-0.5, 0.5)."""
    layer.build((None, None, I))
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    return layer


def _data(seed, out_size, n_states):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((B, T, I)).astype(np.float32)
    cot = rng.standard_normal((B, T, out_size)).astype(np.float32)
    states = [rng.standard_normal((B, U)).astype(np.float32) for _ in range(n_states)]
    return xs, cot, states


def _keras_run(layer, xs, cot, states):
    """Keras outputs, final states and d sum(ys * cot) / d xs (jax.grad through the layer)."""
    def loss(x):
        out = layer(x, initial_state=states or None)
        return jnp.sum(out[0] * cot), out

    (_, out), dx = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(xs))
    return out[0], list(out[1:]), dx


def _jlstm_run(model, params, xs, cot, state):
    def loss(x):
        final, ys = model.apply(params, x, state, time_major=False)
        return jnp.sum(ys * cot), (ys, final)

    (_, (ys, final)), dx = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(xs))
    return ys, jax.tree.leaves(final), dx


def _check(got, want):
    ys, states, dx = got
    kys, kstates, kdx = want
    np.testing.assert_allclose(ys, kys, **TOL, err_msg="ys")
    assert len(states) == len(kstates)
    for s, k in zip(states, kstates):
        np.testing.assert_allclose(s, k, **TOL, err_msg="final state")
    np.testing.assert_allclose(dx, kdx, **TOL, err_msg="d xs")


def test_lstm_matches_keras():
    layer = _build(keras.layers.LSTM(U, return_sequences=True, return_state=True), 0)
    model, params = interop.from_keras_lstm(layer)
    assert isinstance(params, jlstm.LSTMParams)
    xs, cot, (h0, c0) = _data(1, U, 2)
    want = _keras_run(layer, xs, cot, [h0, c0])  # outputs, [h, c], grad
    got = _jlstm_run(model, params, xs, cot, jlstm.LSTMState(h=jnp.asarray(h0), c=jnp.asarray(c0)))
    _check(got, want)


def test_gru_matches_keras_gate_order():
    layer = _build(keras.layers.GRU(U, return_sequences=True, return_state=True), 2)
    model, params = interop.from_keras_gru(layer)
    xs, cot, (h0,) = _data(3, U, 1)
    want = _keras_run(layer, xs, cot, [h0])
    got = _jlstm_run(model, params, xs, cot, jlstm.GRUState(h=jnp.asarray(h0)))
    _check(got, want)
    # the r and z blocks really swap: jlstm's r block is Keras' second block
    kernel = layer.get_weights()[0]
    np.testing.assert_array_equal(np.asarray(params.w_x[:, :U]), kernel[:, U:2 * U])
    np.testing.assert_array_equal(np.asarray(params.b_h[2 * U:]), layer.get_weights()[2][1, 2 * U:])


@pytest.mark.parametrize("use_bias", [True, False])
def test_gru_reset_before_matches_keras_both_ways(use_bias):
    """Keras' reset_after=False (the reset gate before the recurrent matrix, one bias) is
    jlstm.gru(U, reset_after=False); its params go back into a Keras layer exactly."""
    layer = _build(keras.layers.GRU(U, reset_after=False, use_bias=use_bias, return_sequences=True,
                                    return_state=True), 13)
    model, params = interop.from_keras_gru(layer)
    assert isinstance(params, jlstm.ResetBeforeGRUParams)
    assert model == jlstm.recurrent(jlstm.gru(U, reset_after=False))
    xs, cot, (h0,) = _data(14, U, 1)
    want = _keras_run(layer, xs, cot, [h0])
    _check(_jlstm_run(model, params, xs, cot, jlstm.GRUState(h=jnp.asarray(h0))), want)
    before = layer.get_weights()
    weights = interop.to_keras_gru(model, params, layer)                    # sets them on the layer too
    assert len(weights) == len(before) == (3 if use_bias else 2)
    for w, k in zip(weights, before):
        np.testing.assert_array_equal(w, k)
    with pytest.raises(ValueError, match="reset_after=True"):                  # the other equation refuses them
        interop.to_keras_gru(model, params, keras.layers.GRU(U))
    _, params_after = interop.from_keras_gru(_build(keras.layers.GRU(U), 15))
    with pytest.raises(ValueError, match="reset_after=False"):
        interop.to_keras_gru(None, params_after, keras.layers.GRU(U, reset_after=False))
    for to_other in (interop.to_flax_gru, interop.to_equinox_gru,                  # PyTorch-form GRUs
                     lambda p: interop.to_torch_gru(model, p, as_numpy=True)):
        with pytest.raises(TypeError, match=r"GRUParams.*reset_after=False\): its reset gate"):
            to_other(params)


@pytest.mark.parametrize("kind,merge", [("lstm", "concat"), ("gru", "ave")])
def test_bidirectional_matches_keras(kind, merge):
    rnn = keras.layers.LSTM if kind == "lstm" else keras.layers.GRU
    layer = _build(keras.layers.Bidirectional(rnn(U, return_sequences=True, return_state=True),
                                              merge_mode=merge), 4)
    frm = interop.from_keras_lstm if kind == "lstm" else interop.from_keras_gru
    model, params = frm(layer)
    assert isinstance(params, jlstm.BidirectionalParams)
    out = U * 2 if merge == "concat" else U
    xs, cot, _ = _data(5, out, 0)
    want = _keras_run(layer, xs, cot, [])  # Keras' states: forward (h, c), then backward (h, c)
    _check(_jlstm_run(model, params, xs, cot, None), want)


def test_go_backwards_outputs_come_in_original_order():
    layer = _build(keras.layers.LSTM(U, return_sequences=True, return_state=True, go_backwards=True), 6)
    model, params = interop.from_keras_lstm(layer)
    xs, _, _ = _data(7, U, 0)
    ys_k, h_k, c_k = layer(xs)
    final, ys = jax.jit(lambda p, x: model.apply(p, x, time_major=False))(params, jnp.asarray(xs))
    np.testing.assert_allclose(ys, np.flip(np.asarray(ys_k), axis=1), **TOL)  # Keras returns them reversed
    np.testing.assert_allclose(final.h, h_k, **TOL)
    np.testing.assert_allclose(final.c, c_k, **TOL)


def test_keras_mask_equals_jlstm_lengths():
    layer = _build(keras.layers.LSTM(U, return_sequences=True, return_state=True), 8)
    model, params = interop.from_keras_lstm(layer)
    xs, _, _ = _data(9, U, 0)
    lengths = np.array([T, 2, 4])
    mask = np.arange(T)[None, :] < lengths[:, None]
    ys_k, h_k, c_k = layer(xs, mask=mask)
    final, ys = jax.jit(lambda p, x, n: model.apply(p, x, lengths=n, time_major=False))(
        params, jnp.asarray(xs), jnp.asarray(lengths))
    np.testing.assert_allclose(np.asarray(ys)[mask], np.asarray(ys_k)[mask], **TOL)
    np.testing.assert_allclose(final.h, h_k, **TOL)
    np.testing.assert_allclose(final.c, c_k, **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_round_trip_keras_jlstm_keras(kind):
    rnn = keras.layers.LSTM if kind == "lstm" else keras.layers.GRU
    frm = interop.from_keras_lstm if kind == "lstm" else interop.from_keras_gru
    to = interop.to_keras_lstm if kind == "lstm" else interop.to_keras_gru
    merge = "concat" if kind == "lstm" else "ave"
    src = _build(keras.layers.Bidirectional(rnn(U, return_sequences=True), merge_mode=merge), 10)
    model, params = frm(src)
    dst = keras.layers.Bidirectional(rnn(U, return_sequences=True), merge_mode=merge)  # to_keras builds it
    weights = to(model, params, dst)
    for a, b, c in zip(src.get_weights(), dst.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match="merge_mode="):
        to(model, params, keras.layers.Bidirectional(rnn(U), merge_mode="sum"))


def test_jlstm_gru_with_both_biases_runs_in_keras():
    model = jlstm.recurrent(jlstm.gru(U))
    rng = np.random.default_rng(11)
    shapes = jax.eval_shape(lambda k: model.init(k, I), jax.random.key(0))
    params = jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape).astype(np.float32)), shapes)
    layer = keras.layers.GRU(U, return_sequences=True, return_state=True)
    interop.to_keras_gru(model, params, layer)
    xs = rng.standard_normal((B, T, I)).astype(np.float32)
    ys_k, h_k = layer(xs)
    final, ys = jax.jit(lambda p, x: model.apply(p, x, time_major=False))(params, jnp.asarray(xs))
    np.testing.assert_allclose(ys, ys_k, **TOL)
    np.testing.assert_allclose(final.h, h_k, **TOL)


def test_use_bias_false():
    layer = _build(keras.layers.LSTM(U, use_bias=False, return_sequences=True), 12)
    model, params = interop.from_keras_lstm(layer)
    assert not np.any(np.asarray(params.b))
    assert len(interop.to_keras_lstm(model, params, layer)) == 2
    bad = params._replace(b=params.b + 1.0)
    with pytest.raises(ValueError, match="use_bias=False"):
        interop.to_keras_lstm(model, bad, layer)


def test_bad_keras_layers():
    with pytest.raises(ValueError, match="activation"):
        interop.from_keras_lstm(_build(keras.layers.LSTM(U, activation="relu"), 0))
    with pytest.raises(ValueError, match="activation"):
        interop.from_keras_gru(_build(keras.layers.GRU(U, recurrent_activation="hard_sigmoid"), 0))
    with pytest.raises(TypeError, match="from_keras_gru"):
        interop.from_keras_lstm(_build(keras.layers.GRU(U), 0))
    with pytest.raises(TypeError, match="keras.layers.GRU"):
        interop.from_keras_gru(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="merge_mode='mul'"):
        interop.from_keras_lstm(_build(keras.layers.Bidirectional(keras.layers.LSTM(U), merge_mode="mul"), 0))
    with pytest.raises(ValueError, match="not built"):
        interop.from_keras_lstm(keras.layers.LSTM(U))
    model, params = interop.from_keras_lstm(_build(keras.layers.LSTM(U), 0))
    with pytest.raises(ValueError, match="units=4"):
        interop.to_keras_lstm(model, params, keras.layers.LSTM(4))
    with pytest.raises(ValueError, match="direction"):
        interop.to_keras_lstm(model, params, keras.layers.Bidirectional(keras.layers.LSTM(U)))
    with pytest.raises(ValueError, match="go_backwards"):
        interop.to_keras_lstm(model, params, keras.layers.LSTM(U, go_backwards=True))
    with pytest.raises(ValueError, match="one at a time"):
        interop.to_keras_lstm(None, (params, params))
    with pytest.raises(TypeError, match="GRUParams"):
        interop.to_keras_gru(None, params)


def test_a_non_layer_is_refused_without_importing_keras(monkeypatch):
    """Where Keras is not imported, the object cannot be a Keras layer: the converter says so instead of
    importing Keras, whose default backend (TensorFlow) may be absent."""
    monkeypatch.setitem(sys.modules, "keras", None)          # `import keras` would now raise
    for convert, name in ((interop.from_keras_lstm, "keras.layers.LSTM"),
                          (interop.from_keras_gru, "keras.layers.GRU")):
        with pytest.raises(TypeError, match=f"expected a {name}.*got list, and Keras is not imported"):
            convert([np.zeros((4, 32)), np.zeros((8, 32)), np.zeros(32)])

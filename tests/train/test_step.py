"""make_train_step / make_eval_step against hand-computed updates; the dense heads against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jlstm.tasks import copy_first

import jlstm
from jlstm.train import (
    dense_apply,
    dense_init,
    last_output,
    losses,
    make_eval_step,
    make_train_step,
    mlp_apply,
    mlp_init,
)

TARGET = {"a": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([[0.5, 0.25]])}


def quad_loss(params, batch, key):
    """Σ (p - batch·t)²: the gradient is 2 (p - batch·t)."""
    loss = sum(jnp.sum((params[k] - batch * TARGET[k]) ** 2) for k in params)
    return loss, {"first": params["a"][0]}


@pytest.mark.parametrize("use_jit", [False, True])
def test_sgd_step_matches_hand_computed_update(use_jit):
    params = {"a": jnp.zeros(3), "b": jnp.ones((1, 2))}
    step = make_train_step(quad_loss, optax.sgd(0.1))
    step = jax.jit(step) if use_jit else step
    opt = optax.sgd(0.1)
    new, _, m = step(params, opt.init(params), jnp.float32(1.0), None)
    grads = {k: 2 * (np.asarray(params[k], np.float64) - np.asarray(TARGET[k])) for k in params}
    for k in params:
        np.testing.assert_allclose(new[k], np.asarray(params[k]) - 0.1 * grads[k], rtol=1e-6)
    norm = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
    np.testing.assert_allclose(m["grad_norm"], norm, rtol=1e-6)
    loss = sum(((np.asarray(params[k]) - np.asarray(TARGET[k])) ** 2).sum() for k in params)
    np.testing.assert_allclose(m["loss"], loss, rtol=1e-6)
    assert float(m["first"]) == 0.0


def test_grad_norm_is_measured_before_clipping():
    params = {"a": jnp.zeros(3), "b": jnp.zeros((1, 2))}
    opt = optax.chain(optax.clip_by_global_norm(1e-2), optax.sgd(1.0))
    step = jax.jit(make_train_step(quad_loss, opt))
    new, _, m = step(params, opt.init(params), jnp.float32(1.0), None)
    grads = [2 * np.asarray(TARGET[k]).ravel() for k in params]
    norm = np.sqrt(sum((g ** 2).sum() for g in grads))
    np.testing.assert_allclose(m["grad_norm"], norm, rtol=1e-6)  # unclipped
    moved = np.sqrt(sum(np.sum(np.asarray(new[k]) ** 2) for k in new))
    np.testing.assert_allclose(moved, 1e-2, rtol=1e-5)  # the update itself was clipped


def test_scalar_loss_and_eval_step():
    step = make_train_step(lambda p, b, k: quad_loss(p, b, k)[0], optax.sgd(0.1))
    params = {"a": jnp.zeros(3), "b": jnp.ones((1, 2))}
    _, _, m = step(params, optax.sgd(0.1).init(params), jnp.float32(1.0), None)
    assert set(m) == {"loss", "grad_norm"}
    ev = jax.jit(make_eval_step(quad_loss))(params, jnp.float32(1.0))
    np.testing.assert_allclose(ev["loss"], m["loss"])
    assert set(ev) == {"loss", "first"}
    with pytest.raises(TypeError, match="loss_fn must return"):
        make_train_step(lambda p, b, k: (1.0, 2.0, 3.0), optax.sgd(0.1))(params, None, None, None)
    with pytest.raises(TypeError, match="optax GradientTransformation"):
        make_train_step(quad_loss, "adam")


def test_lstm_classifier_trains_with_dropout_key():
    """Training smoke: an LSTM + dense head on copy_first, adam, jitted step; the loss falls."""
    enc = jlstm.recurrent(jlstm.lstm(16), recurrent_dropout=0.1)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = (enc.init(k1, 4), dense_init(k2, 16, 4))

    def loss_fn(p, batch, key):
        final, _ = enc.apply(p[0], batch.xs, key=key)
        logits = dense_apply(p[1], final.h)
        return losses.sequence_classification(logits, batch.ys), {
            "acc": losses.classification_accuracy(logits, batch.ys)}

    opt = optax.adam(3e-2)
    step = jax.jit(make_train_step(loss_fn, opt))
    opt_state = opt.init(params)
    batch = copy_first(jax.random.key(1), 64, 6)
    first = None
    for i in range(40):
        params, opt_state, m = step(params, opt_state, batch, jax.random.key(100 + i))
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.5 * first
    assert 0.0 <= float(m["acc"]) <= 1.0 and np.isfinite(float(m["grad_norm"]))


def test_dense_and_mlp_match_numpy():
    p = dense_init(jax.random.key(0), 3, 4)
    assert p.w.shape == (3, 4) and np.all(np.asarray(p.b) == 0)
    bound = np.sqrt(6 / (3 + 4))  # glorot uniform
    assert np.all(np.abs(np.asarray(p.w)) <= bound)
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 3)))
    p = p._replace(b=jnp.arange(4.0))
    np.testing.assert_allclose(dense_apply(p, jnp.asarray(x), jnp.tanh),
                               np.tanh(x @ np.asarray(p.w) + np.arange(4.0)), rtol=1e-5, atol=1e-6)
    layers = mlp_init(jax.random.key(2), [3, 6, 2])
    ref = np.tanh(x @ np.asarray(layers[0].w)) @ np.asarray(layers[1].w)
    np.testing.assert_allclose(mlp_apply(layers, jnp.asarray(x)), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        dense_apply(p, jnp.ones((2, 5)))


def test_last_output_picks_the_last_valid_step():
    ys = jax.random.normal(jax.random.key(0), (5, 3, 2))
    lengths = jnp.array([5, 2, 0])
    got = np.asarray(last_output(ys, lengths))
    np.testing.assert_array_equal(got[0], ys[4, 0])
    np.testing.assert_array_equal(got[1], ys[1, 1])
    np.testing.assert_array_equal(got[2], np.zeros(2))
    np.testing.assert_array_equal(last_output(jnp.swapaxes(ys, 0, 1), time_major=False), ys[-1])
    # for a forward layer it equals the final state's h given the same lengths
    cell = jlstm.lstm(3)
    p = cell.init(jax.random.key(1), 2)
    final, out = jlstm.scan(cell, p, ys, lengths=jnp.array([5, 2, 1]))
    np.testing.assert_allclose(last_output(out, jnp.array([5, 2, 1])), final.h, rtol=1e-6)

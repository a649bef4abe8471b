"""Masked losses and metrics against NumPy transcriptions; padding counts in neither."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jlstm.train import losses


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def rand(key, shape):
    return jax.random.normal(jax.random.key(key), shape)


@pytest.mark.parametrize("use_jit", [False, True])
def test_sequence_classification_matches_numpy_with_weights(use_jit):
    logits, labels = rand(0, (6, 5)), jnp.array([0, 4, 2, 2, 1, 3])
    w = jnp.array([1.0, 0.0, 2.0, 1.0, 0.5, 0.0])
    fn = jax.jit(losses.sequence_classification) if use_jit else losses.sequence_classification
    nll = -np_log_softmax(logits)[np.arange(6), np.asarray(labels)]
    wn = np.asarray(w, np.float64)
    np.testing.assert_allclose(fn(logits, labels, w), (wn * nll).sum() / wn.sum(), rtol=1e-5)
    np.testing.assert_allclose(fn(logits, labels), nll.mean(), rtol=1e-5)


def test_zero_weight_rows_change_nothing_even_with_nan():
    logits, labels = rand(1, (4, 3)), jnp.array([0, 1, 2, 1])
    w = jnp.array([1.0, 1.0, 0.0, 0.0])
    bad = logits.at[2:].set(jnp.nan)
    f = jax.jit(jax.value_and_grad(lambda lg: losses.sequence_classification(lg, labels, w)))
    ref, g_ref = jax.jit(jax.value_and_grad(lambda lg: losses.sequence_classification(lg, labels[:2])))(
        logits[:2])
    value, g = f(bad)
    np.testing.assert_allclose(value, ref, rtol=1e-6)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g[2:]) == 0)
    np.testing.assert_allclose(g[:2], g_ref, rtol=1e-6)
    acc = losses.classification_accuracy(bad, labels, w)
    expected = np.mean(np.argmax(np.asarray(logits[:2]), -1) == np.asarray(labels[:2]))
    np.testing.assert_allclose(acc, expected)


def test_per_step_regression_matches_numpy_and_ignores_padding():
    T, B, F = 5, 3, 2
    preds, targets = rand(2, (T, B, F)), rand(3, (T, B, F))
    lengths = np.array([5, 2, 0])
    mask = np.arange(T)[:, None] < lengths[None]
    sq = ((np.asarray(preds, np.float64) - np.asarray(targets, np.float64)) ** 2).mean(-1)
    ref = sq[mask].mean()
    got = losses.per_step_regression(preds, targets, jnp.asarray(mask))
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    # NaN and garbage in the padding (missing targets) changes neither value nor gradient
    targets_nan = jnp.where(jnp.asarray(mask)[..., None], targets, jnp.nan)
    preds_bad = jnp.where(jnp.asarray(mask)[..., None], preds, 1e30)
    np.testing.assert_allclose(losses.per_step_regression(preds_bad, targets_nan, mask), ref, rtol=1e-5)
    grad = jax.jit(jax.grad(losses.per_step_regression))
    g, g_ref = grad(preds_bad, targets_nan, mask), grad(preds, targets, mask)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)
    assert np.all(np.asarray(g)[~mask] == 0)
    # 2-D predictions, no mask
    np.testing.assert_allclose(losses.per_step_regression(preds[..., 0], targets[..., 0]),
                               ((np.asarray(preds[..., 0]) - np.asarray(targets[..., 0])) ** 2).mean(),
                               rtol=1e-5)


def test_all_padding_gives_zero_not_nan():
    z = losses.per_step_regression(jnp.ones((3, 2, 1)), jnp.zeros((3, 2, 1)), jnp.zeros((3, 2), bool))
    assert float(z) == 0.0
    z = losses.sequence_classification(jnp.ones((2, 3)), jnp.array([0, 1]), jnp.zeros(2))
    assert float(z) == 0.0


def test_language_model_perplexity_and_token_accuracy():
    T, B, V = 4, 3, 7
    logits = rand(4, (T, B, V))
    tokens = jax.random.randint(jax.random.key(5), (T, B), 0, V)
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
    nll = -np.take_along_axis(np_log_softmax(logits), np.asarray(tokens)[..., None], -1)[..., 0]
    ref = nll[mask].mean()
    loss = losses.language_model(logits, tokens, mask)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    np.testing.assert_allclose(losses.perplexity(loss), np.exp(ref), rtol=1e-5)
    # uniform logits: perplexity = vocabulary size
    np.testing.assert_allclose(losses.perplexity(losses.language_model(jnp.zeros((T, B, V)), tokens)), V,
                               rtol=1e-5)
    hits = (np.argmax(np.asarray(logits), -1) == np.asarray(tokens))[mask].mean()
    np.testing.assert_allclose(losses.token_accuracy(logits, tokens, mask), hits, rtol=1e-6)
    # padding tokens may be anything
    np.testing.assert_allclose(losses.language_model(jnp.where(mask[..., None], logits, jnp.nan),
                                                     jnp.where(mask, tokens, 99), mask), ref, rtol=1e-5)


def test_masked_mean():
    v = jnp.array([1.0, jnp.nan, 3.0])
    assert float(losses.masked_mean(v, jnp.array([True, False, True]))) == 2.0
    assert float(losses.masked_mean(jnp.array([1.0, 3.0]))) == 2.0


def test_bad_inputs_raise_with_a_hint():
    with pytest.raises(TypeError, match="integer class indices"):
        losses.sequence_classification(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="labels has shape"):
        losses.sequence_classification(jnp.zeros((2, 3)), jnp.zeros((3,), int))
    with pytest.raises(ValueError, match="mask has shape"):
        losses.per_step_regression(jnp.zeros((3, 2, 1)), jnp.zeros((3, 2, 1)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="targets has shape"):
        losses.per_step_regression(jnp.zeros((3, 2, 1)), jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="weights has shape"):
        losses.sequence_classification(jnp.zeros((2, 3)), jnp.zeros((2,), int), jnp.ones(3))

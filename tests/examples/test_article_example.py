"""The founding article's Keras example, fixed and run in jlstm (python -m jlstm.examples.article)."""

import jax
import jax.numpy as jnp
import numpy as np

from jlstm.examples import article


def test_data_and_model_shapes():
    x, y = article.make_data(0)
    assert x.shape == (100, 10, 10) and x.dtype == np.float32  # (batch, timesteps, features)
    assert y.shape == (100, 10) and np.all(y.sum(1) == 1) and set(np.unique(y)) == {0.0, 1.0}  # one-hot
    params = article.init_params(jax.random.key(0))
    # the parameter count of the Keras model: LSTM 4·(10·10 + 10·10 + 10), Dense 10·10 + 10 twice
    keras_count = 4 * (10 * 10 + 10 * 10 + 10) + 2 * (10 * 10 + 10)
    assert sum(np.size(a) for a in jax.tree.leaves(params)) == keras_count == 1060
    predict = jax.jit(article.predict)
    probs = jax.nn.softmax(predict(params, jnp.asarray(x[:5])))
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    # the prediction reads the last hidden state: changing only the first step changes it too
    x2 = x[:5].copy()
    x2[:, 0] += 1.0
    assert not np.allclose(predict(params, jnp.asarray(x2)), predict(params, jnp.asarray(x[:5])))


def test_run_article_example_trains_and_explains(capsys):
    history = article.run_article_example(seed=0, epochs=10, verbose=True)
    out = capsys.readouterr().out
    assert "(100, 10, 10)" in out and "one-hot" in out and "1060 parameters" in out
    assert "epoch 10/10" in out
    assert len(history.epochs) == 10 and history.loss.shape == (40,)  # 4 batches of 32 (last one padded)
    full_loss = history.epoch_metric("eval_loss")  # on all 100 examples after each epoch
    assert full_loss[-1] < full_loss[0] - 0.02
    assert np.mean(np.diff(full_loss) < 0) >= 0.8
    assert np.all((history.epoch_metric("eval_accuracy") >= 0) & (history.epoch_metric("eval_accuracy") <= 1))
    assert abs(full_loss[0] - np.log(10)) < 0.2  # starts near chance: ln 10

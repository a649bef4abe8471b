"""The founding article's Keras example, fixed and reproduced in jlstm.

The article (section 4) builds this Keras model and trains it on random data::

    model = Sequential()
    model.add(LSTM(10, activation='tanh', input_shape=(10, 10)))
    model.add(Dense(10, activation='tanh'))
    model.add(Dense(10, activation='softmax'))
    model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    x_train = np.random.rand(100, 10)
    y_train = np.random.rand(100, 10)
    model.fit(x_train, y_train, epochs=10, batch_size=32)

As written it is broken in two ways:

1. **Input shape.** ``input_shape=(10, 10)`` means every example is a sequence of 10 time
   steps with 10 features, so the model needs ``x_train`` of shape ``(batch, 10, 10)``.
   ``np.random.rand(100, 10)`` has no time axis, and Keras 3's ``fit`` stops with
   ``ValueError: ... Expected shape (None, 10, 10), but input has incompatible shape
   (32, 10)``. Fix:
   ``x_train = np.random.rand(100, 10, 10)``.
2. **Targets.** Categorical cross-entropy ``-Σ_k y_k log p_k`` compares the softmax output
   with a probability distribution over the 10 classes (normally one-hot labels). The rows
   of ``np.random.rand(100, 10)`` are neither one-hot nor sum to 1, so the "loss" is a
   rescaled, meaningless number and "accuracy" compares arg-maxes of noise. Fix: draw a
   class label per example and one-hot encode it (``y_train = one_hot(randint(0, 10, 100))``).
   (Normalising each row to sum to 1 would also be a valid target; one-hot labels make
   accuracy meaningful.)

The jlstm version below is the same model, the same Keras defaults (Glorot-uniform
kernels, orthogonal recurrent weights, forget-gate bias 1, zero biases), Adam with Keras'
defaults (learning rate 1e-3, ε = 1e-7), categorical cross-entropy, accuracy, 10 epochs of
batch 32 with a reshuffle every epoch, and the prediction read from the LSTM's **last**
hidden state (Keras' ``return_sequences=False``). The labels are random, so there is nothing
to generalise: the loss falls only because the model starts to memorise 100 examples.

Run it with ``python -m jlstm.examples.article``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jlstm
from jlstm.train import History, dense_apply, dense_init, fit, losses
from jlstm.train.fit import FitResult
from jlstm.train.heads import DenseParams

__all__ = ["ArticleParams", "init_params", "make_data", "predict", "run_article_example",
           "train_article_model"]

TIMESTEPS, FEATURES, UNITS, CLASSES = 10, 10, 10, 10
N_EXAMPLES, BATCH_SIZE = 100, 32

lstm_layer = jlstm.recurrent(jlstm.lstm(UNITS))  # LSTM(10, activation='tanh'): tanh is the default


class ArticleParams(NamedTuple):
    """``LSTM(10) -> Dense(10, tanh) -> Dense(10, softmax)``."""

    lstm: jlstm.LSTMParams
    hidden: DenseParams
    out: DenseParams


def init_params(key: jax.Array) -> ArticleParams:
    """Initialise the model with Keras' default initialisers (1,060 parameters, as in Keras)."""
    k1, k2, k3 = jax.random.split(key, 3)
    return ArticleParams(lstm_layer.init(k1, FEATURES), dense_init(k2, UNITS, UNITS),
                         dense_init(k3, UNITS, CLASSES))


def predict(params: ArticleParams, x: jax.Array) -> jax.Array:
    """Logits [B, 10] for ``x`` of shape [B, 10 timesteps, 10 features] (batch-major, like Keras).

    ``softmax(predict(params, x))`` is the Keras model's output.
    """
    final, _ = lstm_layer.apply(params.lstm, x, time_major=False)  # final.h = last hidden state
    hidden = dense_apply(params.hidden, final.h, jnp.tanh)
    return dense_apply(params.out, hidden)


def make_data(seed: int = 0, n: int = N_EXAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """The article's random data, fixed: ``x`` (n, 10, 10) float32, ``y`` (n, 10) one-hot float32."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, TIMESTEPS, FEATURES), dtype=np.float32)
    y = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, n)]
    return x, y


def _loss_fn(params: ArticleParams, batch: tuple[jax.Array, ...], key: Any):
    x, y, weights = batch
    logits = predict(params, x)
    labels = jnp.argmax(y, axis=-1)
    # categorical cross-entropy -Σ y log softmax(logits): with one-hot y this is the
    # integer-label cross-entropy below; accuracy compares arg-maxes as Keras does.
    # weights = 0 marks the rows that pad the last batch (100 = 32 + 32 + 32 + 4).
    return (losses.sequence_classification(logits, labels, weights),
            {"accuracy": losses.classification_accuracy(logits, labels, weights)})


def _batches(x: np.ndarray, y: np.ndarray, order: np.ndarray) -> list[tuple[jax.Array, ...]]:
    """Batches of 32 in ``order``; the last one is padded to 32 with weight-0 rows (one compile)."""
    out = []
    for i in range(0, len(order), BATCH_SIZE):
        idx = order[i:i + BATCH_SIZE]
        n = len(idx)
        idx = np.concatenate([idx, np.zeros(BATCH_SIZE - n, idx.dtype)])
        w = (np.arange(BATCH_SIZE) < n).astype(np.float32)
        out.append((jnp.asarray(x[idx]), jnp.asarray(y[idx]), jnp.asarray(w)))
    return out


def train_article_model(seed: int = 0, epochs: int = 10, verbose: bool = True) -> FitResult:
    """Train the article's model on its (fixed) random data; returns ``(params, opt_state, history)``."""
    x, y = make_data(seed)
    params = init_params(jax.random.key(seed))
    optimizer = optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-7)  # Keras' Adam defaults
    shuffle_key = jax.random.key(seed + 1)

    def batches(epoch: int):  # Keras' fit shuffles the examples every epoch
        order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), len(x)))
        return _batches(x, y, order)

    # eval_* = loss and accuracy on all 100 training examples after each epoch (the
    # article has no validation set); train_* = the mean over the epoch's 4 batches.
    full = [(jnp.asarray(x), jnp.asarray(y), jnp.ones(len(x), jnp.float32))]
    return fit(_loss_fn, params, optimizer, batches, epochs=epochs, eval_data=full, progress=verbose)


def run_article_example(seed: int = 0, epochs: int = 10, verbose: bool = True) -> History:
    """Explain the article's bugs, train the fixed model, print the epochs; return the history.

    Args:
      seed: seeds the data, the initial weights and the shuffling.
      epochs: number of epochs (the article uses 10).
      verbose: print the explanation, a progress bar and per-epoch metrics.

    Returns:
      The :class:`jlstm.train.History`. Per epoch, ``"train_loss"``/``"train_accuracy"``
      are the means over the epoch's batches (what Keras prints) and ``"eval_loss"``/
      ``"eval_accuracy"`` the categorical cross-entropy and accuracy on all 100 training
      examples at the end of the epoch; ``history.loss`` is the per-step loss.
    """
    if verbose:
        print("The article's Keras example, reproduced in jlstm.\n"
              "Fix 1: the model reads sequences of 10 steps x 10 features, so x_train must be\n"
              "       (100, 10, 10); the article's np.random.rand(100, 10) has no time axis, and\n"
              "       Keras stops with 'Expected shape (None, 10, 10), but input has ... (32, 10)'.\n"
              "Fix 2: categorical cross-entropy needs one-hot (or probability) targets; the\n"
              "       article's np.random.rand(100, 10) rows are neither, so they are replaced\n"
              "       by one-hot random class labels.\n"
              "Model: LSTM(10, tanh) -> Dense(10, tanh) -> Dense(10, softmax) on the last hidden\n"
              f"       state; {_count(init_params(jax.random.key(seed)))} parameters; adam(1e-3), "
              f"batch {BATCH_SIZE}, {epochs} epochs.\n")
    result = train_article_model(seed, epochs, verbose)
    history = result.history
    if verbose and history.epochs:
        first, last = history.epochs[0], history.epochs[-1]
        print(f"\nloss on the 100 training examples after epoch 1: {first['eval_loss']:.4f}, after "
              f"epoch {last['epoch']}: {last['eval_loss']:.4f}; accuracy {first['eval_accuracy']:.2f} -> "
              f"{last['eval_accuracy']:.2f} (chance: 0.10).\n"
              "The labels are random: a falling loss means the model is starting to memorise the\n"
              "100 training examples, not that it learned anything that generalises.")
    return history


def _count(params: Any) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


if __name__ == "__main__":  # pragma: no cover
    run_article_example()

"""Autoregressive sampling from a token model, compiled as one ``lax.scan``."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.core import Tracer

__all__ = ["generate", "sample_logits"]


def sample_logits(key: jax.Array | None, logits: jax.Array, *, temperature: float | jax.Array = 1.0,
                  top_k: int | None = None, greedy: bool = False) -> jax.Array:
    """Draw one token per row from ``logits`` [..., V].

    ``greedy`` takes the arg-max. Otherwise the token is drawn from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` highest logits (all of
    them when ``top_k`` is None).

    Returns:
      int32 tokens of shape ``logits.shape[:-1]``.
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if key is None:
        raise TypeError("sample_logits: sampling needs a PRNG key, e.g. jax.random.key(0); or pass greedy=True.")
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("model", "steps", "top_k", "greedy"))
def _generate(model, params, prompt, state, key, temperature, resets, *, steps, top_k, greedy):
    state, logits = model.apply(params, prompt, state, **({} if resets is None else {"resets": resets}))
    keys = jax.random.split(key, steps)

    def body(carry, k):
        state, last = carry
        token = sample_logits(k, last, temperature=temperature, top_k=top_k, greedy=greedy)
        new_state, logits = model.apply(params, token[None], state)
        return (new_state, logits[0]), (token, state)

    (_, _), (tokens, states) = jax.lax.scan(body, (state, logits[-1]), keys)
    # the state after consuming the prompt and tokens[:-1]: feed tokens[-1:] to continue
    return tokens, jax.tree.map(lambda s: s[-1], states)


def _check(model: Any, prompt: jax.Array, steps: int, temperature: Any, top_k: int | None,
           greedy: bool, key: Any) -> None:
    if not (hasattr(model, "apply") and hasattr(model, "initial_state")):
        raise TypeError(f"generate: model must have apply(params, tokens, state) -> (state, logits) and "
                        f"initial_state, e.g. jlstm.train.LanguageModel; got {type(model).__name__}.")
    if not jnp.issubdtype(prompt.dtype, jnp.integer) or prompt.ndim < 1 or prompt.shape[0] < 1:
        raise ValueError(f"generate: prompt must be an int array [T>=1, *batch] of token ids (time-major), "
                         f"got {prompt.dtype} of shape {tuple(prompt.shape)}; for one sequence of tokens "
                         f"pass jnp.asarray(ids)[:, None].")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"generate: steps must be a positive int, got {steps!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"generate: top_k must be a positive int or None, got {top_k!r}.")
    vocab = getattr(model, "vocab_size", None)
    if top_k is not None and vocab is not None and top_k > vocab:
        raise ValueError(f"generate: top_k={top_k} exceeds the vocabulary of {vocab} tokens; pass "
                         f"top_k <= {vocab} or None.")
    if not isinstance(temperature, Tracer) and not float(temperature) > 0:
        raise ValueError(f"generate: temperature must be > 0, got {temperature!r}; for the most likely "
                         f"token at each step pass greedy=True.")
    if key is None and not greedy:
        raise ValueError("generate: sampling needs a PRNG key, e.g. key=jax.random.key(0); or pass "
                         "greedy=True.")


def generate(model: Any, params: Any, prompt: jax.Array, steps: int, key: jax.Array | None = None, *,
             temperature: float = 1.0, top_k: int | None = None, greedy: bool = False,
             state: Any = None, resets: Any = None) -> tuple[jax.Array, Any]:
    """Sample ``steps`` tokens after ``prompt``, feeding each sampled token back in.

    The prompt runs through the model from ``state`` (``None``: the initial state); then
    each step samples a token from the last logits (see :func:`sample_logits`) and feeds it
    back. Everything runs in one jitted ``lax.scan`` with the state carried; the model is a
    static argument, so a model equal by value (:class:`jlstm.train.LanguageModel`) reuses
    the compiled program.

    Args:
      model: a token model with ``apply(params, tokens[T, *batch], state) -> (state,
        logits[T, *batch, V])`` and ``initial_state``, e.g. :class:`jlstm.train.LanguageModel`.
      params: its params.
      prompt: int [T, *batch] tokens (time-major), T >= 1, not yet seen by ``state``.
      steps: the number of tokens to generate.
      key: a PRNG key (not needed with ``greedy=True``).
      temperature: > 0; below 1 sharpens the distribution, towards greedy as it goes to 0.
      top_k: sample only among the k most likely tokens.
      greedy: take the arg-max at every step (no randomness).
      state: the state the prompt starts from, e.g. one returned by a previous call.
      resets: bool [T, *batch] for the prompt (packed documents: the state restarts before a
        step where a document begins), passed to ``model.apply``; ``None``: no reset.

    Returns:
      ``(tokens, state)``: int32 tokens [steps, *batch] and the state after the prompt and
      ``tokens[:-1]``. To continue, call ``generate(model, params, tokens[-1:], n, key2,
      state=state)``: it is the same as one longer call.

    Example:
      >>> lm = jlstm.train.LanguageModel(jlstm.recurrent(jlstm.lstm(8)), vocab_size=6, embed_size=4)
      >>> params = lm.init(jax.random.key(0))
      >>> tokens, state = generate(lm, params, jnp.array([[1], [2]]), 5, jax.random.key(1), top_k=3)
      >>> tokens.shape, bool(((tokens >= 0) & (tokens < 6)).all())
      ((5, 1), True)
    """
    prompt = jnp.asarray(prompt)
    _check(model, prompt, steps, temperature, top_k, greedy, key)
    if state is None:
        state = model.initial_state(params, tuple(prompt.shape[1:]))
    if key is None:
        key = jax.random.key(0)  # unused by greedy decoding
    resets = None if resets is None else jnp.asarray(resets)
    return _generate(model, params, prompt, state, key, jnp.asarray(temperature, jnp.float32), resets,
                     steps=steps, top_k=top_k, greedy=greedy)

"""generate against a Python loop over the model; top-k, temperature, continuation, one compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
import jlstm.train as jt
from jlstm.train.generate import _generate

V = 7
N = 6  # generated steps in every call but one, so that the compiled programs are shared


def make_lm():
    return jt.LanguageModel(jlstm.recurrent(jlstm.lstm(6)), vocab_size=V, embed_size=4)


LM = make_lm()
PARAMS = LM.init(jax.random.key(0))
# sharper logits than at init, so that greedy and sampling differ
PARAMS = PARAMS._replace(readout=PARAMS.readout._replace(w=4.0 * PARAMS.readout.w))
PROMPT = jnp.array([[1, 2], [3, 0], [5, 6]])  # T=3, batch 2
APPLY = jax.jit(LM.apply)


def python_loop(prompt, steps, pick):
    """Reference: feed the prompt, then one token at a time, choosing with ``pick(t, logits)``."""
    state, logits = APPLY(PARAMS, prompt)
    last, out = logits[-1], []
    for t in range(steps):
        token = pick(t, last)
        out.append(token)
        state, logits = APPLY(PARAMS, token[None], state)
        last = logits[0]
    return np.stack(out)


def test_greedy_equals_a_python_argmax_loop():
    tokens, _ = jt.generate(LM, PARAMS, PROMPT, N, greedy=True)
    ref = python_loop(PROMPT, N, lambda t, logits: jnp.argmax(logits, -1).astype(jnp.int32))
    np.testing.assert_array_equal(tokens, ref)
    assert tokens.dtype == jnp.int32 and tokens.shape == (N, 2)


def test_sampling_equals_a_python_loop_with_the_same_keys():
    key = jax.random.key(3)
    keys = jax.random.split(key, N)
    tokens, _ = jt.generate(LM, PARAMS, PROMPT, N, key, temperature=0.5)
    ref = python_loop(PROMPT, N, lambda t, logits: jax.random.categorical(keys[t], logits / 0.5, -1))
    np.testing.assert_array_equal(tokens, ref)
    greedy, _ = jt.generate(LM, PARAMS, PROMPT, N, greedy=True)
    assert not np.array_equal(jt.generate(LM, PARAMS, PROMPT, N, key)[0], greedy)


def test_temperature_towards_zero_is_greedy():
    greedy, _ = jt.generate(LM, PARAMS, PROMPT, N, greedy=True)
    cold, _ = jt.generate(LM, PARAMS, PROMPT, N, jax.random.key(5), temperature=1e-4)
    np.testing.assert_array_equal(cold, greedy)


def test_top_k_never_samples_outside_the_top_k_and_keeps_their_odds():
    logits = jnp.log(jnp.array([0.05, 0.3, 0.1, 0.02, 0.25, 0.2, 0.08]))
    draws = jax.vmap(lambda k: jt.sample_logits(k, logits, top_k=3))(jax.random.split(jax.random.key(0), 20000))
    assert set(np.unique(draws).tolist()) <= {1, 4, 5}
    freq = np.bincount(np.asarray(draws), minlength=V)[[1, 4, 5]] / 20000
    np.testing.assert_allclose(freq, np.array([0.3, 0.25, 0.2]) / 0.75, atol=0.02)
    # through the model: every sampled token is among the k best of its step
    tokens, _ = jt.generate(LM, PARAMS, PROMPT, N, jax.random.key(1), top_k=2, temperature=2.0)
    best = []

    def replay(t, logits):  # feed the sampled tokens back, recording each step's two best tokens
        best.append(np.argsort(-np.asarray(logits), -1)[:, :2])
        return tokens[t]

    python_loop(PROMPT, N, replay)
    assert all(int(tokens[t, b]) in best[t][b] for t in range(N) for b in range(2))
    top1, _ = jt.generate(LM, PARAMS, PROMPT, N, jax.random.key(1), top_k=1)
    np.testing.assert_array_equal(top1, jt.generate(LM, PARAMS, PROMPT, N, greedy=True)[0])


def test_continuing_from_the_returned_state_equals_one_longer_call():
    a, state = jt.generate(LM, PARAMS, PROMPT, N // 2, greedy=True)
    b, _ = jt.generate(LM, PARAMS, a[-1:], N // 2, greedy=True, state=state)
    both, _ = jt.generate(LM, PARAMS, PROMPT, N, greedy=True)
    np.testing.assert_array_equal(np.concatenate([a, b]), both)
    # the returned state is the model's state after the prompt and a[:-1]
    ref_state, _ = APPLY(PARAMS, jnp.concatenate([PROMPT, a[:-1]]))
    np.testing.assert_allclose(state.h, ref_state.h, rtol=1e-5, atol=1e-6)


def test_a_rebuilt_model_reuses_the_compiled_program():
    jt.generate(LM, PARAMS, PROMPT, N, greedy=True)
    before = _generate._cache_size()
    for _ in range(3):
        jt.generate(make_lm(), PARAMS, PROMPT, N, greedy=True)
    assert _generate._cache_size() == before


def test_bad_calls_say_how_to_fix_them():
    with pytest.raises(ValueError, match=r"int array \[T>=1, \*batch\]"):
        jt.generate(LM, PARAMS, jnp.ones((3, 2)), 4, greedy=True)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        jt.generate(LM, PARAMS, PROMPT, 0, greedy=True)
    with pytest.raises(ValueError, match="greedy=True"):
        jt.generate(LM, PARAMS, PROMPT, 4, jax.random.key(0), temperature=0.0)
    with pytest.raises(ValueError, match="exceeds the vocabulary of 7"):
        jt.generate(LM, PARAMS, PROMPT, 4, jax.random.key(0), top_k=8)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        jt.generate(LM, PARAMS, PROMPT, 4)
    with pytest.raises(TypeError, match="LanguageModel"):
        jt.generate(object(), PARAMS, PROMPT, 4, greedy=True)

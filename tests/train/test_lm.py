"""LanguageModel against a hand-written embedding → encoder → dense; lm_chunks against NumPy slicing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
import jlstm.train as jt


def test_apply_is_embedding_then_encoder_then_readout():
    enc = jlstm.stack(jlstm.recurrent(jlstm.lstm(5)), jlstm.recurrent(jlstm.gru(4)))
    lm = jt.LanguageModel(enc, vocab_size=6, embed_size=3)
    params = lm.init(jax.random.key(0))
    assert params.embed.shape == (6, 3) and params.readout.w.shape == (4, 6)
    tokens = jnp.array([[0, 5], [2, 2], [4, 1]])
    state, logits = lm.apply(params, tokens)
    onehot = np.eye(6, dtype=np.float32)[np.asarray(tokens)]
    ref_state, hs = enc.apply(params.encoder, jnp.asarray(onehot @ np.asarray(params.embed)))
    np.testing.assert_allclose(logits, hs @ params.readout.w + params.readout.b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # from a given state; the int batch size of initial_state
    s0 = lm.initial_state(params, 2)
    np.testing.assert_allclose(lm.apply(params, tokens, s0)[1], logits, rtol=1e-6)
    loss, _, metrics = lm.loss(params, s0, jt.LMChunk(tokens[:2], tokens[1:], np.array([True, True])))
    np.testing.assert_allclose(metrics["bits_per_token"], loss / np.log(2), rtol=1e-6)


def test_equal_and_hashable_by_value():
    a = jt.LanguageModel(jlstm.recurrent(jlstm.lstm(8)), 10, 4)
    assert a == jt.LanguageModel(jlstm.recurrent(jlstm.lstm(8)), 10, 4) and hash(a) == hash(
        jt.LanguageModel(jlstm.recurrent(jlstm.lstm(8)), 10, 4))
    assert a != jt.LanguageModel(jlstm.recurrent(jlstm.lstm(8)), 11, 4)


def test_lm_chunks_are_consecutive_slices_of_parallel_streams():
    tokens = np.arange(103) % 17
    chunks = jt.lm_chunks(tokens, batch_size=4, chunk_len=6)
    per_row = 102 // 4
    assert len(chunks) == per_row // 6
    for i, c in enumerate(chunks):
        for b in range(4):
            start = b * per_row + i * 6
            np.testing.assert_array_equal(c.xs[:, b], tokens[start:start + 6])
            np.testing.assert_array_equal(c.ys[:, b], tokens[start + 1:start + 7])
        assert c.reset.tolist() == [i == 0] * 4 and c.xs.dtype == np.int32


def test_bad_inputs_say_what_to_do():
    with pytest.raises(TypeError, match="SequenceModel"):
        jt.LanguageModel(jlstm.lstm(4), 5, 3)
    lm = jt.LanguageModel(jlstm.recurrent(jlstm.lstm(4)), 5, 3)
    with pytest.raises(TypeError, match="token ids"):
        lm.apply(lm.init(jax.random.key(0)), jnp.ones((3, 2)))
    with pytest.raises(TypeError, match="1-D int array"):
        jt.lm_chunks(np.ones((3, 4), np.int32), 2, 2)
    with pytest.raises(ValueError, match="at least 9 tokens"):
        jt.lm_chunks(np.arange(8), 2, 4)

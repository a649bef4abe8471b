"""Streaming: running chunk by chunk and carrying the final state equals one long run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm import streaming

T, B, I, H = 11, 3, 4, 5
SIZES = (4, 5, 2)                 # uneven chunks; the last length ends inside the second chunk
LENGTHS = jnp.array([11, 6, 0])

CELLS = {
    "lstm": jlstm.lstm(H),
    "lstm_diagonal": jlstm.lstm(H, peephole="diagonal"),
    "lstm_full_proj_clip": jlstm.lstm(H, peephole="full", proj_size=3, cell_clip=0.5),
    "gru": jlstm.gru(H),
    "rnn": jlstm.simple_rnn(H),
    "ln_lstm": jlstm.layer_norm_lstm(H),
}
MODELS = {
    **CELLS,
    "stack": jlstm.stack(jlstm.recurrent(jlstm.lstm(H)), jlstm.recurrent(jlstm.gru(H)),
                         jlstm.recurrent(jlstm.layer_norm_lstm(H))),
}


def split(xs):
    return [xs[a:a + n] for a, n in zip(np.cumsum((0,) + SIZES[:-1]), SIZES)]


def whole_run(model, params, xs, lengths=None, mask=None):
    if isinstance(model, jlstm.Cell):
        return jlstm.scan(model, params, xs, lengths=lengths, mask=mask)
    return model.apply(params, xs, lengths=lengths, mask=mask)


def close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# every model with lengths in the stream; without them for the fused LSTM path and the stack
CASES = [(name, True) for name in MODELS] + [("lstm", False), ("stack", False)]


@pytest.mark.parametrize("name,with_lengths", CASES)
def test_chunks_equal_one_run(name, with_lengths):
    model = MODELS[name]
    params = model.init(jax.random.key(1), I)
    xs = jax.random.normal(jax.random.key(2), (T, B, I))
    lengths = LENGTHS if with_lengths else None
    final, ys = whole_run(model, params, xs, lengths)
    step = jax.jit(streaming.make_stream_step(model))
    out = list(streaming.stream(step, params, split(xs), lengths=lengths))
    assert len(out) == len(SIZES)
    close(out[-1][0], final)
    close(jnp.concatenate([y for _, y in out]), ys)
    if with_lengths:
        np.testing.assert_array_equal(out[-1][1][:, 1:], 0.0)        # sequences 1, 2 ended before chunk 3
        close(jax.tree.map(lambda a: a[1], out[1][0]), jax.tree.map(lambda a: a[1], final))


def test_masks_per_chunk_and_python_loop():
    """Chunked with a per-step mask = one run with the mask = a Python loop over cell.step."""
    cell = CELLS["lstm"]
    params = cell.init(jax.random.key(3), I)
    xs = jax.random.normal(jax.random.key(4), (T, B, I))
    mask = jax.random.bernoulli(jax.random.key(5), 0.7, (T, B))
    step = streaming.make_stream_step(cell)
    state = None
    ys = []
    for xc, mc in zip(split(xs), split(mask)):
        state, y = step(params, state, xc, mask=mc)
        ys.append(y)
    s = cell.initial_state(params, (B,))
    ref = []
    for t in range(T):
        new, y = cell.step(params, s, xs[t])
        m = mask[t][:, None]
        s = jax.tree.map(lambda n, o: jnp.where(m, n, o), new, s)
        ref.append(jnp.where(m, y, 0.0))
    close(state, s)
    close(jnp.concatenate(ys), jnp.stack(ref))


def test_chunk_lengths_and_errors():
    np.testing.assert_array_equal(streaming.chunk_lengths(jnp.array([0, 3, 5, 9]), 4, 4), [0, 0, 1, 4])
    with pytest.raises(TypeError, match="integers"):
        streaming.chunk_lengths(jnp.array([1.0]), 0, 2)
    with pytest.raises(TypeError, match="Cell or a jlstm.SequenceModel"):
        streaming.make_stream_step(lambda p, x: x)

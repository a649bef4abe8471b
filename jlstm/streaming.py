"""Streaming (stateful) inference: run a sequence chunk by chunk, carrying the state.

A recurrent model's final state is all it needs to continue, so feeding a long sequence
in chunks (audio frames, sensor readings, tokens as they arrive) and passing each chunk's
final state to the next gives exactly the outputs and final state of one long run. This
holds for every cell and for stacks of forward layers; a bidirectional layer cannot
stream, since its backward direction needs the future.

Per-sequence lengths of the *whole* stream become per-chunk lengths with
:func:`chunk_lengths`: a sequence that has ended keeps its state and outputs zeros in
later chunks. :func:`stream` does this bookkeeping for an iterable of chunks::

    step = jax.jit(jlstm.streaming.make_stream_step(jlstm.lstm(128)))
    state = None
    for state, ys in jlstm.streaming.stream(step, params, chunks, lengths=lengths):
        consume(ys)                                  # ys: [chunk_T, B, 128]
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp

from jlstm._scan import scan
from jlstm.core.types import Cell, SequenceModel

__all__ = ["chunk_lengths", "make_stream_step", "stream"]


def chunk_lengths(lengths: jax.Array, start: int, size: int) -> jax.Array:
    """The lengths, within the chunk of ``size`` steps that starts at step ``start``, of sequences of ``lengths``.

    ``clip(lengths - start, 0, size)``: a full chunk for a sequence still running, the rest
    of it for one that ends inside the chunk, 0 for one that has ended.
    """
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"chunk_lengths: lengths must be integers, got dtype {lengths.dtype}; pass "
                        f"lengths.astype(jnp.int32).")
    return jnp.clip(lengths - start, 0, size).astype(lengths.dtype)


def make_stream_step(model: Cell | SequenceModel, **options: Any) -> Callable[..., tuple[Any, jax.Array]]:
    """One streaming step: ``step(params, state, chunk, lengths=None) -> (state, ys)``.

    Args:
      model: a :class:`jlstm.Cell` (run with :func:`jlstm.scan`) or a forward
        :class:`jlstm.SequenceModel` (``jlstm.recurrent``, ``jlstm.stack`` of them).
      **options: keyword options for ``jlstm.scan`` (``unroll``, ``fast``...) or for the
        model's ``apply`` (``mask`` is per chunk and goes to the step instead).

    Returns:
      ``step(params, state, chunk, lengths=None, mask=None, resets=None) -> (state, ys)``:
      ``state=None`` starts from zeros; ``chunk`` is ``[T_chunk, *batch, input_size]``
      (time-major); ``lengths``/``mask``/``resets`` are this chunk's (see :func:`chunk_lengths`;
      a reset at a chunk's first step restarts the carried state). Pure: jit it.
    """
    if isinstance(model, Cell):
        def scan_chunk(params, state, chunk, lengths=None, mask=None, resets=None):
            return scan(model, params, chunk, state, lengths=lengths, mask=mask, resets=resets, **options)

        return scan_chunk
    if isinstance(model, SequenceModel):
        def apply_chunk(params, state, chunk, lengths=None, mask=None, resets=None):
            extra = {} if resets is None else {"resets": resets}
            return model.apply(params, chunk, state, lengths=lengths, mask=mask, **extra, **options)

        return apply_chunk
    raise TypeError(f"make_stream_step: model must be a jlstm.Cell or a jlstm.SequenceModel, got "
                    f"{type(model).__name__}.")


def stream(
    step: Callable[..., tuple[Any, jax.Array]],
    params: Any,
    chunks: Iterable[jax.Array],
    state: Any = None,
    *,
    lengths: jax.Array | None = None,
    resets: jax.Array | None = None,
) -> Iterator[tuple[Any, jax.Array]]:
    """Run ``step`` over ``chunks`` in order, carrying the state; yield ``(state, ys)`` per chunk.

    Args:
      step: from :func:`make_stream_step` (jitted or not).
      params: the model's params.
      chunks: time-major arrays ``[T_k, *batch, input_size]``; their sizes may differ.
      state: the state to start from (``None``: zeros).
      lengths: int ``[*batch]``, the length of each sequence over the whole stream; each
        chunk gets its share via :func:`chunk_lengths`.
      resets: bool ``[T_total, *batch]`` over the whole stream (time-major); each chunk gets its
        slice.

    Yields:
      ``(state, ys)`` after each chunk; concatenating the ``ys`` along time gives the outputs
      of one run over the whole sequence.
    """
    start = 0
    for chunk in chunks:
        size = chunk.shape[0]
        lens = None if lengths is None else chunk_lengths(lengths, start, size)
        extra = {} if resets is None else {"resets": resets[start:start + size]}
        state, ys = step(params, state, chunk, lens, **extra)
        start += size
        yield state, ys

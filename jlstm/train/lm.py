"""A token-level language model: embedding → any jlstm sequence model → dense read-out.

``logits_t = W_o h_t + b_o``, ``h = encoder(E[tokens])``, trained on next-token prediction
with a carried state (see :mod:`jlstm.train.stateful`) and sampled with
:func:`jlstm.train.generate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

import jlstm.train.losses as losses
from jlstm.core import checks as _checks
from jlstm.core.types import SequenceModel
from jlstm.train.heads import DenseParams, dense_apply, dense_init

__all__ = ["LMChunk", "LMParams", "LanguageModel", "lm_chunks"]


class LMParams(NamedTuple):
    """A language model's params: ``embed`` [V, E], the encoder's params, the read-out [H → V]."""

    embed: jax.Array
    encoder: Any
    readout: DenseParams


class LMChunk(NamedTuple):
    """One chunk of a token stream for truncated BPTT.

    Attributes:
      xs: int [T, B] input tokens.
      ys: int [T, B] targets, the tokens one step later.
      reset: bool [B], True where a new stream starts (the carried state is reset there).
      resets: bool [T, B] or ``None``: True where a document starts inside the chunk (packed
        documents, see ``lm_chunks(..., starts=)``); the state restarts before that step.
    """

    xs: np.ndarray
    ys: np.ndarray
    reset: np.ndarray
    resets: np.ndarray | None = None


@dataclass(frozen=True)
class LanguageModel:
    """Embedding, a sequence model and a read-out; equal and hashable by value.

    Attributes:
      encoder: a :class:`jlstm.SequenceModel` (``jlstm.recurrent(jlstm.lstm(256))``, a stack...).
      vocab_size: the number of tokens V.
      embed_size: the embedding width E.

    Example:
      >>> lm = LanguageModel(jlstm.recurrent(jlstm.lstm(16)), vocab_size=5, embed_size=8)
      >>> params = lm.init(jax.random.key(0))
      >>> state, logits = lm.apply(params, jnp.zeros((7, 2), jnp.int32))   # time-major [T, B]
      >>> logits.shape, lm == LanguageModel(jlstm.recurrent(jlstm.lstm(16)), 5, 8)
      ((7, 2, 5), True)
    """

    encoder: SequenceModel
    vocab_size: int
    embed_size: int

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, SequenceModel):
            raise TypeError(f"LanguageModel: encoder must be a jlstm.SequenceModel such as "
                            f"jlstm.recurrent(jlstm.lstm(128)), got {type(self.encoder).__name__}.")
        _checks.check_size("vocab_size", self.vocab_size)
        _checks.check_size("embed_size", self.embed_size)

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> LMParams:
        """Embedding ~ N(0, 1/E), the encoder's own init, a Glorot read-out with zero bias."""
        k_e, k_enc, k_o = jax.random.split(key, 3)
        embed = jax.random.normal(k_e, (self.vocab_size, self.embed_size), dtype) / math.sqrt(self.embed_size)
        return LMParams(embed, self.encoder.init(k_enc, self.embed_size),
                        dense_init(k_o, self.encoder.output_size, self.vocab_size, dtype=dtype))

    def initial_state(self, params: LMParams, batch_shape: int | tuple = ()) -> Any:
        """The encoder's initial state for ``batch_shape`` (an int B means (B,))."""
        return self.encoder.initial_state(params.encoder, batch_shape)

    def apply(self, params: LMParams, tokens: ArrayLike, state: Any = None, *,
              key: jax.Array | None = None, resets: ArrayLike | None = None) -> tuple[Any, jax.Array]:
        """Run int ``tokens`` [T, *batch] from ``state`` (None: the initial state); ``resets``
        (bool [T, *batch]) restarts the state before the steps where a document starts.

        Returns:
          ``(final_state, logits)`` with logits [T, *batch, V]; ``logits[t]`` scores token t+1.
        """
        tokens = jnp.asarray(tokens)
        if not jnp.issubdtype(tokens.dtype, jnp.integer) or tokens.ndim < 1:
            raise TypeError(f"LanguageModel.apply: tokens must be an int array [T, *batch] of token ids, "
                            f"got {tokens.dtype} of shape {tuple(tokens.shape)}; convert text with a "
                            f"vocabulary first.")
        xs = params.embed[tokens]
        extra = {} if resets is None else {"resets": jnp.asarray(resets)}
        state, hs = self.encoder.apply(params.encoder, xs, state, key=key, **extra)
        return state, dense_apply(params.readout, hs)

    def loss(self, params: LMParams, state: Any, chunk: LMChunk, key: jax.Array | None = None):
        """Stateful next-token loss for :func:`make_stateful_train_step` and ``fit(carry=...)``.

        Returns:
          ``(nats per token, final_state, {"bits_per_token", "accuracy"})``.
        """
        state, logits = self.apply(params, chunk.xs, state, key=key, resets=getattr(chunk, "resets", None))
        nll = losses.language_model(logits, chunk.ys)
        return nll, state, {"bits_per_token": nll / math.log(2),
                            "accuracy": losses.token_accuracy(logits, chunk.ys)}


def lm_chunks(tokens: Any, batch_size: int, chunk_len: int, *, starts: Any = None) -> list[LMChunk]:
    """Cut one token stream into consecutive chunks of ``batch_size`` parallel streams.

    The stream is split into ``batch_size`` contiguous pieces of equal length (the tail that
    does not fit is dropped); chunk ``i`` holds steps ``[i·T, (i+1)·T)`` of every piece, so the
    state after chunk ``i`` is the right initial state for chunk ``i + 1``. ``reset`` is True
    in the first chunk only. ``starts`` (bool, one flag per token: True where a document begins)
    gives each chunk its ``resets``, cut like ``xs``, for packed documents.

    Example:
      >>> chunks = lm_chunks(np.arange(21), batch_size=2, chunk_len=4)
      >>> len(chunks), chunks[0].xs[:, 1].tolist(), chunks[0].ys[:, 1].tolist(), chunks[1].reset.tolist()
      (2, [10, 11, 12, 13], [11, 12, 13, 14], [False, False])
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"lm_chunks: tokens must be a 1-D int array (one token stream), got {tokens.dtype} "
                        f"of shape {tokens.shape}.")
    _checks.check_size("batch_size", batch_size)
    _checks.check_size("chunk_len", chunk_len)
    per_row = (len(tokens) - 1) // batch_size
    n = per_row // chunk_len
    if n < 1:
        raise ValueError(f"lm_chunks: {len(tokens)} tokens give fewer than one chunk of {chunk_len} steps in "
                         f"{batch_size} streams; need at least {batch_size * chunk_len + 1} tokens.")
    rows = np.stack([tokens[b * per_row: b * per_row + n * chunk_len + 1] for b in range(batch_size)], 1)
    rows = rows.astype(np.int32)
    flags = None
    if starts is not None:
        starts = np.asarray(starts)
        if starts.shape != tokens.shape or starts.dtype != np.bool_:
            raise TypeError(f"lm_chunks: starts must be a bool array like tokens {tokens.shape}, got "
                            f"{starts.dtype} of shape {starts.shape}.")
        flags = np.stack([starts[b * per_row: b * per_row + n * chunk_len] for b in range(batch_size)], 1)
    return [LMChunk(rows[i * chunk_len:(i + 1) * chunk_len], rows[i * chunk_len + 1:(i + 1) * chunk_len + 1],
                    np.full((batch_size,), i == 0),
                    None if flags is None else flags[i * chunk_len:(i + 1) * chunk_len]) for i in range(n)]

"""Training with optax: masked losses, pure train/eval steps, heads, :func:`fit`, language models.

``import jlstm.train`` gives:

* :mod:`jlstm.train.losses`: masked losses and metrics (padding counts in neither).
* :func:`make_train_step` / :func:`make_eval_step`: pure steps, ready for ``jax.jit``.
* :func:`make_stateful_train_step` / :func:`make_stateful_eval_step`: the same with a carried
  recurrent state (truncated BPTT) and per-sequence ``reset``.
* :func:`dense_init` / :func:`dense_apply` (and ``mlp_*``, ``last_output``): read-out heads.
* :class:`LanguageModel`, :func:`lm_chunks`, :func:`generate`: token models, their training
  chunks and autoregressive sampling.
* :func:`fit`: the loop, with a progress bar or per-epoch lines, evaluation, early stopping,
  clipping, checkpoints, resume, a carried state (:class:`Carry`) and preemption
  (:class:`Preempted`, exit status 75); :func:`evaluate`: the mean metrics over a data set.
"""

from jlstm.train import losses
from jlstm.train.fit import Carry, FitResult, History, evaluate, fit
from jlstm.train.generate import generate, sample_logits
from jlstm.train.heads import DenseParams, dense_apply, dense_init, last_output, mlp_apply, mlp_init
from jlstm.train.lm import LanguageModel, LMChunk, LMParams, lm_chunks
from jlstm.train.preemption import PREEMPTED_EXIT_CODE, Preempted
from jlstm.train.stateful import make_stateful_eval_step, make_stateful_train_step, reset_state
from jlstm.train.step import make_eval_step, make_train_step

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "Carry",
    "DenseParams",
    "FitResult",
    "History",
    "LMChunk",
    "LMParams",
    "LanguageModel",
    "Preempted",
    "dense_apply",
    "dense_init",
    "evaluate",
    "fit",
    "generate",
    "last_output",
    "lm_chunks",
    "losses",
    "make_eval_step",
    "make_stateful_eval_step",
    "make_stateful_train_step",
    "make_train_step",
    "mlp_apply",
    "mlp_init",
    "reset_state",
    "sample_logits",
]

"""Training with optax: masked losses, pure train/eval steps, dense heads and :func:`fit`.

``import jlstm.train`` gives:

* :mod:`jlstm.train.losses`: masked losses and metrics (padding counts in neither).
* :func:`make_train_step` / :func:`make_eval_step`: pure steps, ready for ``jax.jit``.
* :func:`dense_init` / :func:`dense_apply` (and ``mlp_*``, ``last_output``): read-out heads.
* :func:`fit`: the loop, with a tqdm bar, evaluation, early stopping, clipping and checkpoints.
"""

from jlstm.train import losses
from jlstm.train.fit import FitResult, History, fit
from jlstm.train.heads import DenseParams, dense_apply, dense_init, last_output, mlp_apply, mlp_init
from jlstm.train.step import make_eval_step, make_train_step

__all__ = [
    "DenseParams",
    "FitResult",
    "History",
    "dense_apply",
    "dense_init",
    "fit",
    "last_output",
    "losses",
    "make_eval_step",
    "make_train_step",
    "mlp_apply",
    "mlp_init",
]

"""A training loop: jitted steps, progress bar, evaluation, early stopping, checkpoints."""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterable, NamedTuple

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jlstm import checkpoint as _ckpt
from jlstm.train.step import LossFn, make_eval_step, make_train_step

__all__ = ["FitResult", "History", "fit"]

_MAX_MODES = ("acc", "accuracy", "f1", "auc", "r2")


class History(NamedTuple):
    """What happened during :func:`fit`, ready to plot.

    Attributes:
      steps: per optimizer step, one float array per metric: ``"loss"``, ``"grad_norm"``
        (global L2 norm of the gradients before clipping) and the loss function's metrics.
      epochs: one dict per epoch: ``"epoch"`` (1-based), ``"step"`` (optimizer steps so
        far), ``"train_<metric>"`` (the mean over the epoch's steps) and ``"eval_<metric>"``.
      best_epoch: the 1-based epoch with the best monitored value (``None`` before any).
      stopped_early: whether early stopping ended training.
      monitor: the monitored metric's name.
    """

    steps: dict[str, np.ndarray]
    epochs: list[dict[str, float]]
    best_epoch: int | None
    stopped_early: bool
    monitor: str | None

    @property
    def loss(self) -> np.ndarray:
        """Per-step training loss."""
        return self.steps["loss"]

    @property
    def grad_norm(self) -> np.ndarray:
        """Per-step gradient norm (before clipping)."""
        return self.steps["grad_norm"]

    def epoch_metric(self, name: str) -> np.ndarray:
        """One per-epoch metric as an array, e.g. ``history.epoch_metric("eval_loss")``."""
        if not self.epochs or name not in self.epochs[0]:
            have = sorted(self.epochs[0]) if self.epochs else []
            raise KeyError(f"no per-epoch metric {name!r}; available: {have}.")
        return np.asarray([e[name] for e in self.epochs], dtype=np.float64)


class FitResult(NamedTuple):
    """``(params, opt_state, history)`` returned by :func:`fit`."""

    params: Any
    opt_state: Any
    history: History


def _batches(data: Any, epoch: int, name: str, epochs: int) -> Iterable[Any]:
    if callable(data):
        return data(epoch)
    if not hasattr(data, "__iter__"):
        raise TypeError(f"fit: {name} must be an iterable of batches or a callable epoch -> iterable, "
                        f"got {type(data).__name__}.")
    if iter(data) is data and epochs > 1:
        raise TypeError(
            f"fit: {name} is a one-shot iterator (a generator?) but epochs={epochs}; it would be empty "
            f"after the first epoch. Pass a list of batches or a callable such as "
            f"`lambda epoch: make_batches(epoch)`.")
    return data


def _scalar(name: str, value: Any) -> float:
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(f"fit: metric {name!r} must be a scalar, got shape {arr.shape}; reduce it "
                         f"with a mean inside loss_fn.")
    return float(arr)


def _mode_for(monitor: str, mode: str) -> str:
    if mode == "auto":
        return "max" if any(s in monitor.lower() for s in _MAX_MODES) else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"fit: mode must be 'min', 'max' or 'auto', got {mode!r}.")
    return mode


def _improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _ordered(metrics: dict[str, Any]) -> list[str]:
    names = [n for n in metrics if n not in ("loss", "grad_norm")]
    return ["loss"] + names + ["grad_norm"] if "grad_norm" in metrics else ["loss"] + names


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch", "step"))


def fit(
    loss_fn: LossFn,
    params: Any,
    optimizer: optax.GradientTransformation,
    train_data: Any,
    *,
    epochs: int = 1,
    key: jax.Array | None = None,
    opt_state: Any = None,
    eval_data: Any = None,
    eval_fn: Callable[[Any], dict[str, Any]] | None = None,
    clip_norm: float | None = None,
    monitor: str | None = None,
    mode: str = "auto",
    patience: int | None = None,
    min_delta: float = 0.0,
    restore_best: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    jit: bool = True,
) -> FitResult:
    """Train ``params`` with ``optimizer`` on ``loss_fn`` for some epochs.

    Each epoch runs the jitted :func:`make_train_step` over ``train_data``'s batches (a tqdm
    bar shows the running loss), then evaluates ``loss_fn`` on ``eval_data`` without a key
    (dropout off) and/or calls ``eval_fn``, records everything in the :class:`History`,
    applies early stopping and writes a checkpoint.

    Gradient clipping is an optax transformation: either pass ``clip_norm=1.0`` (``fit`` then
    uses ``optax.chain(optax.clip_by_global_norm(1.0), optimizer)``) or chain it yourself.
    ``history.grad_norm`` is always the norm before clipping.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)`` (or just ``loss``).
      params: the initial params pytree.
      optimizer: an optax ``GradientTransformation``.
      train_data: a re-iterable of batches (a list), or a callable ``epoch -> iterable``
        (epochs count from 0) for fresh data each epoch. A batch is any pytree of arrays.
      epochs: the number of epochs (in total, when resuming).
      key: a PRNG key; step ``n`` gets ``fold_in(key, n)``. ``None`` passes ``key=None``
        to ``loss_fn`` (no dropout).
      opt_state: the optimizer state to start from; default ``optimizer.init(params)``.
      eval_data: batches (same forms as ``train_data``) for ``eval_<metric>``: the mean over
        batches of ``loss_fn(params, batch, None)``'s loss and metrics.
      eval_fn: ``eval_fn(params) -> dict`` of scalar metrics, recorded as ``eval_<name>``.
      clip_norm: if set, clip gradients to this global L2 norm before ``optimizer``.
      monitor: the per-epoch metric for early stopping and ``restore_best``; default
        ``"eval_loss"`` when there is evaluation, else ``"train_loss"``.
      mode: ``"min"``, ``"max"`` or ``"auto"`` (max for names containing "acc", "f1", ...).
      patience: stop after this many epochs without improvement of ``monitor`` by more than
        ``min_delta``; ``None`` never stops early.
      min_delta: the smallest change that counts as an improvement.
      restore_best: return the params of the best epoch instead of the last ones (the
        optimizer state returned is still the last one).
      checkpoint_path: if set, save params, optimizer state, step and history there after
        every epoch (atomically, see :mod:`jlstm.checkpoint`).
      resume: continue from ``checkpoint_path`` if it exists: same result as an
        uninterrupted run, given deterministic data and key.
      config: JSON-serialisable model configuration stored in the checkpoint.
      progress: show a tqdm bar per epoch (stderr) and one summary line per epoch (stdout).
      jit: ``jax.jit`` the steps (turn off to debug with prints).

    Returns:
      :class:`FitResult` ``(params, opt_state, history)``.

    Example:
      >>> def loss_fn(params, batch, key):
      ...     final, _ = model.apply(params[0], batch.xs, key=key)
      ...     logits = dense_apply(params[1], final.h)
      ...     return (losses.sequence_classification(logits, batch.ys),
      ...             {"acc": losses.accuracy(logits, batch.ys)})
      >>> params, opt_state, history = fit(loss_fn, params, optax.adam(1e-3), batches,
      ...                                  epochs=10, eval_data=val, patience=3, restore_best=True)
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}.")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ValueError(f"fit: patience must be a positive int or None, got {patience!r}.")
    if resume and checkpoint_path is None:
        raise ValueError("fit: resume=True needs checkpoint_path=... to resume from.")
    if clip_norm is not None:
        if not clip_norm > 0:
            raise ValueError(f"fit: clip_norm must be positive, got {clip_norm!r}.")
        optimizer = optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)
    if opt_state is None:
        opt_state = optimizer.init(params)
    has_eval = eval_data is not None or eval_fn is not None
    monitor = monitor or ("eval_loss" if has_eval else "train_loss")
    mode = _mode_for(monitor, mode)

    train_step = make_train_step(loss_fn, optimizer)
    eval_step = make_eval_step(loss_fn)
    if jit:
        train_step, eval_step = jax.jit(train_step), jax.jit(eval_step)

    step_log: dict[str, list[float]] = {}
    epoch_log: list[dict[str, float]] = []
    best: float | None = None
    best_epoch: int | None = None
    best_params = params if restore_best else None
    wait, stopped, start_epoch, step = 0, False, 0, 0

    if resume and os.path.exists(checkpoint_path):
        like = {"params": params, "opt_state": opt_state}
        if restore_best:
            like["best_params"] = params
        target, meta = _ckpt.load(checkpoint_path, like)
        state = meta.get("fit", {})
        params, opt_state = target["params"], target["opt_state"]
        best_params = target.get("best_params")
        step = int(meta.get("step", 0))
        start_epoch = int(state.get("epoch", 0))
        step_log = {k: list(v) for k, v in state.get("steps", {}).items()}
        epoch_log = list(state.get("epochs", []))
        best, best_epoch = state.get("best"), state.get("best_epoch")
        wait, stopped = int(state.get("wait", 0)), bool(state.get("stopped_early", False))
        if progress:
            tqdm.write(f"resumed from {os.fspath(checkpoint_path)} after epoch {start_epoch} (step {step})")

    for epoch in range(start_epoch, epochs):
        if stopped:
            break
        batches = _batches(train_data, epoch, "train_data", epochs)
        total = len(batches) if hasattr(batches, "__len__") else None
        bar = tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=True, dynamic_ncols=True)
        epoch_metrics: list[dict[str, Any]] = []
        for batch in bar:
            k = None if key is None else jax.random.fold_in(key, step)
            params, opt_state, metrics = train_step(params, opt_state, batch, k)
            epoch_metrics.append(metrics)
            step += 1
            if progress and (len(epoch_metrics) % 10 == 1 or len(epoch_metrics) == total):
                bar.set_postfix(loss=f"{float(metrics['loss']):.4g}")
        if not epoch_metrics:
            bar.close()
            raise ValueError(f"fit: train_data gave no batches in epoch {epoch}.")
        host = jax.device_get(epoch_metrics)
        record: dict[str, float] = {"epoch": epoch + 1, "step": step}
        for name in _ordered(epoch_metrics[0]):
            values = [_scalar(name, m[name]) for m in host]
            step_log.setdefault(name, []).extend(values)
            record[f"train_{name}"] = float(np.mean(values))
        if eval_data is not None:
            ev = [eval_step(params, b) for b in _batches(eval_data, epoch, "eval_data", epochs)]
            if not ev:
                raise ValueError(f"fit: eval_data gave no batches in epoch {epoch}.")
            ev = jax.device_get(ev)
            for name in _ordered(ev[0]):
                record[f"eval_{name}"] = float(np.mean([_scalar(name, m[name]) for m in ev]))
        if eval_fn is not None:
            for name, value in dict(eval_fn(params)).items():
                record[f"eval_{name}"] = _scalar(name, value)
        if monitor not in record:
            bar.close()
            raise ValueError(f"fit: monitor={monitor!r} is not among the per-epoch metrics "
                             f"{sorted(k for k in record if k not in ('epoch', 'step'))}.")
        epoch_log.append(record)
        value = record[monitor]
        note = ""
        if _improved(value, best, mode, min_delta):
            best, best_epoch, wait = value, epoch + 1, 0
            if restore_best:
                best_params = params
            note = " *"
        else:
            wait += 1
            if patience is not None and wait >= patience:
                stopped = True
        if progress:
            bar.set_postfix_str(_fmt(record))
            bar.close()
            tqdm.write(f"epoch {epoch + 1}/{epochs}: {_fmt(record)}{note}")
            if stopped:
                tqdm.write(f"early stopping: {monitor} has not improved for {wait} epochs; best epoch "
                           f"{best_epoch} ({monitor}={best:.4g}).")
        else:
            bar.close()
        if checkpoint_path is not None:
            target = {"params": params, "opt_state": opt_state}
            if restore_best:
                target["best_params"] = best_params
            fit_state = {"epoch": epoch + 1, "steps": step_log, "epochs": epoch_log, "best": best,
                         "best_epoch": best_epoch, "wait": wait, "stopped_early": stopped,
                         "monitor": monitor}
            _ckpt.save(checkpoint_path, target,
                       metadata={"step": step, "config": config or {}, "fit": fit_state})

    if restore_best and best_params is not None:
        params = best_params
    history = History(steps={k: np.asarray(v, dtype=np.float64) for k, v in step_log.items()},
                      epochs=epoch_log, best_epoch=best_epoch, stopped_early=stopped, monitor=monitor)
    return FitResult(params, opt_state, history)

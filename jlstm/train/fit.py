"""A training loop: jitted steps, progress, evaluation, early stopping, checkpoints, preemption; and evaluate.

:func:`fit` drives the pure pieces: the steps (:mod:`jlstm.train.step`, or
:mod:`jlstm.train.stateful` with ``carry=``), the bookkeeping state machine
(:mod:`jlstm.train.fit_state`), the signal guard (:mod:`jlstm.train.preemption`) and the reporter
(:mod:`jlstm.train.progress`).
"""

from __future__ import annotations

import itertools
import operator
import os
import time
from typing import Any, Callable, Iterable, NamedTuple, cast

import jax
import numpy as np
import optax

import jlstm.checkpoint as _ckpt
from jlstm.train.fit_state import (
    FitState,
    Stopping,
    end_epoch,
    epoch_record,
    host_metrics,
    mean_metrics,
    scalar,
    stopping_for,
)
from jlstm.train.preemption import Preempted, SignalGuard
from jlstm.train.progress import Reporter, resolve
from jlstm.train.stateful import make_stateful_eval_step, make_stateful_train_step
from jlstm.train.step import LossFn, make_eval_step, make_train_step

__all__ = ["Carry", "FitResult", "History", "evaluate", "fit"]


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
      resumed_from: the optimizer step this call resumed from (``None``: it started afresh).
    """

    steps: dict[str, np.ndarray]
    epochs: list[dict[str, float]]
    best_epoch: int | None
    stopped_early: bool
    monitor: str | None
    resumed_from: int | None = None

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


class Carry(NamedTuple):
    """Stateful training (truncated BPTT): the recurrent state is carried from batch to batch.

    With ``fit(..., carry=Carry(model.initial_state, batch_shape))`` the loss function is
    ``loss_fn(params, state, batch, key) -> (loss, new_state[, metrics])``, the batches are
    consecutive chunks (:func:`jlstm.train.lm_chunks`), the state starts each epoch (and each
    evaluation) at ``initial_state(params, batch_shape)`` and a batch's ``reset`` field
    (bool [batch], if it has one) restarts those rows.
    """

    initial_state: Callable[..., Any]
    batch_shape: int | tuple[int, ...]


class _Run(NamedTuple):
    """What does not change during a call: the steps and the options."""

    train_step: Callable
    eval_step: Callable
    carry: Carry | None
    stopping: Stopping
    key: Any
    path: str | None
    config: dict[str, Any]
    report: Reporter
    epochs: int
    steps_per_epoch: int | None


def _batches(data: Any, epoch: int, name: str, epochs: int) -> Iterable[Any]:
    if callable(data):
        return cast(Iterable[Any], data(epoch))
    if not hasattr(data, "__iter__"):
        raise TypeError(f"fit: {name} must be an iterable of batches or a callable epoch -> iterable, "
                        f"got {type(data).__name__}.")
    if iter(data) is data and epochs > 1:
        raise TypeError(
            f"fit: {name} is a one-shot iterator (a generator?) but epochs={epochs}; it would be empty "
            f"after the first epoch. Pass a list of batches or a callable such as "
            f"`lambda epoch: make_batches(epoch)`.")
    return data


def _length(batches: Any) -> int | None:
    """How many batches an iterable holds, if it says: ``len()`` or a positive ``__length_hint__``."""
    if hasattr(batches, "__len__"):
        return len(batches)
    hint = operator.length_hint(batches, 0)
    return hint if hint > 0 else None


def _skip(batches: Any, n: int, limit: int | None = None) -> tuple[Iterable[Any], int | None]:
    """The epoch's batches after the first ``n`` (already trained on before a preemption), at most ``limit``
    of them in all (``steps_per_epoch``), and how many that leaves when it can be known."""
    known = _length(batches)
    stop = limit if known is None else known if limit is None else min(known, limit)
    total = None if stop is None else max(stop - n, 0)
    if known is not None and hasattr(batches, "__getitem__"):
        return batches[n:stop], total
    if n or stop is not None:
        return itertools.islice(iter(batches), n, stop), total
    return batches, total


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch", "step"))


def _eval_step(loss_fn: Callable, carry: Carry | None, jit: bool) -> Callable:
    """``(params, state, batch) -> (state, metrics)`` whether or not a state is carried."""
    if carry is None:
        ev = make_eval_step(loss_fn)

        def eval_step(params, state, batch) -> tuple[Any, Any]:
            return None, ev(params, batch)
    else:
        ev = make_stateful_eval_step(loss_fn, carry.initial_state)

        def eval_step(params, state, batch) -> tuple[Any, Any]:
            return ev(params, state, batch, None, getattr(batch, "reset", None))
    return jax.jit(eval_step) if jit else eval_step


def _train_step(loss_fn: Callable, optimizer: Any, carry: Carry | None, jit: bool) -> Callable:
    """``(params, opt_state, state, batch, key) -> (params, opt_state, metrics, state)``."""
    if carry is None:
        train = make_train_step(loss_fn, optimizer)

        def train_step(params, opt_state, state, batch, key) -> tuple[Any, Any, Any, Any]:
            return train(params, opt_state, batch, key) + (None,)
    else:
        stateful = make_stateful_train_step(loss_fn, optimizer, carry.initial_state)

        def train_step(params, opt_state, state, batch, key) -> tuple[Any, Any, Any, Any]:
            params, opt_state, state, metrics = stateful(params, opt_state, state, batch, key,
                                                         getattr(batch, "reset", None))
            return params, opt_state, metrics, state
    return jax.jit(train_step) if jit else train_step


def _fresh_state(run: _Run, params: Any) -> Any:
    return None if run.carry is None else run.carry.initial_state(params, run.carry.batch_shape)


def _target(params: Any, opt_state: Any, carried: Any, best_params: Any, key: Any) -> dict[str, Any]:
    target = {"params": params, "opt_state": opt_state}
    for name, value in (("state", carried), ("best_params", best_params), ("key", key)):
        if value is not None:
            target[name] = value
    return target


def _save(run: _Run, fs: FitState, target: dict[str, Any], preempted: bool = False) -> None:
    assert run.path is not None  # called only with a checkpoint path
    meta = {"step": fs.step, "config": run.config, "fit": dict(fs.to_json(), preempted=preempted)}
    _ckpt.save(run.path, target, metadata=meta)


def _resume(run: _Run, like: dict[str, Any]) -> tuple[dict[str, Any], FitState]:
    assert run.path is not None  # resume=True needs a checkpoint path (_check_args)
    target, meta = _ckpt.load(run.path, like)
    fs = FitState.from_json(meta.get("fit", {}))._replace(step=int(meta.get("step", 0)))
    where = f"epoch {fs.epoch + 1}, batch {fs.position}" if fs.position else f"after epoch {fs.epoch}"
    run.report.write(f"resumed from {run.path} at {where} (step {fs.step})")
    if fs.epoch >= run.epochs or fs.stopped:
        run.report.write(f"nothing left to train: the checkpoint has finished {fs.epoch} of {run.epochs} epochs"
                         + (" (stopped early)" if fs.stopped else "")
                         + "; pass a new checkpoint_path (or resume=False) to train afresh.")
    return target, fs


def _advance(fs: FitState, done: list[dict[str, Any]]) -> FitState:
    n = len(done)
    return fs._replace(position=fs.position + n, step=fs.step + n, partial=fs.partial + host_metrics(done))


def _train_epoch(run: _Run, fs: FitState, data: Any, params: Any, opt_state: Any, carried: Any,
                 best_params: Any, guard: SignalGuard) -> tuple[FitState, Any, Any, Any]:
    """The current epoch's remaining steps; on a signal, checkpoint after the step and raise Preempted."""
    batches, total = _skip(_batches(data, fs.epoch, "train_data", run.epochs), fs.position, run.steps_per_epoch)
    bar = run.report.steps(batches, total, f"epoch {fs.epoch + 1}/{run.epochs}")
    done: list[dict[str, Any]] = []
    with bar:
        for batch in bar:
            k = None if run.key is None else jax.random.fold_in(run.key, fs.step + len(done))
            params, opt_state, metrics, carried = run.train_step(params, opt_state, carried, batch, k)
            done.append(metrics)
            if run.report.mode == "bar" and (len(done) % 10 == 1 or len(done) == total):
                bar.set_postfix(loss=f"{float(metrics['loss']):.4g}", refresh=len(done) == 1)
            if guard.signum is not None and run.path is not None:  # the guard is on only with a path
                fs = _advance(fs, done)
                _save(run, fs, _target(params, opt_state, carried, best_params, run.key), preempted=True)
                raise Preempted(fs.step, run.path, guard.signum)
    return _advance(fs, done), params, opt_state, carried


def _eval_loop(eval_step: Callable, params: Any, state: Any, batches: Iterable[Any]) -> list[Any]:
    """Run ``eval_step`` over ``batches``, carrying the state; each batch's metrics."""
    out = []
    for batch in batches:
        state, metrics = eval_step(params, state, batch)
        out.append(metrics)
    return out


def _evaluate(run: _Run, params: Any, eval_data: Any, eval_fn: Callable | None, epoch: int) -> dict[str, float]:
    record: dict[str, float] = {}
    if eval_data is not None:
        batches = _batches(eval_data, epoch, "eval_data", run.epochs)
        ev = _eval_loop(run.eval_step, params, _fresh_state(run, params), batches)
        if not ev:
            raise ValueError(f"fit: eval_data gave no batches in epoch {epoch}.")
        record.update(mean_metrics(ev, "eval_"))
    if eval_fn is not None:
        for name, value in dict(eval_fn(params)).items():
            record[f"eval_{name}"] = scalar(name, value)
    return record


def _finish_epoch(run: _Run, fs: FitState, params: Any, eval_data: Any,
                  eval_fn: Callable | None, started: float) -> tuple[FitState, bool]:
    """Average the epoch's steps, evaluate, report (one line), and apply early stopping."""
    if not fs.partial:
        raise ValueError(f"fit: train_data gave no batches in epoch {fs.epoch}.")
    steps = len(fs.partial)
    fs, record = epoch_record(fs)
    record.update(_evaluate(run, params, eval_data, eval_fn, fs.epoch))
    fs, improved = end_epoch(fs, record, run.stopping)
    run.report.write(f"epoch {fs.epoch}/{run.epochs}: {_fmt(record)} ({steps} steps, "
                     f"{time.monotonic() - started:.1f} s){' *' if improved else ''}")
    if fs.stopped:
        run.report.write(f"early stopping: {run.stopping.monitor} has not improved for {fs.wait} epochs; best "
                         f"epoch {fs.best_epoch} ({run.stopping.monitor}={fs.best:.4g}).")
    return fs, improved


def _check_args(epochs: Any, resume: bool, path: Any, clip_norm: float | None, carry: Any,
                optimizer: Any, steps_per_epoch: Any) -> Any:
    """Validate ``fit``'s options; returns the optimizer with clipping chained in front."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}.")
    if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                                        or steps_per_epoch < 1):
        raise ValueError(f"fit: steps_per_epoch must be a positive int or None, got {steps_per_epoch!r}.")
    if resume and path is None:
        raise ValueError("fit: resume=True needs checkpoint_path=... to resume from.")
    if path is not None:   # before training, not at the first checkpoint an epoch later
        _ckpt.check_path(path, "fit(checkpoint_path=...)")
    if carry is not None and not isinstance(carry, Carry):
        raise TypeError(f"fit: carry must be jlstm.train.Carry(model.initial_state, batch_shape), got "
                        f"{type(carry).__name__}.")
    if clip_norm is None:
        return optimizer
    if not clip_norm > 0:
        raise ValueError(f"fit: clip_norm must be positive, got {clip_norm!r}.")
    return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


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
    progress: bool | str = True,
    steps_per_epoch: int | None = None,
    jit: bool = True,
    carry: Carry | None = None,
) -> FitResult:
    """Train ``params`` with ``optimizer`` on ``loss_fn`` (``(params, batch, key) -> loss[, metrics]``).

    Each epoch runs the jitted train step over ``train_data`` (a list of batches, or a callable
    ``epoch -> iterable``; ``steps_per_epoch`` caps an epoch, so an endless generator works); step
    ``n`` gets ``fold_in(key, n)``. Then it evaluates on ``eval_data`` (no key) and/or
    ``eval_fn(params) -> dict``, records ``train_*``/``eval_*`` means in the :class:`History`,
    applies early stopping (``monitor``: default ``eval_loss`` or ``train_loss``; ``mode``;
    ``patience``; ``min_delta``; ``restore_best``) and writes ``checkpoint_path`` (its folder must exist:
    that is checked before the first step). ``clip_norm``
    chains ``optax.clip_by_global_norm`` in front (``grad_norm`` is recorded before clipping).
    ``carry=Carry(...)`` carries a recurrent state across batches (truncated BPTT).
    ``resume=True`` continues from the checkpoint bit-identically and says so. With a checkpoint
    path, SIGTERM/SIGINT finish the step, checkpoint, and raise :class:`Preempted` (exit 75).
    ``progress``: ``True``/``"bar"`` (a bar on a terminal, with the epoch's total when it is known;
    in a log or a notebook, the per-epoch lines), ``"epoch"`` (one line per epoch: metrics, steps,
    seconds, ``*`` when the monitored metric improved) or ``False`` (:mod:`jlstm.train.progress`).

    Returns:
      :class:`FitResult` ``(params, opt_state, history)``.

    Example:
      >>> loss_fn = lambda params, batch, key: jnp.mean((params["w"] - batch) ** 2)
      >>> params, opt_state, history = fit(loss_fn, {"w": jnp.zeros(3)}, optax.sgd(0.1), [jnp.ones(3)] * 4,
      ...                                  epochs=2, eval_data=[2 * jnp.ones(3)], progress=False)
      >>> history.loss.shape, sorted(history.epochs[-1])
      ((8,), ['epoch', 'eval_loss', 'step', 'train_grad_norm', 'train_loss'])
    """
    optimizer = _check_args(epochs, resume, checkpoint_path, clip_norm, carry, optimizer, steps_per_epoch)
    monitor = monitor or ("train_loss" if eval_data is None and eval_fn is None else "eval_loss")
    path = None if checkpoint_path is None else os.fspath(checkpoint_path)
    run = _Run(_train_step(loss_fn, optimizer, carry, jit), _eval_step(loss_fn, carry, jit), carry,
               stopping_for(monitor, mode, patience, min_delta, restore_best), key, path, config or {},
               Reporter(resolve(progress)), epochs, steps_per_epoch)
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    return _loop(run, params, opt_state, train_data, eval_data, eval_fn, resume)


def _loop(run: _Run, params: Any, opt_state: Any, train_data: Any, eval_data: Any, eval_fn: Callable | None,
          resume: bool) -> FitResult:
    """fit's epochs, after a resume if asked: train, evaluate, checkpoint; a signal ends it (Preempted)."""
    fs, carried, resumed_from, path, restore_best = FitState(), None, None, run.path, run.stopping.restore_best
    best_params = params if restore_best else None
    if resume and path is not None and os.path.exists(path):  # resume=True implies a path (_check_args)
        t, fs = _resume(run, _target(params, opt_state, _fresh_state(run, params), best_params, run.key))
        params, opt_state, carried, best_params = t["params"], t["opt_state"], t.get("state"), t.get("best_params")
        run, resumed_from = run._replace(key=t.get("key")), fs.step
    with SignalGuard(enabled=path is not None) as guard:
        while fs.epoch < run.epochs and not fs.stopped:
            started = time.monotonic()
            carried = _fresh_state(run, params) if fs.position == 0 else carried
            fs, params, opt_state, carried = _train_epoch(run, fs, train_data, params, opt_state, carried,
                                                          best_params, guard)
            fs, improved = _finish_epoch(run, fs, params, eval_data, eval_fn, started)
            best_params = params if improved and restore_best else best_params
            if path is not None:
                _save(run, fs, _target(params, opt_state, carried, best_params, run.key))
            if guard.signum is not None and path is not None:  # the guard is on only with a path
                raise Preempted(fs.step, path, guard.signum)
    history = History({k: np.asarray(v, dtype=np.float64) for k, v in fs.steps.items()}, fs.epochs,
                      fs.best_epoch, fs.stopped, run.stopping.monitor, resumed_from)
    return FitResult(best_params if restore_best else params, opt_state, history)


def evaluate(loss_fn: LossFn, params: Any, data: Any, *, carry: Carry | None = None,
             jit: bool = True) -> dict[str, float]:
    """The mean of ``loss_fn``'s loss and metrics over the batches of ``data``, as ``fit`` evaluates.

    Each batch runs without a key (dropout and zoneout off); the result is the plain mean over
    batches of each metric, as Python floats, named without ``fit``'s ``eval_`` prefix. With
    ``carry=Carry(initial_state, batch_shape)`` the state starts at ``initial_state`` and is
    carried from batch to batch (``loss_fn(params, state, batch, key)``, as in ``fit``).

    Args:
      loss_fn: ``(params, batch, key) -> loss`` or ``-> (loss, metrics)``, the one given to ``fit``.
      params: the parameters to evaluate.
      data: an iterable of batches (a list, a generator).
      carry: a :class:`Carry` for a stateful loss function, or ``None``.
      jit: compile the evaluation step.

    Returns:
      ``{"loss": ..., **metrics}``.

    Raises:
      ValueError: ``data`` gave no batches.

    Example:
      >>> loss_fn = lambda p, batch, key: (jnp.mean((batch - p) ** 2), {"mae": jnp.mean(jnp.abs(batch - p))})
      >>> jlstm.train.evaluate(loss_fn, jnp.zeros(3), [jnp.ones(3), 3 * jnp.ones(3)])
      {'loss': 5.0, 'mae': 2.0}
    """
    if carry is not None and not isinstance(carry, Carry):
        raise TypeError(f"evaluate: carry must be jlstm.train.Carry(model.initial_state, batch_shape), got "
                        f"{type(carry).__name__}.")
    state = None if carry is None else carry.initial_state(params, carry.batch_shape)
    metrics = _eval_loop(_eval_step(loss_fn, carry, jit), params, state, data)
    if not metrics:
        raise ValueError("evaluate: data gave no batches.")
    return mean_metrics(metrics, "")

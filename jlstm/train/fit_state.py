"""The bookkeeping of :func:`jlstm.train.fit` as a small pure state machine.

:class:`FitState` is everything a run needs to continue: how far it got (epoch, position in
the epoch, optimizer step), the early-stopping state and the history so far. The functions
here are pure: each takes a state and returns a new one, so that resuming is loading a state
and a checkpoint is a state written as JSON.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

__all__ = ["FitState", "Stopping", "end_epoch", "epoch_record", "stopping_for"]

_MAX_MODES = ("acc", "accuracy", "f1", "auc", "r2")


class Stopping(NamedTuple):
    """Early stopping: watch ``monitor`` (``mode`` "min"/"max"), stop after ``patience`` bad epochs."""

    monitor: str
    mode: str
    patience: int | None
    min_delta: float
    restore_best: bool


class FitState(NamedTuple):
    """Where a run stands.

    Attributes:
      epoch: epochs completed.
      position: batches done in the current (unfinished) epoch.
      step: optimizer steps done.
      best, best_epoch, wait, stopped: early stopping (best value, its 1-based epoch,
        epochs since it, whether training stopped).
      steps: per-step metric values of the completed epochs.
      partial: per-step metric dicts of the current epoch's done batches.
      epochs: one record per completed epoch.
    """

    epoch: int = 0
    position: int = 0
    step: int = 0
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped: bool = False
    steps: dict[str, list[float]] = {}
    partial: list[dict[str, float]] = []
    epochs: list[dict[str, float]] = []

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (for a checkpoint's metadata)."""
        return dict(self._asdict(), steps={k: list(v) for k, v in self.steps.items()})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FitState:
        """Inverse of :meth:`to_json`; also reads checkpoints written before ``position`` existed."""
        known = {k: data[k] for k in cls._fields if k in data}
        if "stopped_early" in data:
            known["stopped"] = data["stopped_early"]
        return cls(**known)


def stopping_for(monitor: str, mode: str, patience: int | None, min_delta: float,
                 restore_best: bool) -> Stopping:
    """Validate the early-stopping options; ``mode="auto"`` is "max" for accuracy-like names."""
    if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
        raise ValueError(f"fit: patience must be a positive int or None, got {patience!r}.")
    if mode == "auto":
        mode = "max" if any(s in monitor.lower() for s in _MAX_MODES) else "min"
    elif mode not in ("min", "max"):
        raise ValueError(f"fit: mode must be 'min', 'max' or 'auto', got {mode!r}.")
    return Stopping(monitor, mode, patience, float(min_delta), bool(restore_best))


def scalar(name: str, value: Any) -> float:
    """``value`` as a Python float; a clear error unless it is a scalar."""
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(f"fit: metric {name!r} must be a scalar, got shape {arr.shape}; reduce it "
                         f"with a mean inside loss_fn.")
    return float(arr)


def ordered(metrics: dict[str, Any]) -> list[str]:
    """Metric names with ``loss`` first and ``grad_norm`` last."""
    names = [n for n in metrics if n not in ("loss", "grad_norm")]
    return ["loss"] + names + ["grad_norm"] if "grad_norm" in metrics else ["loss"] + names


def host_metrics(metrics: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per-step metric dicts as Python floats (one device transfer for the lot)."""
    import jax

    host = jax.device_get(metrics)
    return [{name: scalar(name, m[name]) for name in ordered(m)} for m in host]


def mean_metrics(metrics: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    """``{prefix + name: mean over the dicts}`` (e.g. the eval batches' metrics)."""
    host = host_metrics(metrics)
    return {f"{prefix}{name}": float(np.mean([m[name] for m in host])) for name in host[0]}


def epoch_record(state: FitState) -> tuple[FitState, dict[str, float]]:
    """Close the epoch's steps: move ``partial`` into ``steps``; return the train part of its record."""
    record: dict[str, float] = {"epoch": state.epoch + 1, "step": state.step}
    steps = {k: list(v) for k, v in state.steps.items()}
    for name in state.partial[0]:
        values = [m[name] for m in state.partial]
        steps.setdefault(name, []).extend(values)
        record[f"train_{name}"] = float(np.mean(values))
    return state._replace(steps=steps, partial=[]), record


def _improved(value: float, best: float | None, stopping: Stopping) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    if stopping.mode == "min":
        return value < best - stopping.min_delta
    return value > best + stopping.min_delta


def end_epoch(state: FitState, record: dict[str, float], stopping: Stopping) -> tuple[FitState, bool]:
    """Record the finished epoch and apply early stopping; returns ``(state, improved)``."""
    if stopping.monitor not in record:
        raise ValueError(f"fit: monitor={stopping.monitor!r} is not among the per-epoch metrics "
                         f"{sorted(k for k in record if k not in ('epoch', 'step'))}.")
    value = record[stopping.monitor]
    state = state._replace(epoch=state.epoch + 1, position=0, epochs=state.epochs + [record])
    if _improved(value, state.best, stopping):
        return state._replace(best=value, best_epoch=state.epoch, wait=0), True
    wait = state.wait + 1
    stopped = stopping.patience is not None and wait >= stopping.patience
    return state._replace(wait=wait, stopped=stopped), False

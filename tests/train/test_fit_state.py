"""fit's bookkeeping as a pure state machine: epoch records, early stopping, JSON round trip."""

import json
import math

import numpy as np
import pytest

from jlstm.train.fit_state import FitState, end_epoch, epoch_record, stopping_for


def run(values, **options):
    """Feed per-epoch monitored values through end_epoch; the states after each epoch."""
    stopping = stopping_for(**dict(dict(monitor="eval_loss", mode="auto", patience=None, min_delta=0.0,
                                        restore_best=False), **options))
    state, states = FitState(), []
    for v in values:
        state, _ = end_epoch(state, {"epoch": state.epoch + 1, "step": 0, stopping.monitor: v}, stopping)
        states.append(state)
        if state.stopped:
            break
    return states


def test_patience_counts_epochs_without_improvement_and_stops():
    states = run([3.0, 2.0, 2.5, 2.6, 1.0], patience=2)
    assert [s.wait for s in states] == [0, 0, 1, 2] and states[-1].stopped
    assert states[-1].best == 2.0 and states[-1].best_epoch == 2 and states[-1].epoch == 4


def test_mode_min_delta_and_nan():
    states = run([0.5, 0.6, 0.605, 0.61, 0.9], monitor="eval_acc", patience=2, min_delta=0.05)
    assert states[-1].best_epoch == 2 and states[-1].stopped and len(states) == 4  # "acc" -> max
    states = run([1.0, math.nan, 0.5])
    assert [s.best_epoch for s in states] == [1, 1, 3]  # NaN never counts as an improvement
    with pytest.raises(ValueError, match="mode must be"):
        stopping_for("eval_loss", "lowest", None, 0.0, False)
    with pytest.raises(ValueError, match="patience must be a positive int"):
        stopping_for("eval_loss", "min", 0, 0.0, False)
    with pytest.raises(ValueError, match="monitor='eval_nope'"):
        end_epoch(FitState(), {"epoch": 1, "step": 0, "train_loss": 1.0},
                  stopping_for("eval_nope", "min", None, 0.0, False))


def test_epoch_record_closes_the_partial_epoch():
    state = FitState(epoch=1, position=3, step=7, steps={"loss": [9.0]},
                     partial=[{"loss": 1.0, "acc": 0.5}, {"loss": 2.0, "acc": 0.5}, {"loss": 4.0, "acc": 1.0}])
    closed, record = epoch_record(state)
    assert record == {"epoch": 2, "step": 7, "train_loss": 7 / 3, "train_acc": 2 / 3}
    assert closed.steps == {"loss": [9.0, 1.0, 2.0, 4.0], "acc": [0.5, 0.5, 1.0]} and closed.partial == []
    assert state.steps == {"loss": [9.0]}  # the input state is not mutated
    after, _ = end_epoch(closed, dict(record, eval_loss=1.0), stopping_for("eval_loss", "min", None, 0, False))
    assert (after.epoch, after.position) == (2, 0)


def test_json_round_trip_is_exact():
    state = FitState(epoch=2, position=5, step=17, best=0.1 + 0.2, best_epoch=2, wait=0,
                     steps={"loss": [np.float32(0.3).item(), 1 / 3]}, partial=[{"loss": 0.7}],
                     epochs=[{"epoch": 1, "step": 6, "train_loss": 2 / 3}])
    assert FitState.from_json(json.loads(json.dumps(state.to_json()))) == state
    old = {"epoch": 3, "steps": {}, "epochs": [], "best": 1.0, "best_epoch": 2, "wait": 1, "stopped_early": True}
    assert FitState.from_json(old).stopped and FitState.from_json(old).position == 0

"""The jlstm command and the README's example, as a new user runs them."""

import pathlib
import re

import numpy as np

from jlstm.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_demo_trains_both_models_and_reports(capsys):
    assert main(["demo", "--length", "12", "--steps", "60", "--hidden", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "lstm(8)" in out and "simple_rnn(8)" in out
    mses = [float(m) for m in re.findall(r"\|\s+([0-9.]+) \|", out)]
    assert len(mses) == 2 and np.isfinite(mses).all()


def test_demo_lstm_learns_what_the_mean_cannot(capsys):
    from jlstm.demo import BASELINE_MSE, train_adding

    import jlstm

    r = train_adding(jlstm.lstm(16), length=10, steps=400, progress=True)
    assert r.test_mse < 0.5 * BASELINE_MSE
    # stderr is not a terminal here: plain progress lines, one per tenth of the run, no tqdm redraws
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert [int(re.search(r"step (\d+)/400", ln).group(1)) for ln in lines] == list(range(40, 401, 40))

"""fit: progress and per-epoch metrics, a learnable task, early stopping, restore-best, clipping, resume;
evaluate."""

import fcntl
import operator
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jlstm.tasks import adding_problem, copy_first

import jlstm
from jlstm.train import Carry, dense_apply, dense_init, evaluate, fit, losses, progress

ENC = jlstm.recurrent(jlstm.lstm(8))


def adding_batches(epoch, n=15, T=10):
    return [adding_problem(jax.random.key(1000 * epoch + i), 32, T) for i in range(n)]


def copy_loss(params, batch, key):
    final, _ = ENC.apply(params[0], batch.xs, key=key)
    logits = dense_apply(params[1], final.h)
    return (losses.sequence_classification(logits, batch.ys),
            {"acc": losses.classification_accuracy(logits, batch.ys)})


def test_fit_learns_copy_first_and_reports_progress(capsys):
    """Remember the first of 10 symbols (chance: loss ln 4 = 1.386, accuracy 0.25)."""
    k1, k2 = jax.random.split(jax.random.key(0))
    params = (ENC.init(k1, 4), dense_init(k2, 8, 4))
    train = lambda epoch: [copy_first(jax.random.key(1000 * epoch + i), 32, 10) for i in range(15)]
    val = [copy_first(jax.random.key(999_999), 256, 10)]
    params, opt_state, hist = fit(copy_loss, params, optax.adam(2e-2), train, epochs=3, eval_data=val,
                                  progress=True)
    out = capsys.readouterr()
    # captured output is not a terminal: no bar, one plain summary line per epoch
    lines = out.out.splitlines()
    assert out.err == "" and "\r" not in out.out and len(lines) == 3, out
    assert lines[2].startswith("epoch 3/3: train_loss=") and "eval_acc=" in lines[2] and "(15 steps, " in lines[2]
    assert hist.loss.shape == (45,) and hist.grad_norm.shape == (45,) and hist.steps["acc"].shape == (45,)
    assert np.all(np.isfinite(hist.grad_norm)) and np.all(hist.grad_norm > 0)
    assert [e["epoch"] for e in hist.epochs] == [1, 2, 3] and hist.epochs[-1]["step"] == 45
    assert {"train_loss", "train_acc", "train_grad_norm", "eval_loss", "eval_acc"} <= set(hist.epochs[0])
    np.testing.assert_allclose(hist.epochs[0]["train_loss"], hist.loss[:15].mean())
    # the eval metrics are those of the returned params on the validation batch
    np.testing.assert_allclose(hist.epochs[-1]["eval_loss"], copy_loss(params, val[0], None)[0], rtol=1e-5)
    # learnable: the loss falls well below chance
    train_loss = hist.epoch_metric("train_loss")
    assert train_loss[-1] < train_loss[0]
    assert hist.epochs[-1]["eval_loss"] < 0.8 * np.log(4) and hist.epochs[-1]["eval_acc"] > 0.5
    assert hist.monitor == "eval_loss" and hist.best_epoch is not None and not hist.stopped_early
    assert int(opt_state[0].count) == 45


def quad(params, batch, key):
    return jnp.sum((params["w"] - batch) ** 2), {}


def stalling_eval(values):
    """eval_fn replaying ``values`` and recording the params it saw each epoch."""
    seen = []

    def eval_fn(params):
        seen.append(jax.tree.map(np.asarray, params))
        return {"score": values[len(seen) - 1]}

    return eval_fn, seen


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping_and_restore_best(restore_best, capsys):
    eval_fn, seen = stalling_eval([3.0, 2.0, 2.5, 2.6, 1.0, 0.5])
    data = [jnp.ones(2), 2 * jnp.ones(2)]
    params, _, hist = fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.05), data, epochs=6, eval_fn=eval_fn,
                          monitor="eval_score", patience=2, restore_best=restore_best, progress=True)
    assert len(hist.epochs) == 4 and hist.stopped_early and hist.best_epoch == 2
    np.testing.assert_array_equal(hist.epoch_metric("eval_score"), [3.0, 2.0, 2.5, 2.6])
    expected = seen[1] if restore_best else seen[3]
    np.testing.assert_array_equal(params["w"], expected["w"])
    assert not np.array_equal(seen[1]["w"], seen[3]["w"])
    assert "early stopping: eval_score has not improved for 2 epochs; best epoch 2" in capsys.readouterr().out


def test_mode_max_for_accuracy_and_min_delta():
    eval_fn, _ = stalling_eval([0.5, 0.6, 0.605, 0.61, 0.9])
    _, _, hist = fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.05), [jnp.ones(2)], epochs=5, eval_fn=eval_fn,
                     monitor="eval_score", mode="max", patience=2,
                     min_delta=0.05, progress=False)
    assert hist.best_epoch == 2 and hist.stopped_early and len(hist.epochs) == 4


def test_clip_norm_bounds_each_update_and_history_is_unclipped():
    traj = []

    def eval_fn(params):
        traj.append(np.asarray(params["w"]))
        return {}

    params, _, hist = fit(quad, {"w": jnp.zeros(2)}, optax.sgd(1.0), [10 * jnp.ones(2)], epochs=3,
                          clip_norm=0.1, eval_fn=eval_fn, monitor="train_loss", progress=False)
    steps = np.diff(np.stack([np.zeros(2)] + traj), axis=0)
    np.testing.assert_allclose(np.linalg.norm(steps, axis=1), 0.1, rtol=1e-5)
    np.testing.assert_allclose(hist.grad_norm[0], 2 * np.linalg.norm([10.0, 10.0]), rtol=1e-6)


def test_resumed_fit_equals_uninterrupted_fit(tmp_path):
    """Stop after 2 of 4 epochs, resume from the checkpoint: bit-identical params and history."""
    enc = jlstm.recurrent(jlstm.lstm(4), recurrent_dropout=0.2)  # uses the per-step keys

    def loss_fn(params, batch, key):
        final, _ = enc.apply(params, batch.xs, key=key)
        return jnp.mean((final.h[:, 0] - batch.ys) ** 2)

    data = lambda epoch: adding_batches(epoch, n=3, T=5)
    p0 = enc.init(jax.random.key(3), 2)
    opt = optax.adam(1e-2)
    kw = dict(key=jax.random.key(7), progress=False, clip_norm=1.0)
    full, full_state, full_hist = fit(loss_fn, p0, opt, data, epochs=4, **kw)
    path = tmp_path / "run.ckpt"
    fit(loss_fn, p0, opt, data, epochs=2, checkpoint_path=path, config={"hidden": 4}, **kw)
    meta = jlstm.checkpoint.read_metadata(path)
    assert meta["step"] == 6 and meta["config"] == {"hidden": 4} and meta["fit"]["epoch"] == 2
    resumed, res_state, res_hist = fit(loss_fn, p0, opt, data, epochs=4, checkpoint_path=path, resume=True,
                                       **kw)
    for a, b in zip(jax.tree.leaves((full, full_state)), jax.tree.leaves((resumed, res_state))):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(full_hist.loss, res_hist.loss)
    assert full_hist.epochs == res_hist.epochs
    assert jlstm.checkpoint.read_metadata(path)["fit"]["epoch"] == 4


def test_bad_arguments():
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), iter([jnp.ones(2)]), epochs=2, progress=False)
    with pytest.raises(ValueError, match="monitor='eval_nope'"):
        fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), [jnp.ones(2)], monitor="eval_nope", progress=False)
    with pytest.raises(ValueError, match="no batches"):
        fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), [], progress=False)
    with pytest.raises(ValueError, match="checkpoint_path"):
        fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), [jnp.ones(2)], resume=True)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), [jnp.ones(2)], checkpoint_path=os.getcwd(), progress=False)
    # a one-shot iterator is fine for a single epoch
    _, _, hist = fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), iter([jnp.ones(2)] * 3), progress=False)
    assert hist.loss.shape == (3,)


def test_a_checkpoint_path_in_a_missing_folder_fails_before_training(tmp_path):
    """Not at the first checkpoint, an epoch of training later."""
    epochs_started = []

    def data(epoch):
        epochs_started.append(epoch)
        yield jnp.ones(2)

    with pytest.raises(FileNotFoundError, match=r"fit\(checkpoint_path=...\): the folder .*nope' of "):
        fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), data, checkpoint_path=tmp_path / "nope" / "run.ckpt",
            progress=False)
    assert epochs_started == [] and list(tmp_path.iterdir()) == []


class Hinted:
    """An iterable that knows its length only as a hint (``operator.length_hint``), like a sized stream."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def __length_hint__(self):
        return len(self.items)


def _bar_totals(err: str) -> list[str]:
    """The ``done/total`` counts a tqdm bar drew, e.g. ``['0/5', '5/5']`` (``'3'`` when it had no total)."""
    return re.findall(r"epoch \d+/\d+: +(?:\d+%\|[^|]*\| )?(\d+(?:/\d+)?)", err)


@pytest.mark.parametrize("data, expected", [
    ([jnp.ones(2)] * 3, "3/3"),                                  # a list: its len()
    (Hinted([jnp.ones(2)] * 3), "3/3"),                          # a length hint
    (lambda epoch: (jnp.ones(2) for _ in range(3)), "3"),       # a generator: no total
])
def test_the_bar_on_a_terminal_shows_the_known_total(monkeypatch, capsys, data, expected):
    monkeypatch.setattr(progress, "interactive", lambda: True)
    assert operator.length_hint(data, -1) != 0
    fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), data, epochs=1, progress=True)
    out = capsys.readouterr()
    assert _bar_totals(out.err)[-1] == expected, out.err
    assert out.out.startswith("epoch 1/1: train_loss=")     # the summary line, above the bar


def test_steps_per_epoch_caps_an_endless_generator_and_gives_the_total(monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda: True)

    def endless(epoch):
        while True:
            yield jnp.full(2, float(epoch))

    _, _, hist = fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), endless, epochs=2, steps_per_epoch=4)
    assert hist.loss.shape == (8,) and [e["step"] for e in hist.epochs] == [4, 8]
    assert _bar_totals(capsys.readouterr().err)[-1] == "4/4"
    _, _, hist = fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), [jnp.ones(2)] * 6, steps_per_epoch=4,
                     progress=False)
    assert hist.loss.shape == (4,)
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive int"):
        fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), [jnp.ones(2)], steps_per_epoch=0)


def test_progress_modes_epoch_lines_off_and_bad_values(monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda: True)    # "epoch" prints lines even on a terminal
    eval_fn, _ = stalling_eval([2.0, 1.0, 1.5])
    fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), [jnp.ones(2)] * 2, epochs=3, eval_fn=eval_fn,
        monitor="eval_score", progress="epoch")
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert out.err == "" and len(lines) == 3
    assert re.fullmatch(r"epoch 1/3: train_loss=\S+ train_grad_norm=\S+ eval_score=2 \(2 steps, \d+\.\d s\) \*",
                        lines[0]), lines[0]
    assert lines[1].endswith(" *") and not lines[2].endswith(" *")   # eval_score improved, then did not
    for off in (False, "off", None):
        fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), [jnp.ones(2)], progress=off)
        assert capsys.readouterr() == ("", "")
    with pytest.raises(ValueError, match="progress must be"):
        fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), [jnp.ones(2)], progress="verbose")


def test_evaluate_equals_fits_evaluation():
    def loss_fn(params, batch, key):
        err = params["w"] - batch
        return jnp.mean(err ** 2), {"mae": jnp.mean(jnp.abs(err))}

    data = [jnp.ones(2), 3 * jnp.ones(2), jnp.array([0.0, 2.0])]
    params, _, hist = fit(loss_fn, {"w": jnp.zeros(2)}, optax.sgd(0.1), [jnp.ones(2)], eval_data=data,
                          progress=False)
    got = evaluate(loss_fn, params, data)
    assert set(got) == {"loss", "mae"} and all(isinstance(v, float) for v in got.values())
    assert got["loss"] == pytest.approx(hist.epochs[-1]["eval_loss"]) and got["mae"] == pytest.approx(
        hist.epochs[-1]["eval_mae"])
    w = np.asarray(params["w"])
    assert got["loss"] == pytest.approx(np.mean([np.mean((w - np.asarray(b)) ** 2) for b in data]), rel=1e-6)
    assert evaluate(quad, {"w": jnp.zeros(2)}, iter([jnp.ones(2)]), jit=False) == {"loss": 2.0}
    with pytest.raises(ValueError, match="no batches"):
        evaluate(quad, {"w": jnp.zeros(2)}, [])


def test_evaluate_carries_the_state():
    """A stateful loss: the state counts the batches seen, so the metric shows it was carried."""
    def loss_fn(params, state, batch, key):
        return jnp.sum(params * 0) + state, state + 1.0, {"seen": state}

    carry = Carry(lambda params, batch_shape: jnp.zeros(()), 1)
    got = evaluate(loss_fn, jnp.zeros(2), [None, None, None, None], carry=carry)
    assert got == {"loss": 1.5, "seen": 1.5}                     # states 0, 1, 2, 3


FIT_SCRIPT = """
import jax.numpy as jnp, optax
from jlstm.train import fit
quad = lambda params, batch, key: jnp.sum((params["w"] - batch) ** 2)
fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), [jnp.ones(2)] * 30, epochs=2)
"""


def _run_fit_script(stdout: int) -> subprocess.Popen:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", FIT_SCRIPT], stdout=stdout, stderr=stdout, env=env)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a pseudo-terminal from Linux's pty")
def test_a_log_file_gets_plain_lines_and_a_terminal_gets_the_bar(tmp_path):
    """fit's default progress=True, in a real process: stdout and stderr to a file, then to a terminal."""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        assert _run_fit_script(f.fileno()).wait(timeout=120) == 0
    text = log.read_text()
    assert "\r" not in text and "it/s" not in text and len(text.splitlines()) == 2, text
    assert text.startswith("epoch 1/2: train_loss=") and "(30 steps, " in text
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # 100 columns
    proc = _run_fit_script(terminal)
    os.close(terminal)
    out = b""
    while chunk := _read(master):             # read as it comes: a full terminal would block the process
        out += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0
    shown = out.decode()
    assert "\r" in shown and "30/30 [" in shown and "it/s" in shown, shown      # the bar, with its total
    assert "epoch 2/2: train_loss=" in shown


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:                 # EIO: the terminal's other end is closed and everything was read
        return b""

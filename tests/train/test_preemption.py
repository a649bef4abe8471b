"""Preemption: SIGTERM/SIGINT finish the step, checkpoint, exit 75; a rerun resumes bit-identically."""

import importlib.util
import os
import queue
import random
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jlstm
import jlstm.train as jt

SCRIPT = os.path.join(os.path.dirname(__file__), "preempt_script.py")


def load_script():
    spec = importlib.util.spec_from_file_location("preempt_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quad(params, batch, key):
    noise = jax.random.normal(key, (2,))
    return jnp.sum((params["w"] - batch - 0.01 * noise) ** 2)


def signalling_data(kill_at, signum):
    """Batches for epoch e; the process signals itself while producing global batch ``kill_at``."""
    def data(epoch):
        for i in range(4):
            if kill_at is not None and 4 * epoch + i == kill_at:
                os.kill(os.getpid(), signum)
            yield jnp.full((2,), float(i + epoch))
    return data


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_after_the_step_and_raises_preempted(tmp_path, signum, capsys):
    path = tmp_path / "run.ckpt"
    kw = dict(epochs=3, key=jax.random.key(0), checkpoint_path=path, resume=True, progress=True)
    before = signal.getsignal(signum)
    with pytest.raises(jt.Preempted) as info:
        jt.fit(quad, {"w": jnp.zeros(2)}, optax.adam(0.1), signalling_data(6, signum), **kw)
    assert signal.getsignal(signum) is before  # the handlers are restored
    exc = info.value
    assert isinstance(exc, SystemExit) and exc.code == jt.PREEMPTED_EXIT_CODE == 75
    assert exc.step == 7 and exc.signum == signum and "resume=True" in str(exc)
    meta = jlstm.checkpoint.read_metadata(path)
    assert meta["step"] == 7 and meta["fit"]["preempted"]
    assert meta["fit"]["epoch"] == 1 and meta["fit"]["position"] == 3 and len(meta["fit"]["partial"]) == 3
    capsys.readouterr()
    resumed = jt.fit(quad, {"w": jnp.zeros(2)}, optax.adam(0.1), signalling_data(None, signum), **kw)
    assert "resumed from" in capsys.readouterr().out and resumed.history.resumed_from == 7
    full = jt.fit(quad, {"w": jnp.zeros(2)}, optax.adam(0.1), signalling_data(None, signum),
                  **dict(kw, checkpoint_path=None, resume=False))
    for a, b in zip(jax.tree.leaves(full[:2]), jax.tree.leaves(resumed[:2])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(full.history.loss, resumed.history.loss)
    assert full.history.epochs == resumed.history.epochs
    assert sorted(os.listdir(tmp_path)) == ["run.ckpt"]  # no temporary file left


def test_resuming_a_finished_run_says_there_is_nothing_left(tmp_path, capsys):
    path = tmp_path / "done.ckpt"
    data = [jnp.ones(2)]
    jt.fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), data, key=jax.random.key(0), checkpoint_path=path,
           progress=False)
    again = jt.fit(quad, {"w": jnp.zeros(2)}, optax.sgd(0.1), data, key=jax.random.key(0),
                   checkpoint_path=path, resume=True)
    out = capsys.readouterr().out
    assert "resumed from" in out and "nothing left to train" in out and "new checkpoint_path" in out
    assert again.history.resumed_from == 1 and len(again.history.loss) == 1


def start(checkpoint, result, paced):
    proc = subprocess.Popen([sys.executable, SCRIPT, str(checkpoint), str(result)] + (["paced"] if paced else []),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    lines, err = queue.Queue(), []

    def read_stdout():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read_stdout, daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    return proc, lines, err


def run_and_kill(proc, lines, target):
    """Release batches one by one; SIGTERM ``proc`` while it waits for global batch ``target``."""
    seen = []
    while (line := lines.get(timeout=300)) is not None:
        seen.append(line)
        if line.startswith("batch "):
            if int(line.split()[1]) == target:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            except BrokenPipeError:  # it has exited
                break
    proc.wait(timeout=300)
    return seen


@pytest.mark.slow                       # started first (tests/conftest.py): processes
def test_killed_three_times_at_random_steps_then_resumed_equals_uninterrupted(tmp_path):
    """A real training process, SIGTERMed 3 times at random steps, then run to the end: bit-identical."""
    script = load_script()
    reference = tmp_path / "reference.result"
    script.main(str(tmp_path / "reference.ckpt"), str(reference))  # uninterrupted, same code
    ckpt, result = tmp_path / "run.ckpt", tmp_path / "run.result"
    # Three distinct random steps, in order: each kill lands at or after the step the previous
    # run resumed from (a target drawn from [done, STEPS - 3) could find that range empty).
    targets = sorted(random.Random().sample(range(script.STEPS - 3), 3))
    done, log, procs = 0, [], []
    try:
        for target in targets:
            proc, lines, err = start(ckpt, result, paced=True)
            procs.append(proc)
            seen = run_and_kill(proc, lines, target)
            log.append((target, proc.returncode))
            assert proc.returncode == jt.PREEMPTED_EXIT_CODE, (log, "".join(seen), "".join(err)[-2000:])
            assert (done == 0) != any(line.startswith("resumed from") for line in seen), (log, seen)
            meta = jlstm.checkpoint.read_metadata(ckpt)
            # the signal came while batch `target` was loading: that step is finished, then saved
            assert meta["fit"]["preempted"] and meta["step"] == target + 1, (log, meta["step"])
            done = meta["step"]
        proc, lines, err = start(ckpt, result, paced=False)
        procs.append(proc)
        proc.wait(timeout=300)
        assert proc.returncode == 0, "".join(err)[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    ref_tree, ref_meta = jlstm.checkpoint.load(reference, script.template())
    got_tree, got_meta = jlstm.checkpoint.load(result, script.template())
    for a, b in zip(jax.tree.leaves(ref_tree), jax.tree.leaves(got_tree)):
        np.testing.assert_array_equal(a, b)
    assert ref_meta["loss"] == got_meta["loss"] and ref_meta["epochs"] == got_meta["epochs"]
    assert ref_meta["resumed_from"] is None and got_meta["resumed_from"] == done
    assert sorted(os.listdir(tmp_path)) == ["reference.ckpt", "reference.result", "run.ckpt", "run.result"]

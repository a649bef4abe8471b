"""Checkpoints: bit-exact round trips, corruption and mismatch detection, atomic writes, resume."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jlstm.tasks import adding_problem

import jlstm
from jlstm import checkpoint as ckpt
from jlstm.train import make_train_step

CELL = jlstm.lstm(5, peephole="diagonal")


def model_params(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {"lstm": CELL.init(k1, 3), "gru": jlstm.gru(4).init(k2, 3),
            "head": (jax.random.normal(k3, (5, 2)), jnp.zeros((2,)))}


def loss_fn(params, batch, key):
    final, _ = jlstm.scan(CELL, params["lstm"], batch.xs[..., :1].repeat(3, -1))
    pred = final.h @ params["head"][0] + params["head"][1]
    return jnp.mean((pred[:, 0] - batch.ys) ** 2)


OPT = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
STEP = jax.jit(make_train_step(loss_fn, OPT))  # one compilation for the whole module


def trained_state(steps=3):
    params = model_params()
    state = OPT.init(params)
    for i in range(steps):
        params, state, _ = STEP(params, state, adding_problem(jax.random.key(i), 8, 6), None)
    return params, state


def assert_trees_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_bit_exact_for_params_and_adam_state(tmp_path):
    params, state = trained_state()
    assert params["lstm"].w_p is None and params["lstm"].w_c.shape == (3, 5)  # None leaves present
    target = {"params": params, "opt_state": state, "key": jax.random.key(42),
              "bf16": jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3), "step": jnp.int32(7)}
    path = tmp_path / "a.ckpt"
    ckpt.save(path, target, metadata={"hidden": 5, "note": "ünïcode", "lr": 1e-2})
    like = jax.tree.map(jnp.zeros_like, {**target, "key": None})
    like["key"] = jax.random.key(0)
    loaded, meta = ckpt.load(path, like)
    assert meta == {"hidden": 5, "note": "ünïcode", "lr": 1e-2}
    assert_trees_identical(loaded["params"], params)
    assert_trees_identical(loaded["opt_state"], state)
    adam_state = loaded["opt_state"][1][0]
    assert adam_state.count.dtype == jnp.int32 and int(adam_state.count) == 3
    assert loaded["bf16"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(jax.random.key_data(loaded["key"]), jax.random.key_data(jax.random.key(42)))
    np.testing.assert_array_equal(jax.random.normal(loaded["key"], (3,)),
                                  jax.random.normal(jax.random.key(42), (3,)))
    # NumPy float64 and Python numbers come back as such, exactly
    extra = {"lr": 0.1, "n": 3, "np64": np.arange(3.0) / 3}
    ckpt.save(path, extra)
    back, _ = ckpt.load(path, {"lr": 0.0, "n": 0, "np64": np.zeros(3)})
    assert back["lr"] == 0.1 and back["n"] == 3 and type(back["n"]) is int
    assert back["np64"].dtype == np.float64 and np.array_equal(back["np64"], extra["np64"])
    # the header describes the tree in readable form
    desc = ckpt.describe(target)
    assert {"path": "['params']['lstm'].w_p", "kind": "none"} in desc
    assert {"path": "['params']['lstm'].w_x", "kind": "array", "shape": [3, 20], "dtype": "float32"} in desc


def test_no_pickle_is_involved(tmp_path, monkeypatch):
    params = model_params()
    path = tmp_path / "p.ckpt"

    def boom(*a, **k):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "dump", "dumps"):
        monkeypatch.setattr(pickle, name, boom)
    ckpt.save(path, params)
    loaded, _ = ckpt.load(path, params)
    assert_trees_identical(loaded, params)


@pytest.fixture
def saved(tmp_path):
    params, state = trained_state(1)
    path = tmp_path / "s.ckpt"
    ckpt.save_train_state(path, params, state, step=1, config={"hidden": 5})
    return path, params, state


def test_save_and_load_train_state(saved):
    path, params, state = saved
    ts = ckpt.load_train_state(path, params, state)
    assert ts.step == 1 and ts.config == {"hidden": 5}
    assert_trees_identical((ts.params, ts.opt_state), (params, state))


@pytest.mark.parametrize("cut", [10, 60, "header", "payload"])
def test_truncated_file_raises(saved, cut):
    path, params, state = saved
    data = path.read_bytes()
    header_end = 48 + int.from_bytes(data[8:16], "little")
    n = {"header": header_end - 5, "payload": len(data) - 7}.get(cut, cut)
    path.write_bytes(data[:n])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.load_train_state(path, params, state)


@pytest.mark.parametrize("where, message", [("payload", "payload checksum"), ("header", "header checksum"),
                                            ("magic", "not a jlstm checkpoint")])
def test_flipped_bit_raises(saved, where, message):
    path, params, state = saved
    data = bytearray(path.read_bytes())
    header_end = 48 + int.from_bytes(data[8:16], "little")
    pos = {"payload": (header_end + len(data)) // 2, "header": (48 + header_end) // 2, "magic": 2}[where]
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_train_state(path, params, state)


def test_structure_shape_and_dtype_mismatches_name_the_path(tmp_path):
    params = model_params()
    path = tmp_path / "m.ckpt"
    ckpt.save(path, params)
    # no peepholes: w_c is None in the template but an array in the checkpoint
    other = dict(params, lstm=jlstm.lstm(5).init(jax.random.key(0), 3))
    with pytest.raises(ckpt.CheckpointError, match=r"\['lstm'\]\.w_c: expected None .* got float32 array "
                                                   r"of shape \(3, 5\)"):
        ckpt.load(path, other)
    # another hidden size
    other = dict(params, lstm=jlstm.lstm(6, peephole="diagonal").init(jax.random.key(0), 3))
    with pytest.raises(ckpt.CheckpointError, match=r"\['lstm'\]\.w_x: expected float32 array of shape "
                                                   r"\(3, 24\).*got float32 array of shape \(3, 20\)"):
        ckpt.load(path, other)
    # another dtype
    other = dict(params, head=(params["head"][0].astype(jnp.bfloat16), params["head"][1]))
    with pytest.raises(ckpt.CheckpointError, match=r"\['head'\]\[0\]: expected bfloat16 .* got float32"):
        ckpt.load(path, other)
    # another structure: a GRU where the LSTM was
    other = dict(params, lstm=jlstm.gru(5).init(jax.random.key(0), 3))
    with pytest.raises(ckpt.CheckpointError, match=r"structure mismatch .*\['lstm'\]"):
        ckpt.load(path, other)
    # a missing entry at the very end: nothing is returned even though all else matches
    with pytest.raises(ckpt.CheckpointError, match=r"structure mismatch: the checkpoint has .*\['zzz'\]"):
        ckpt.load(path, dict(params, zzz=jnp.zeros(1)))
    # the optimizer state of another model
    like_state = optax.adam(1e-3).init(other)
    ckpt.save(path, (params, optax.adam(1e-3).init(params)))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(path, (params, like_state))


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    params = model_params()
    path = tmp_path / "x.ckpt"
    ckpt.save(path, params, metadata={"version": "old"})
    before = path.read_bytes()
    newer = jax.tree.map(lambda a: a + 1, params)

    def fail(*a, **k):
        raise OSError("simulated crash")

    # (1) crash at the rename, (2) crash at fsync, (3) crash half-way through the write
    class HalfFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise OSError("disk full")

        def __getattr__(self, name):
            return getattr(self.f, name)

    real_fdopen = os.fdopen
    for target, replacement in [("replace", fail), ("fsync", fail),
                                ("fdopen", lambda fd, mode: HalfFile(real_fdopen(fd, mode)))]:
        with monkeypatch.context() as m:
            m.setattr(ckpt.os, target, replacement)
            with pytest.raises(OSError):
                ckpt.save(path, newer, metadata={"version": "new"})
        assert path.read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == ["x.ckpt"]  # no temporary file left behind
        loaded, meta = ckpt.load(path, params)
        assert meta == {"version": "old"}
        assert_trees_identical(loaded, params)
    ckpt.save(path, newer, metadata={"version": "new"})
    assert ckpt.load(path, params)[1] == {"version": "new"}


def test_bad_targets_raise():
    with pytest.raises(TypeError, match="leaf at"):
        ckpt.save("/tmp/never.ckpt", {"name": "lstm"})
    with pytest.raises(TypeError, match="JSON"):
        ckpt.save("/tmp/never.ckpt", {"w": jnp.ones(2)}, metadata={"w": jnp.ones(2)})
    assert not os.path.exists("/tmp/never.ckpt")


def test_a_missing_folder_or_a_folder_as_the_path_is_named(tmp_path):
    """Both once surfaced as an OSError about the hidden temporary file (``.ckpt.x1y2.tmp``)."""
    params = {"w": jnp.ones(2)}
    missing = tmp_path / "runs" / "exp1"
    with pytest.raises(FileNotFoundError, match=r"folder '.*runs/exp1' of .* does not exist.*os.makedirs"):
        ckpt.save(missing / "params.ckpt", params)
    assert not (tmp_path / "runs").exists()                 # nothing created
    with pytest.raises(IsADirectoryError, match=r"is a folder; pass the path of a file in it"):
        ckpt.save(tmp_path, params)
    assert list(tmp_path.iterdir()) == []                   # no temporary file left behind


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    """N steps straight == N/2 steps, save, load into fresh templates, N/2 more: bit for bit."""
    opt, step = OPT, STEP
    batches = [adding_problem(jax.random.key(100 + i), 8, 6) for i in range(6)]
    p, s = model_params(), opt.init(model_params())
    for b in batches:
        p, s, _ = step(p, s, b, None)
    q, t = model_params(), opt.init(model_params())
    for b in batches[:3]:
        q, t, _ = step(q, t, b, None)
    path = tmp_path / "half.ckpt"
    ckpt.save_train_state(path, q, t, step=3)
    del q, t
    fresh = model_params(seed=1)
    ts = ckpt.load_train_state(path, fresh, opt.init(fresh))
    q, t = ts.params, ts.opt_state
    assert ts.step == 3
    for b in batches[3:]:
        q, t, _ = step(q, t, b, None)
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((q, t))):
        np.testing.assert_array_equal(a, b)


def test_checkpoints_with_renamed_fields_still_load(tmp_path):
    """sLSTM's recurrent weight was ``r`` and the mLSTM's memory ``C``: old files load into the new fields."""
    from typing import NamedTuple

    class OldSLSTMParams(NamedTuple):  # the layout checkpoints were written with before the rename
        w_x: jax.Array
        r: jax.Array
        b: jax.Array

    cell = jlstm.slstm(4, num_heads=2)
    params = cell.init(jax.random.key(0), 3)
    path = tmp_path / "old.ckpt"
    jlstm.checkpoint.save(path, OldSLSTMParams(params.w_x, params.w_h, params.b))
    loaded, _ = jlstm.checkpoint.load(path, params)
    assert isinstance(loaded, jlstm.SLSTMParams)
    np.testing.assert_array_equal(np.asarray(loaded.w_h), np.asarray(params.w_h))
    # a genuinely different field is still refused
    class Other(NamedTuple):
        w_x: jax.Array
        q: jax.Array
        b: jax.Array

    jlstm.checkpoint.save(path, Other(params.w_x, params.w_h, params.b))
    with pytest.raises(jlstm.checkpoint.CheckpointError, match="structure mismatch"):
        jlstm.checkpoint.load(path, params)

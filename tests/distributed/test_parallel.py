"""jlstm.parallel: the data-parallel step on 8 (forced host) devices equals a single-device step.
(The module's docstring examples run in test_doctests.py, with every other module's.)"""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from host_devices import run_on_host_devices

from jlstm import parallel

# Run in a subprocess: the device count is fixed when JAX starts.
SCRIPT = textwrap.dedent(r"""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    import jlstm
    from jlstm import parallel
    from jlstm.tasks import adding_problem
    from jlstm.train import make_train_step

    assert len(jax.devices()) == 8, jax.devices()
    H, T, B = 8, 12, 16
    cell = jlstm.lstm(H)
    model = jlstm.stack(jlstm.recurrent(cell), jlstm.recurrent(jlstm.gru(H)))

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"rnn": model.init(k1, 2), "w": jax.random.normal(k2, (H, 3)) * 0.3}

    def loss_fn(params, batch, key):
        _, ys = model.apply(params["rnn"], batch["xs"], lengths=batch["lengths"], key=key)
        h = ys[batch["lengths"] - 1, jnp.arange(ys.shape[1])]          # last valid output
        pred = h @ params["w"]                                          # [B, 3]
        loss = jnp.mean((pred[:, 0] - batch["ys"]) ** 2) + 0.1 * jnp.mean((pred - batch["onehot"]) ** 2)
        return loss, {"loss": loss}

    opt = optax.adam(3e-2)
    train_step = make_train_step(loss_fn, opt)

    data = adding_problem(jax.random.key(1), B, T)
    lengths = jax.random.randint(jax.random.key(2), (B,), 1, T + 1)
    onehot = jax.nn.one_hot(jnp.arange(B) % 3, 3)                      # [B, C]: needs an explicit axis
    batch = {"xs": data.xs, "ys": data.ys, "lengths": lengths, "onehot": onehot}
    axes = {"xs": 1, "ys": 0, "lengths": 0, "onehot": 0}
    out = {}

    def train(step, params, opt_state, n=4):
        losses = []
        for i in range(n):
            params, opt_state, m = step(params, opt_state, batch, jax.random.key(10 + i))
            losses.append(float(m["loss"]))
        return params, opt_state, losses

    def run(make_step, tag):
        params0 = init(jax.random.key(0))
        p1, s1, l1 = train(jax.jit(make_step), params0, opt.init(params0))
        mesh = parallel.data_mesh()
        dp = parallel.data_parallel_step(make_step, mesh, batch_axis=axes)
        p8, s8, l8 = train(dp, params0, opt.init(params0))
        out[tag] = {
            "loss_1": l1, "loss_8": l8,
            "max_param_diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in
                                  zip(jax.tree.leaves(p1), jax.tree.leaves(p8))),
            "max_param_change": max(float(jnp.max(jnp.abs(a - b))) for a, b in
                                    zip(jax.tree.leaves(p1), jax.tree.leaves(params0))),
            "param_devices": sorted({len(x.sharding.device_set) for x in jax.tree.leaves(p8)}),
            "param_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(p8)),
        }

    run(train_step, "step")

    mesh = parallel.data_mesh()
    sb = parallel.shard_batch(batch, mesh, batch_axis=axes)
    out["xs_devices"] = len(sb["xs"].sharding.device_set)
    out["xs_shard_shapes"] = sorted({tuple(s.data.shape) for s in sb["xs"].addressable_shards})
    out["ys_shard_shapes"] = sorted({tuple(s.data.shape) for s in sb["ys"].addressable_shards})
    out["onehot_shard_shapes"] = sorted({tuple(s.data.shape) for s in sb["onehot"].addressable_shards})
    out["xs_equal"] = bool(np.array_equal(np.asarray(sb["xs"]), np.asarray(batch["xs"])))
    local = parallel.shard_batch(batch, mesh, batch_axis=axes, process_local=True)
    out["process_local_equal"] = all(
        bool(np.array_equal(np.asarray(local[k]), np.asarray(batch[k]))) and
        local[k].sharding == sb[k].sharding for k in batch)
    inferred = parallel.shard_batch({"xs": data.xs, "ys": data.ys}, mesh)
    out["inferred_specs"] = [list(inferred["xs"].sharding.spec), list(inferred["ys"].sharding.spec)]
    errors = {}
    for name, kwargs in [("mismatch", dict(batch=batch)),
                         ("indivisible", dict(batch={"xs": data.xs[:, :12]})),
                         ("bad_axis", dict(batch={"xs": data.xs}, batch_axis={"xs": 3}))]:
        try:
            parallel.shard_batch(mesh=mesh, **kwargs)
        except ValueError as e:
            errors[name] = str(e)
    out["errors"] = errors
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight_devices():
    return run_on_host_devices(SCRIPT)


def test_sharded_step_equals_single_device(eight_devices):
    r = eight_devices["step"]
    np.testing.assert_allclose(r["loss_8"], r["loss_1"], rtol=1e-6, atol=1e-6)
    assert r["max_param_change"] > 1e-2          # the steps really trained
    assert r["max_param_diff"] < 1e-6
    assert r["param_devices"] == [8] and r["param_replicated"]
    assert r["loss_1"][-1] < r["loss_1"][0]


def test_batch_is_split_over_eight_devices(eight_devices):
    r = eight_devices
    assert r["xs_devices"] == 8
    assert r["xs_shard_shapes"] == [[12, 2, 2]]         # [T, B/8, I]
    assert r["ys_shard_shapes"] == [[2]]
    assert r["onehot_shard_shapes"] == [[2, 3]]
    assert r["xs_equal"] and r["process_local_equal"]
    assert r["inferred_specs"] == [[None, "data"], ["data"]]


def test_bad_batches_raise(eight_devices):
    e = eight_devices["errors"]
    assert "batch_axis explicitly" in e["mismatch"] and "[3, 16]" in e["mismatch"]
    assert "multiple of 8" in e["indivisible"]
    assert "not an axis" in e["bad_axis"]


def test_single_process_helpers():
    mesh = parallel.data_mesh(jax.devices()[:1])
    assert mesh.axis_names == ("data",)
    tree = {"a": jnp.ones((3,)), "b": jnp.zeros(())}
    rep = parallel.replicate(tree, mesh)
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(rep))
    sh = parallel.batch_shardings({"xs": jnp.ones((5, 4, 2)), "ys": jnp.ones((4,))}, mesh, time_major=True)
    assert tuple(sh["xs"].spec) == (None, "data") and tuple(sh["ys"].spec) == ("data",)
    sh = parallel.batch_shardings({"xs": jnp.ones((4, 5, 2))}, mesh, time_major=False)
    assert tuple(sh["xs"].spec) == ("data",)
    with pytest.raises(ValueError, match="not 'model'"):
        parallel.shard_batch(tree, mesh, axis="model")
    with pytest.raises(TypeError, match="Mesh"):
        parallel.shard_batch(tree, jax.devices())
    with pytest.raises(ValueError, match="structure of the batch"):
        parallel.batch_shardings({"xs": jnp.ones((5, 4, 2))}, mesh, batch_axis=[1, 0])

"""jlstm.parallel's model axis: on 8 host devices as a 2 (data) x 4 (model) mesh, training steps with the
LSTM 4H axes split over ``model`` equal one device, and each device holds a quarter of the LSTM weights."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from host_devices import run_on_host_devices

import jlstm
from jlstm import parallel

# A subprocess: the host device count is fixed when JAX starts.
SCRIPT = textwrap.dedent(r"""
    import collections, json
    import jax, jax.numpy as jnp, numpy as np, optax
    import jlstm
    from jlstm import parallel
    from jlstm.train import make_train_step

    assert len(jax.devices()) == 8, jax.devices()
    H, T, B, STEPS = 8, 6, 4, 3                       # 4H = 32 columns: 8 per model device
    model = jlstm.recurrent(jlstm.lstm(H, peephole="diagonal"))

    def loss_fn(params, batch, key):
        _, ys = model.apply(params["rnn"], batch.xs, lengths=batch.lengths)
        h = ys[batch.lengths - 1, jnp.arange(ys.shape[1])]
        loss = jnp.mean((h @ params["w"] - batch.ys) ** 2)
        return loss, {"loss": loss}

    opt = optax.adam(3e-2)
    train_step = make_train_step(loss_fn, opt)
    params0 = {"rnn": model.init(jax.random.key(0), 2), "w": jax.random.normal(jax.random.key(1), (H,))}
    data = jlstm.tasks.adding_problem(jax.random.key(2), B, T)
    lengths = jax.random.randint(jax.random.key(3), (B,), 2, T + 1)

    from typing import NamedTuple

    class Batch(NamedTuple):                            # xs [T, B, 2], ys [B], lengths [B]
        xs: jax.Array
        ys: jax.Array
        lengths: jax.Array
    batch = Batch(data.xs, data.ys, lengths)

    def run(step, params, opt_state):
        out = []
        for s in range(STEPS):
            params, opt_state, m = step(params, opt_state, batch, jax.random.key(10 + s))
            out.append((float(m["loss"]), [np.asarray(x) for x in jax.tree.leaves(params)]))
        return params, opt_state, out

    _, _, one = run(jax.jit(train_step), params0, opt.init(params0))
    mesh = parallel.data_model_mesh(2, 4)
    step = parallel.model_parallel_step(train_step, mesh)
    p8, s8, eight = run(step, params0, opt.init(params0))
    lstm0 = p8["rnn"]
    mu = s8[0].mu["rnn"]                                 # Adam's first moment of the LSTM params
    res = {
        "mesh": dict(mesh.shape),
        "loss_1": [l for l, _ in one], "loss_8": [l for l, _ in eight],
        "max_param_diff": [max(float(np.max(np.abs(a - b))) for a, b in zip(pa, pb))
                           for (_, pa), (_, pb) in zip(one, eight)],
        "max_param_change": max(float(np.max(np.abs(a - np.asarray(b)))) for a, b in
                                zip(one[-1][1], jax.tree.leaves(params0))),
        "specs": {k: list(getattr(lstm0, k).sharding.spec) for k in ("w_x", "w_h", "b", "w_c")},
        "mu_spec": list(mu.w_h.sharding.spec),
        "head_replicated": p8["w"].sharding.is_fully_replicated,
        "w_h_shards": sorted({tuple(s.data.shape) for s in lstm0.w_h.addressable_shards}),
        "w_h_shard_devices": sorted(collections.Counter(str(s.index) for s in lstm0.w_h.addressable_shards)
                                    .values()),
        "bytes_per_device": sorted(set(parallel.param_bytes_per_device(p8).values())),
        "bytes_replicated": sum(x.nbytes for x in jax.tree.leaves(params0)),
        "bytes_lstm": sum(getattr(params0["rnn"], k).nbytes for k in ("w_x", "w_h", "b")),
        "opt_bytes_per_device": sorted(set(parallel.param_bytes_per_device(s8).values())),
        "opt_bytes_replicated": sum(x.nbytes for x in jax.tree.leaves(opt.init(params0))),
    }
    errors = {}
    try:
        parallel.model_shardings(jlstm.lstm(3).init(jax.random.key(0), 2), parallel.data_model_mesh(1, 8))
    except ValueError as e:
        errors["indivisible"] = str(e)
    try:
        parallel.data_model_mesh(3, 4)
    except ValueError as e:
        errors["mesh"] = str(e)
    res["errors"] = errors
    print("RESULT" + json.dumps(res))
""")


@pytest.fixture(scope="module")
def two_by_four():
    return run_on_host_devices(SCRIPT)


def test_two_by_four_mesh_step_equals_one_device(two_by_four):
    r = two_by_four
    assert r["mesh"] == {"data": 2, "model": 4}
    np.testing.assert_allclose(r["loss_8"], r["loss_1"], rtol=1e-6, atol=1e-7)
    assert max(r["max_param_diff"]) < 1e-6           # after every step
    assert r["max_param_change"] > 1e-2              # the steps really trained


def test_lstm_weights_are_split_over_the_model_axis(two_by_four):
    r = two_by_four
    assert r["specs"] == {"w_x": [None, "model"], "w_h": [None, "model"], "b": ["model"], "w_c": []}
    assert r["mu_spec"] == [None, "model"] and r["head_replicated"]
    assert r["w_h_shards"] == [[8, 8]]               # [H, 4H / 4]
    assert r["w_h_shard_devices"] == [2, 2, 2, 2]    # each quarter lives on the 2 data replicas


def test_each_device_holds_a_quarter_of_the_lstm_weights(two_by_four):
    r = two_by_four
    want = r["bytes_replicated"] - r["bytes_lstm"] + r["bytes_lstm"] // 4
    assert r["bytes_per_device"] == [want]
    assert r["bytes_lstm"] * 3 // 4 > r["bytes_replicated"] // 2           # a real saving on this model
    lstm_opt = 2 * r["bytes_lstm"]                                           # Adam: mu and nu
    assert r["opt_bytes_per_device"] == [r["opt_bytes_replicated"] - lstm_opt + lstm_opt // 4]


def test_bad_model_meshes_raise(two_by_four):
    e = two_by_four["errors"]
    assert "multiple of the 8 devices" in e["indivisible"] and "(2, 12)" in e["indivisible"]
    assert "3 x 4 = 12 devices, but there are 8" in e["mesh"]


def test_one_device_model_axis_runs_and_checks_its_input():
    mesh = parallel.data_model_mesh(1, 1, jax.devices()[:1])
    params = jlstm.lstm(4).init(jax.random.key(0), 3)
    sh = parallel.model_shardings({"rnn": params, "w": jnp.ones(4)}, mesh)
    assert tuple(sh["rnn"].w_x.spec) == (None, "model") and tuple(sh["w"].spec) == ()
    assert sh["rnn"].w_c is None
    placed = parallel.shard_params(params, mesh)
    assert parallel.param_bytes_per_device(placed) == {str(jax.devices()[0]): sum(
        x.nbytes for x in jax.tree.leaves(params))}
    np.testing.assert_array_equal(np.asarray(placed.w_h), np.asarray(params.w_h))
    with pytest.raises(ValueError, match="not 'model'"):
        parallel.model_shardings(params, parallel.data_mesh(jax.devices()[:1]))
    with pytest.raises(ValueError, match="two different names"):
        parallel.data_model_mesh(1, 1, jax.devices()[:1], axes=("data", "data"))
    with pytest.raises(TypeError, match="place the tree"):
        parallel.param_bytes_per_device({"w": np.ones(3)})
    opt = optax.sgd(0.1)

    def train_step(p, s, batch, key):
        cell = jlstm.lstm(4)
        g = jax.grad(lambda q: jnp.sum(cell.step(q, cell.initial_state(q, 2), batch["xs"])[1] ** 2))(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s, {}

    step = parallel.model_parallel_step(train_step, mesh, time_major=False)      # xs [B, I]
    p1, _, _ = step(params, opt.init(params), {"xs": jnp.ones((2, 3))}, None)
    p0, _, _ = jax.jit(train_step)(params, opt.init(params), {"xs": jnp.ones((2, 3))}, None)
    np.testing.assert_allclose(np.asarray(p1.w_x), np.asarray(p0.w_x), rtol=1e-6)

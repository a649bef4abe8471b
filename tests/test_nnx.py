"""jlstm.nnx.Recurrent: same outputs as the functional apply, composes and trains inside nnx modules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

nnx = pytest.importorskip("flax.nnx")

from jlstm.tasks import copy_first  # noqa: E402

import jlstm  # noqa: E402
import jlstm.nnx as jnnx  # noqa: E402
from jlstm import checkpoint  # noqa: E402


def test_output_equals_functional_apply_and_a_step_loop():
    cell = jlstm.lstm(6, peephole="diagonal")
    mod = jnnx.Recurrent(cell, 3, rngs=nnx.Rngs(0))
    params = mod.params
    assert isinstance(params, jlstm.LSTMParams) and params.w_p is None
    # the params are those of cell.init with the Rngs' params key
    ref_params = cell.init(nnx.Rngs(0).params(), 3)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_array_equal(a, b)
    xs = jax.random.normal(jax.random.key(1), (7, 2, 3))
    lengths = jnp.array([7, 4])
    final, ys = mod(xs, lengths=lengths)
    ref_final, ref_ys = jlstm.recurrent(cell).apply(params, xs, lengths=lengths)
    np.testing.assert_array_equal(ys, ref_ys)
    np.testing.assert_array_equal(final.h, ref_final.h)
    # and against a Python loop over cell.step for the full-length sequence
    state = cell.initial_state(params, (2,))
    for t in range(7):
        state, y = cell.step(params, state, xs[t])
        np.testing.assert_allclose(ys[t, 0], y[0], rtol=1e-5, atol=1e-6)


def test_wraps_stacks_and_bidirectional_models():
    model = jlstm.stack(jlstm.recurrent(jlstm.lstm(4)), jlstm.bidirectional(jlstm.gru(3)))
    mod = jnnx.Recurrent(model, 2, rngs=nnx.Rngs(1))
    xs = jnp.ones((5, 3, 2))
    _, ys = mod(xs)
    np.testing.assert_array_equal(ys, model.apply(mod.params, xs)[1])
    assert ys.shape == (5, 3, 6)
    n_param_leaves = len(jax.tree.leaves(nnx.state(mod, nnx.Param)))
    assert n_param_leaves == len(jax.tree.leaves(mod.params)) == 3 + 8
    zero = mod.initial_state((3,))
    assert zero[0].h.shape == (3, 4)


class Classifier(nnx.Module):
    def __init__(self, rngs):
        self.encoder = jnnx.Recurrent(jlstm.lstm(8), 4, rngs=rngs)
        self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, xs):
        final, _ = self.encoder(xs)
        return self.head(final.h)


def test_composes_with_nnx_linear_and_trains_with_nnx_optimizer():
    model = Classifier(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    batch = copy_first(jax.random.key(0), 64, 6)
    before = jax.tree.map(np.asarray, model.encoder.params)

    @nnx.jit
    def train_step(model, optimizer, xs, ys):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(xs), ys).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, batch.xs, batch.ys)) for _ in range(25)]
    assert losses[-1] < 0.6 * losses[0]
    after = model.encoder.params
    assert not np.array_equal(before.w_h, after.w_h)  # the jlstm params were trained
    # the module is still exactly the functional model with its current params
    final, _ = jlstm.recurrent(jlstm.lstm(8)).apply(after, batch.xs)
    logits = final.h @ model.head.kernel[...] + model.head.bias[...]
    np.testing.assert_allclose(model(batch.xs), logits, rtol=1e-6, atol=1e-6)


def test_set_params_and_checkpoint_round_trip(tmp_path):
    mod = jnnx.Recurrent(jlstm.gru(5), 2, rngs=nnx.Rngs(0))
    other = jlstm.gru(5).init(jax.random.key(9), 2)
    path = tmp_path / "gru.ckpt"
    checkpoint.save(path, other)
    loaded, _ = checkpoint.load(path, like=mod.params)
    mod.set_params(loaded)
    for a, b in zip(jax.tree.leaves(mod.params), jax.tree.leaves(other)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="structure"):
        mod.set_params(jlstm.lstm(5).init(jax.random.key(0), 2))
    with pytest.raises(ValueError, match="shape"):
        mod.set_params(jlstm.gru(5).init(jax.random.key(0), 3))
    # existing params can be wrapped without rngs
    held = jnnx.Recurrent(jlstm.gru(5), 2, params=other)
    np.testing.assert_array_equal(held.params.w_x, other.w_x)


def test_bad_arguments():
    with pytest.raises(TypeError, match="jlstm.Cell or jlstm.SequenceModel"):
        jnnx.Recurrent("lstm", 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rngs"):
        jnnx.Recurrent(jlstm.lstm(3), 3)

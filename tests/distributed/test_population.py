"""jlstm.population: a vmapped population trains exactly like its members trained one by one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jlstm.tasks import adding_problem

import jlstm
from jlstm import population as pop

H, T, B, N = 8, 10, 4, 4
EPS = 1e-2
LRS = np.array([1e-3, 3e-3, 1e-2, 3e-2], np.float32)
MODEL = jlstm.recurrent(jlstm.lstm(H), recurrent_dropout=0.25)      # dropout: the per-member keys matter


def init(key):
    k1, k2 = jax.random.split(key)
    return {"rnn": MODEL.init(k1, 2), "w": jax.random.normal(k2, (H,)) * 0.3}


def loss_fn(params, batch, key):
    state, _ = MODEL.apply(params["rnn"], batch.xs, key=key)
    loss = jnp.mean((state.h @ params["w"] - batch.ys) ** 2)
    return loss, {"loss": loss}


def make_train_step(opt):
    def train_step(params, opt_state, batch, key):
        (loss, metrics), g = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {**metrics, "grad_norm": optax.tree.norm(g)}
    return train_step


@jax.jit
def ref_step(params, opt_state, batch, key, lr):
    """One member alone: a plain optax.adam (no inject_hyperparams, no vmap); lr is traced (one compile)."""
    return make_train_step(optax.adam(lr, eps=EPS))(params, opt_state, batch, key)


def batches(n_steps, per_member):
    keys = jax.random.split(jax.random.key(5), n_steps)
    if not per_member:
        return [adding_problem(k, B, T) for k in keys]
    return [jax.vmap(lambda kk: adding_problem(kk, B, T))(jax.random.split(k, N)) for k in keys]


@pytest.mark.parametrize("shared_batch", [True, False])
def test_population_equals_members_one_by_one(shared_batch):
    # eps well above float noise: Adam divides by |g| + eps, which would magnify the last-bit differences
    # of batched (vmapped) and unbatched matmuls in near-zero gradients into visible parameter differences.
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1.0, eps=EPS)
    params = pop.init_population(init, jax.random.key(0), N)
    opt_state = pop.init_population_opt_state(opt, params, learning_rate=LRS)
    step = jax.jit(pop.make_population_step(make_train_step(opt), shared_batch=shared_batch))
    data = batches(3, per_member=not shared_batch)
    keys = jax.random.split(jax.random.key(9), len(data))
    p, s = params, opt_state
    pop_losses = []
    for batch, key in zip(data, keys):
        p, s, m = step(p, s, batch, key)
        assert m["loss"].shape == (N,) and m["grad_norm"].shape == (N,)
        pop_losses.append(np.asarray(m["loss"]))

    member_keys = jax.random.split(jax.random.key(0), N)
    for i in range(N):
        pi = init(member_keys[i])
        si = optax.adam(0.0).init(pi)
        for t, (batch, key) in enumerate(zip(data, keys)):
            b = batch if shared_batch else pop.get_member(batch, i)
            pi, si, mi = ref_step(pi, si, b, jax.random.split(key, N)[i], LRS[i])
            np.testing.assert_allclose(pop_losses[t][i], mi["loss"], rtol=2e-5, atol=1e-6)
        for a, r in zip(jax.tree.leaves(pop.get_member(p, i)), jax.tree.leaves(pi)):
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)
    # the members really differ: different learning rates moved the params by different amounts
    moved = [max(float(jnp.max(jnp.abs(a - b))) for a, b in
                 zip(jax.tree.leaves(pop.get_member(p, i)), jax.tree.leaves(pop.get_member(params, i))))
             for i in range(N)]
    assert moved == sorted(moved) and moved[-1] > 10 * moved[0]


def test_init_population_stacks_member_inits():
    params = pop.init_population(init, jax.random.key(3), 3)
    assert pop.population_size(params) == 3
    for i, k in enumerate(jax.random.split(jax.random.key(3), 3)):
        for a, r in zip(jax.tree.leaves(pop.get_member(params, i)), jax.tree.leaves(init(k))):
            np.testing.assert_array_equal(a, r)


def test_set_hyperparams_and_errors():
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
    params = pop.init_population(lambda k: jax.random.normal(k, (2,)), jax.random.key(0), 3)
    s = pop.init_population_opt_state(opt, params, learning_rate=jnp.array([0.1, 0.2, 0.3]))
    hp = pop._hyperparam_states(s)[0].hyperparams
    np.testing.assert_allclose(hp["learning_rate"], [0.1, 0.2, 0.3])
    s = pop.set_hyperparams(s, learning_rate=0.5)
    np.testing.assert_allclose(pop._hyperparam_states(s)[0].hyperparams["learning_rate"], [0.5] * 3)
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        pop.set_hyperparams(s, learning_rate=jnp.ones(4))
    with pytest.raises(ValueError, match="no injected hyperparameter named \\['lr'\\]"):
        pop.set_hyperparams(s, lr=0.1)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        pop.init_population_opt_state(optax.adam(1e-3), params, learning_rate=0.1)
    with pytest.raises(ValueError, match="positive int"):
        pop.init_population(init, jax.random.key(0), 0)
    with pytest.raises(TypeError, match="init_fn"):
        pop.init_population(None, jax.random.key(0), 2)
    assert pop.best_member([0.3, float("nan"), 0.1, 0.2]) == 2
    assert pop.best_member([0.3, 0.9, 0.1], mode="max") == 1

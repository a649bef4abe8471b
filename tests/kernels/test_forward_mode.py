"""Forward-mode AD on the fused LSTM path (``fast=True``, the default) equals the reference path.

The fused path is a ``jax.custom_jvp`` whose tangent is a linear recurrence; reverse
mode is its transpose. ``jax.jvp``, ``jax.jacfwd``, ``jax.linearize`` and
``jax.hessian`` through :func:`jlstm.scan` and :func:`jlstm.recurrent` are compared
with the same transforms of ``fast=False`` (a plain ``lax.scan`` of ``cell.step``,
differentiated by JAX itself), in float64, with lengths, a mask, reverse and peepholes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm

T, B, I, H = 4, 2, 2, 3


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _setup(peephole=None):
    cell = jlstm.lstm(H, peephole=peephole, param_dtype=jnp.float64)
    k = jax.random.split(jax.random.key(0), 6)
    params = cell.init(k[0], I)
    params = params._replace(b=params.b + 0.3 * jax.random.normal(k[1], params.b.shape, jnp.float64))
    if peephole:
        params = params._replace(w_c=0.5 * jax.random.normal(k[2], params.w_c.shape, jnp.float64))
    xs = jax.random.normal(k[3], (T, B, I), jnp.float64)
    state = jlstm.LSTMState(h=0.5 * jax.random.normal(k[4], (B, H), jnp.float64),
                            c=0.5 * jax.random.normal(k[5], (B, H), jnp.float64))
    return cell, params, xs, state


def _tangent(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])


def _close(a, b, tol=1e-10):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


KWARGS = {
    "plain": {},
    "lengths_reverse": {"lengths": np.array([4, 1]), "reverse": True},
    "mask": {"mask": np.array([[1, 1], [0, 1], [1, 0], [1, 1]], bool)},
}
CASES = [(None, "plain"), (None, "lengths_reverse"), (None, "mask"), ("diagonal", "mask"),
         ("full", "lengths_reverse")]


@pytest.mark.parametrize("peephole,name", CASES)
def test_jvp_and_linearize_equal_reference(peephole, name):
    cell, params, xs, state = _setup(peephole)
    kw = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in KWARGS[name].items()}

    def run(fast):
        return lambda p, x, s: jlstm.scan(cell, p, x, s, fast=fast, **kw)

    assert "custom_jvp_call" in str(jax.make_jaxpr(run(True))(params, xs, state))
    primals = (params, xs, state)
    tangents = (_tangent(params, 1), _tangent(xs, 2), _tangent(state, 3))
    got = jax.jit(functools.partial(jax.jvp, run(True)))(primals, tangents)
    ref = jax.jit(functools.partial(jax.jvp, run(False)))(primals, tangents)
    _close(got, ref)
    assert float(jnp.max(jnp.abs(got[1][1]))) > 0  # the output tangent is really there

    @jax.jit                          # one compiled program (eager linearize compiles op by op)
    def linearized(primals, tangents):
        out, lin = jax.linearize(run(True), *primals)
        return out, lin(*tangents), lin(*jax.tree.map(lambda t: 2 * t, tangents))

    out, lin_t, lin_2t = linearized(primals, tangents)
    _close((out, lin_t), ref)
    # The linearized map is linear: twice the tangent, twice the output tangent.
    _close(lin_2t, jax.tree.map(lambda t: 2 * t, ref[1]))


def test_jacfwd_equals_jacrev_and_reference():
    """jacfwd of the fused path = jacrev of the fused path = jacfwd of the reference path."""
    cell, params, xs, state = _setup()
    lengths = jnp.array([3, 4])

    def f(fast):
        return lambda x: jlstm.scan(cell, params, x, state, lengths=lengths, fast=fast)[1]

    fwd = jax.jit(jax.jacfwd(f(True)))(xs)
    assert fwd.shape == (T, B, H, T, B, I)
    _close(fwd, jax.jit(jax.jacfwd(f(False)))(xs))
    _close(fwd, jax.jit(jax.jacrev(f(True)))(xs))
    # Causality: an output never depends on a later input.
    assert float(jnp.max(jnp.abs(fwd[0, :, :, 1:]))) == 0.0


def test_hessian_equals_reference():
    """Second order (jacfwd of jacrev): the custom_jvp rule is itself differentiable."""
    cell, params, xs, state = _setup("diagonal")
    mask = jnp.asarray(KWARGS["mask"]["mask"])

    def loss(fast):
        def f(b):
            final, ys = jlstm.scan(cell, params._replace(b=b), xs, state, mask=mask, fast=fast)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(final.c ** 2)
        return f

    got = jax.jit(jax.hessian(loss(True)))(params.b)
    assert got.shape == (4 * H, 4 * H)
    _close(got, jax.jit(jax.hessian(loss(False)))(params.b), 1e-9)


def test_recurrent_layer_jvp_equals_reference():
    cell, params, xs, state = _setup()
    lengths = jnp.array([2, 4])
    tangents = (_tangent(params, 4), _tangent(xs, 5))

    def run(fast):
        layer = jlstm.recurrent(cell, fast=fast)
        return lambda p, x: layer.apply(p, x, lengths=lengths)

    def jvp(fast):
        return jax.jit(lambda p, x: jax.jvp(run(fast), (p, x), tangents))(params, xs)

    _close(jvp(True), jvp(False))


def test_jvp_with_some_tangents_zero():
    """Only the weights vary (xs and the state are closed over): symbolic zero tangents are skipped."""
    cell, params, xs, state = _setup("full")

    def f(fast):
        return lambda p: jlstm.scan(cell, p, xs, state, fast=fast)[1]

    t = _tangent(params, 6)

    def jvp(fast):                    # xs and state stay closed-over constants inside the program
        return jax.jit(lambda p: jax.jvp(f(fast), (p,), (t,)))(params)

    _close(jvp(True), jvp(False))

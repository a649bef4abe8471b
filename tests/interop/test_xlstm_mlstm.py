"""jlstm.mlstm_core against the ``xlstm`` package's mLSTM backends, run in the same test.

``parallel_stabilized_simple`` (the parallel form the xLSTM layer trains with) must equal
every form of ``mlstm_core`` on the same inputs: values to 1e-5 and input gradients (torch
autograd against jax.grad) to 1e-4 in float32. The final states must equal those of a loop
over ``recurrent_step_stabilized_simple``, and ``chunkwise_simple`` started from a carried
state must equal ``mlstm_core`` started from the same state.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm

torch = pytest.importorskip("torch")
backends = pytest.importorskip("xlstm.blocks.mlstm.backends")

B, NH, S, DH = 2, 3, 16, 4
FORMS = ("parallel", "chunkwise", "sequential")
core = jax.jit(jlstm.mlstm_core, static_argnames=("method", "chunk_size", "return_state"))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(B, NH, S, DH)).astype(np.float32) for _ in range(3))
    i_pre = rng.normal(0, 2, size=(B, NH, S, 1)).astype(np.float32)
    f_pre = rng.normal(1, 2, size=(B, NH, S, 1)).astype(np.float32)
    return q, k, v, i_pre, f_pre


def _to_jlstm(q, k, v, i_pre, f_pre):
    """(B, NH, S, DH) and (B, NH, S, 1) -> time-major [S, B, NH, DH] and [S, B, NH]."""
    move = [jnp.asarray(np.moveaxis(a, 2, 0)) for a in (q, k, v)]
    gates = [jnp.asarray(np.moveaxis(a[..., 0], 2, 0)) for a in (i_pre, f_pre)]
    return (*move, *gates)


def _torch_parallel(arrays, weight):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    h = backends.parallel_stabilized_simple(*ts)
    (h * torch.tensor(weight)).sum().backward()
    return h.detach().numpy(), [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("method", ("parallel", "chunkwise"))  # sequential = these, in test_mlstm
def test_core_equals_parallel_stabilized_simple_values_and_grads(method):
    arrays = _inputs()
    weight = np.cos(np.arange(B * NH * S * DH)).reshape(B, NH, S, DH).astype(np.float32)
    want_h, want_grads = _torch_parallel(arrays, weight)
    w_tm = jnp.asarray(np.moveaxis(weight, 2, 0))

    def loss(*a):
        return jnp.sum(core(*a, method=method, chunk_size=5) * w_tm)

    args = _to_jlstm(*arrays)
    h = core(*args, method=method, chunk_size=5)
    np.testing.assert_allclose(np.moveaxis(np.asarray(h), 0, 2), want_h, atol=1e-5, rtol=1e-5)
    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(*args)
    for g, want, name in zip(grads, want_grads, ("q", "k", "v", "i_pre", "f_pre")):
        g = np.moveaxis(np.asarray(g), 0, 2)
        np.testing.assert_allclose(g.reshape(want.shape), want, atol=1e-4, rtol=1e-4, err_msg=name)


def test_final_state_equals_recurrent_steps_and_chunkwise_from_a_state():
    q, k, v, i_pre, f_pre = _inputs(1)
    args = _to_jlstm(q, k, v, i_pre, f_pre)
    # the reference's recurrent step from jlstm's zero state (m = -1e30, a finite -inf)
    C = torch.zeros(B, NH, DH, DH)
    n = torch.zeros(B, NH, DH, 1)
    m = torch.full((B, NH, 1, 1), jlstm.cells.mlstm.NO_MEMORY)
    hs = []
    for t in range(S):
        sl = [torch.tensor(a[:, :, t:t + 1]) for a in (q, k, v, i_pre, f_pre)]
        h, (C, n, m) = backends.recurrent_step_stabilized_simple(C, n, m, *sl)
        hs.append(h.numpy())
    half, scale = S // 2, np.float32(np.sqrt(DH))
    for method in FORMS:
        h, state = core(*args, method=method, chunk_size=5, return_state=True)
        np.testing.assert_allclose(np.moveaxis(np.asarray(h), 0, 2), np.concatenate(hs, axis=2),
                                   atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(state.c, C.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(state.n, n.numpy()[..., 0], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(state.m, m.numpy()[..., 0, 0], atol=1e-5, rtol=1e-5)
        # streaming: the second half from the first half's state, against chunkwise_simple, whose
        # state holds unscaled keys (it scales q by 1/sqrt(d) instead): C and n are sqrt(d) times ours
        _, s1 = core(*(a[:half] for a in args), method=method, chunk_size=4, return_state=True)
        h2, s2 = core(*(a[half:] for a in args), method=method, chunk_size=4, state=s1, return_state=True)
        ref_h2, (rC, rn, rm) = backends.chunkwise_simple(
            *(torch.tensor(a[:, :, half:]) for a in (q, k, v)),
            torch.tensor(i_pre[:, :, half:, 0]), torch.tensor(f_pre[:, :, half:, 0]),
            initial_C=torch.tensor(np.asarray(s1.c) * scale), initial_n=torch.tensor(np.asarray(s1.n) * scale),
            initial_m=torch.tensor(np.asarray(s1.m)), chunk_size=4, return_last_state=True)
        np.testing.assert_allclose(np.moveaxis(np.asarray(h2), 0, 2), ref_h2.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(s2.c * scale, rC.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(s2.n * scale, rn.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(s2.m, rm.numpy()[..., 0, 0], atol=1e-5, rtol=1e-5)

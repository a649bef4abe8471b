"""jlstm.interop.from_xlstm_slstm against the ``xlstm`` package's sLSTMLayer, run in the same test.

The real layer (vanilla backend, pure PyTorch, ``conv1d_kernel_size=0``) and the converted
jlstm model get the same weights and inputs: outputs and final states agree to 1e-5, input
and weight gradients (torch autograd against jax.grad) to 1e-4, in float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm import interop

torch = pytest.importorskip("torch")
slstm_layer = pytest.importorskip("xlstm.blocks.slstm.layer")

B, T, E, NH = 2, 9, 8, 2
D = E // NH


def _layer(seed=0, **cfg):
    torch.manual_seed(seed)
    config = slstm_layer.sLSTMLayerConfig(embedding_dim=E, num_heads=NH, backend="vanilla",
                                          conv1d_kernel_size=0, **cfg)
    layer = slstm_layer.sLSTMLayer(config)
    with torch.no_grad():  # the default init has R = 0 and a zero group-norm weight: perturb everything
        for p in layer.parameters():
            p.add_(0.4 * torch.randn_like(p))
    return layer


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(B, T, E, generator=g)


def _tm(a):
    return jnp.asarray(np.swapaxes(a.detach().numpy(), 0, 1))


apply = jax.jit(lambda model, p, xs, s: model.apply(p, xs, s), static_argnums=0)


def test_forward_and_final_state():
    layer = _layer()
    x = _inputs()
    out, st = layer(x, return_last_state=True)
    model, params = interop.from_xlstm_slstm(layer)
    final, ys = apply(model, params, _tm(x), None)
    np.testing.assert_allclose(ys, _tm(out), atol=1e-5, rtol=1e-5)
    ref = st["slstm_state"].detach().numpy()
    for k, field in enumerate(jlstm.SLSTMState._fields):
        np.testing.assert_allclose(getattr(final, field), ref[k], atol=1e-5, rtol=1e-5, err_msg=field)


def test_continues_from_a_state_like_the_layer():
    """The second half of a sequence from the state after the first half: both libraries agree."""
    layer = _layer(2)
    x = _inputs(3)
    _, st = layer(x[:, :4], return_last_state=True)
    out, st2 = layer(x[:, 4:], slstm_state=st["slstm_state"], return_last_state=True)
    model, params = interop.from_xlstm_slstm(layer)
    state = jlstm.SLSTMState(*[jnp.asarray(a) for a in st["slstm_state"].detach().numpy()])
    final, ys = apply(model, params, _tm(x[:, 4:]), state)
    np.testing.assert_allclose(ys, _tm(out), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(final.m, st2["slstm_state"][3].detach().numpy(), atol=1e-5, rtol=1e-5)


def test_input_and_weight_gradients():
    layer = _layer(4)
    x = _inputs(5).requires_grad_(True)
    weight = torch.cos(torch.arange(B * T * E, dtype=torch.float32)).reshape(B, T, E)
    out, st = layer(x, return_last_state=True)
    ((out * weight).sum() + st["slstm_state"][1].sum()).backward()

    model, params = interop.from_xlstm_slstm(layer)
    w_tm = _tm(weight)

    def loss(params, xs):
        final, ys = model.apply(params, xs)
        return jnp.sum(ys * w_tm) + jnp.sum(final.c)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, _tm(x))
    np.testing.assert_allclose(g_x, _tm(x.grad), atol=1e-4, rtol=1e-4)
    # the head-wise projections (the module named fgate computes i, igate computes f)
    for g, gate in enumerate(("fgate", "igate", "zgate", "ogate")):
        want = np.swapaxes(getattr(layer, gate).weight.grad.numpy(), 1, 2)
        np.testing.assert_allclose(g_params.cell.w_x[..., g * D:(g + 1) * D], want, atol=1e-4, rtol=1e-4,
                                   err_msg=gate)
    cell = layer.slstm_cell
    r_grad = cell._recurrent_kernel_int2ext(cell._recurrent_kernel_.grad).numpy().reshape(NH, D, 4 * D)
    np.testing.assert_allclose(g_params.cell.w_h, r_grad, atol=1e-4, rtol=1e-4)
    b_grad = np.transpose(cell._bias_int2ext(cell._bias_.grad).numpy(), (1, 0, 2)).reshape(-1)
    np.testing.assert_allclose(g_params.cell.b, b_grad, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(g_params.norm_scale, layer.group_norm.weight.grad.numpy(), atol=1e-4, rtol=1e-4)


def test_lengths_equal_the_layer_on_each_prefix():
    layer = _layer(6)
    x = _inputs(7)
    model, params = interop.from_xlstm_slstm(layer)
    lengths = jnp.array([T, 5])
    final, ys = model.apply(params, _tm(x), lengths=lengths)
    out, st = layer(x[1:, :5], return_last_state=True)
    np.testing.assert_allclose(ys[:5, 1], out[0].detach().numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(ys[5:, 1], 0.0)
    np.testing.assert_allclose(final.h[1], st["slstm_state"][0, 0].detach().numpy(), atol=1e-5, rtol=1e-5)
    # batch-major inputs give the same outputs, batch-major
    _, ys_bm = model.apply(params, jnp.asarray(x.numpy()), lengths=lengths, time_major=False)
    np.testing.assert_allclose(jnp.swapaxes(ys_bm, 0, 1), ys, atol=1e-6)


def test_resets_restart_like_a_fresh_layer_call_and_eager_calls_keep_one_program():
    """A reset at step r of sequence 1 equals the layer run on that sequence's steps from r, from its own
    zero state; the other sequence is unchanged. Eagerly, ``apply`` runs one kept program, as under ``jit``."""
    from jlstm.core import eager

    layer = _layer(8)
    x = _inputs(9)
    model, params = interop.from_xlstm_slstm(layer)
    r = 4
    resets = jnp.zeros((T, B), bool).at[r, 1].set(True)
    eager.clear()
    final, ys = model.apply(params, _tm(x), resets=resets)
    model.apply(params, _tm(x) + 1.0, resets=resets)                 # new values, same shapes: kept
    assert eager._jitted.cache_info().currsize == 1 and eager._jitted.cache_info().hits == 1
    after, st = layer(x[1:, r:], return_last_state=True)
    before = layer(x[1:, :r])
    np.testing.assert_allclose(ys[r:, 1], after[0].detach().numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ys[:r, 1], before[0].detach().numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(final.c[1], st["slstm_state"][1, 0].detach().numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ys[:, 0], _tm(layer(x[:1]))[:, 0], atol=1e-5, rtol=1e-5)
    jitted = jax.jit(lambda p, xs: model.apply(p, xs, resets=resets))(params, _tm(x))
    np.testing.assert_allclose(ys, jitted[1], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="resets"):
        model.apply(params, _tm(x), resets=jnp.zeros((T, B + 1), bool))


def test_clear_errors():
    # a layer with a conv converts too, into jlstm.xlstm.slstm_layer (tests/interop/test_xlstm_blocks.py)
    _, params = interop.from_xlstm_slstm(slstm_layer.sLSTMLayer(slstm_layer.sLSTMLayerConfig(
        embedding_dim=E, num_heads=NH, backend="vanilla", conv1d_kernel_size=4)))
    assert isinstance(params, jlstm.xlstm.SLSTMLayerParams)
    with pytest.raises(TypeError, match="sLSTMLayer"):
        interop.from_xlstm_slstm(torch.nn.Linear(2, 2))

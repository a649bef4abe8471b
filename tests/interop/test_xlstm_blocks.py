"""jlstm.interop's xLSTM layers, blocks, stacks and language model against the ``xlstm`` package, in the same test.

The real modules (the sLSTM on its vanilla, pure-PyTorch backend) run in float64 next to the
converted jlstm models (jax x64 on inside each test): outputs agree to 1e-5 and input gradients
(torch autograd against jax.grad) to 1e-4. Every weight is perturbed first, since the package
initialises some to zero.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm import interop

torch = pytest.importorskip("torch")
xlstm = pytest.importorskip("xlstm")

B, T, E = 2, 12, 16


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _perturbed(module, seed):
    torch.manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def _inputs(seed, width=E):
    return torch.randn(B, T, width, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _tm(a):
    return jnp.asarray(np.swapaxes(a.detach().numpy(), 0, 1))


def _stack_config(num_blocks=3, slstm_at=(1,), cls=None, **extra):
    return (cls or xlstm.xLSTMBlockStackConfig)(
        mlstm_block=xlstm.mLSTMBlockConfig(mlstm=xlstm.mLSTMLayerConfig(conv1d_kernel_size=4, num_heads=4,
                                                                         qkv_proj_blocksize=4)),
        slstm_block=xlstm.sLSTMBlockConfig(
            slstm=xlstm.sLSTMLayerConfig(backend="vanilla", num_heads=4, conv1d_kernel_size=4),
            feedforward=xlstm.FeedForwardConfig(proj_factor=1.3, act_fn="gelu")),
        context_length=T, num_blocks=num_blocks, embedding_dim=E, slstm_at=list(slstm_at), **extra)


def _compare(module, model, params, x, method=None):
    """Values to 1e-5 and input gradients to 1e-4 of ``module(x)`` and the jlstm model, float64."""
    x = x.clone().requires_grad_(True)
    weight = torch.cos(torch.arange(x.numel(), dtype=torch.float64)).reshape(x.shape)
    out = module(x)
    (out * weight).sum().backward()

    @jax.jit
    def run(xs):
        return model.apply(params, xs)[1]

    ys = run(_tm(x))
    np.testing.assert_allclose(ys, _tm(out), atol=1e-5, rtol=1e-5)
    grad = jax.jit(jax.grad(lambda xs: jnp.sum(run(xs) * _tm(weight))))(_tm(x))
    np.testing.assert_allclose(grad, _tm(x.grad), atol=1e-4, rtol=1e-4)
    return ys


def test_mlstm_layer_conv4_four_heads_values_and_input_gradients():
    layer = _perturbed(xlstm.mLSTMLayer(xlstm.mLSTMLayerConfig(
        embedding_dim=E, num_heads=4, conv1d_kernel_size=4, qkv_proj_blocksize=4, context_length=T)), 0)
    model, params = interop.from_xlstm_mlstm(layer)
    assert params.conv.w.shape == (4, 64) and params.w_q.shape == (16, 4, 4) and params.w_gates.shape == (192, 8)
    ys = _compare(layer, model, params, _inputs(1))
    for method in ("chunkwise", "sequential"):  # the other forms, same params: the same values
        other = jlstm.xlstm.mlstm_layer(E, num_heads=4, inner_size=64, method=method, chunk_size=5)
        np.testing.assert_allclose(jax.jit(other.apply)(params, _tm(_inputs(1)))[1], ys, atol=1e-9)


def test_slstm_layer_with_a_conv_values_gradients_and_state():
    layer = _perturbed(xlstm.sLSTMLayer(xlstm.sLSTMLayerConfig(
        embedding_dim=E, num_heads=4, backend="vanilla", conv1d_kernel_size=4)), 2)
    model, params = interop.from_xlstm_slstm(layer)
    assert isinstance(params, jlstm.xlstm.SLSTMLayerParams) and params.conv.w.shape == (4, E)
    x = _inputs(3)
    _compare(layer, model, params, x)
    half = T // 2
    _, st = layer(x[:, :half], return_last_state=True)
    out, st2 = layer(x[:, half:], conv_state=st["conv_state"], slstm_state=st["slstm_state"],
                     return_last_state=True)
    apply = jax.jit(model.apply)
    first, _ = apply(params, _tm(x[:, :half]))
    np.testing.assert_allclose(first.conv, st["conv_state"].detach().numpy(), atol=1e-12)
    final, ys = apply(params, _tm(x[:, half:]), first)
    np.testing.assert_allclose(ys, _tm(out), atol=1e-5, rtol=1e-5)
    for k, field in enumerate(jlstm.SLSTMState._fields):
        np.testing.assert_allclose(getattr(final.cell, field), st2["slstm_state"][k].detach().numpy(), atol=1e-5,
                                   err_msg=field)


def test_block_stack_mlstm_slstm_mlstm_values_gradients_and_two_chunks():
    """The judged case: 3 blocks, sLSTM at 1 (vanilla, conv 4), gated GELU feed-forward, post-norm."""
    stack = _perturbed(xlstm.xLSTMBlockStack(_stack_config()), 4)
    model, params = interop.from_xlstm_block_stack(stack)
    kinds = [b.config.layer.config.kind for b in model.config.blocks]
    assert kinds == ["xlstm_mlstm_layer", "xlstm_slstm_layer", "xlstm_mlstm_layer"]
    assert params.blocks[1].ffn is not None and params.blocks[0].ffn is None and params.post_norm is not None
    x = _inputs(5)
    ys = _compare(stack, model, params, x)
    step = jax.jit(lambda xs, s: model.apply(params, xs, s))
    s1, y1 = step(_tm(x[:, :5]), None)
    s2, y2 = step(_tm(x[:, 5:]), s1)
    np.testing.assert_allclose(jnp.concatenate([y1, y2]), ys, atol=1e-10)
    whole, _ = step(_tm(x), None)
    for a, b in zip(jax.tree.leaves(s2), jax.tree.leaves(whole)):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_language_model_converts_and_back_to_a_block_stack():
    cfg = _stack_config(num_blocks=2, slstm_at=(1,), cls=xlstm.xLSTMLMModelConfig, vocab_size=11)
    lm = _perturbed(xlstm.xLSTMLMModel(cfg), 6)
    model, params = interop.from_xlstm_lm(lm)
    tokens = torch.randint(0, 11, (B, T), generator=torch.Generator().manual_seed(7))
    _, logits = jax.jit(model.apply)(params, jnp.asarray(tokens.numpy().T))
    np.testing.assert_allclose(logits, _tm(lm(tokens)), atol=1e-5, rtol=1e-5)
    # the converted stack, written back into a fresh xLSTMBlockStack, computes what the original did
    back = interop.to_xlstm_block_stack(model.encoder, params.encoder, context_length=T)
    x = _inputs(8)
    np.testing.assert_allclose(back(x).detach().numpy(), lm.xlstm_block_stack(x).detach().numpy(), atol=1e-12)


def test_to_xlstm_block_stack_from_jlstm_params():
    model = jlstm.xlstm.xlstm_stack(E, 3, slstm_at=[0], mlstm=dict(num_heads=2, proj_factor=1.5, round_to=8),
                                    slstm=dict(num_heads=2, bias_init="small_init"))
    params = model.init(jax.random.key(0), E)
    params = jax.tree.map(lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size).reshape(a.shape)), params)
    stack = interop.to_xlstm_block_stack(model, params, context_length=T)
    assert stack.blocks[1].xlstm.config._inner_embedding_dim == 24
    x = _inputs(9)
    np.testing.assert_allclose(_tm(stack(x)), jax.jit(model.apply)(params, _tm(x))[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mLSTM blocks differ"):
        interop.to_xlstm_block_stack(jlstm.xlstm.block_stack(
            [jlstm.xlstm.mlstm_block(E, num_heads=2), jlstm.xlstm.mlstm_block(E, num_heads=4)]), params)


def test_conversion_errors_are_clear():
    with pytest.raises(TypeError, match="mLSTMLayer.*from_xlstm_block"):
        interop.from_xlstm_mlstm(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="xLSTMBlockStack"):
        interop.from_xlstm_block_stack(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="block_stack"):
        interop.to_xlstm_block_stack(jlstm.recurrent(jlstm.lstm(4)), None)

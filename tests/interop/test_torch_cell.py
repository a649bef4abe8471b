"""jlstm <-> PyTorch nn.LSTMCell / nn.GRUCell: the torch cells stepped over a sequence in a loop.

Outputs, final states and input gradients (torch autograd against jax.grad) agree to 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from peer_runs import jlstm_run

import jlstm
from jlstm import interop

torch = pytest.importorskip("torch")

TOL = dict(atol=1e-5, rtol=1e-5)
T, B, I, H = 6, 3, 4, 5


def _randomised(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g) - 0.5)
    return module


def _data(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in ((T, B, I), (T, B, H), (B, H), (B, H))]


def _torch_run(cell, xs, state, cot):
    """The torch cell stepped over time; outputs, final state and d sum(ys * cot) / d xs."""
    x = torch.tensor(xs, requires_grad=True)
    s = tuple(torch.tensor(a) for a in state) if isinstance(state, tuple) else torch.tensor(state)
    ys = []
    for t in range(T):
        s = cell(x[t], s)
        ys.append(s[0] if isinstance(s, tuple) else s)
    ys = torch.stack(ys)
    (ys * torch.tensor(cot)).sum().backward()
    final = tuple(a.detach().numpy() for a in s) if isinstance(s, tuple) else s.detach().numpy()
    return ys.detach().numpy(), final, x.grad.numpy()


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_matches_torch_both_ways(bias):
    cell_t = _randomised(torch.nn.LSTMCell(I, H, bias=bias), 0)
    cell, params = interop.from_torch_lstm_cell(cell_t)            # the module, or its state_dict
    assert cell == jlstm.lstm(H)
    xs, cot, h0, c0 = _data(1)
    ys_t, (h_t, c_t), dx_t = _torch_run(cell_t, xs, (h0, c0), cot)
    ys, final, dx = jlstm_run(cell, params, xs, jlstm.LSTMState(jnp.asarray(h0), jnp.asarray(c0)), cot)
    for got, want in ((ys, ys_t), (final.h, h_t), (final.c, c_t), (dx, dx_t)):
        np.testing.assert_allclose(got, want, **TOL)
    back = torch.nn.LSTMCell(I, H)
    back.load_state_dict(interop.to_torch_lstm_cell(params))
    np.testing.assert_allclose(_torch_run(back, xs, (h0, c0), cot)[0], ys_t, **TOL)


def test_gru_cell_matches_torch_both_ways_inside_a_larger_model():
    model = torch.nn.Module()
    model.core = _randomised(torch.nn.GRUCell(I, H), 2)
    model.head = torch.nn.Linear(H, 2)
    cell, params = interop.from_torch_gru_cell(model.state_dict(), prefix="core.")
    assert cell == jlstm.gru(H)
    xs, cot, h0, _ = _data(3)
    ys_t, h_t, dx_t = _torch_run(model.core, xs, h0, cot)
    ys, final, dx = jlstm_run(cell, params, xs, jlstm.GRUState(jnp.asarray(h0)), cot)
    for got, want in ((ys, ys_t), (final.h, h_t), (dx, dx_t)):
        np.testing.assert_allclose(got, want, **TOL)
    sd = interop.to_torch_gru_cell(params, as_numpy=True)
    for k, v in model.core.state_dict().items():
        np.testing.assert_array_equal(sd[k], v.numpy())


def test_bad_torch_cell_inputs_raise_and_name_the_fix():
    with pytest.raises(TypeError, match="from_torch_lstm_cell"):
        interop.from_torch_lstm(torch.nn.LSTMCell(I, H))
    with pytest.raises(ValueError, match="use from_torch_lstm_cell"):
        interop.from_torch_lstm(torch.nn.LSTMCell(I, H).state_dict())
    with pytest.raises(TypeError, match="from_torch_gru_cell"):
        interop.from_torch_lstm_cell(torch.nn.GRUCell(I, H))
    with pytest.raises(ValueError, match="use from_torch_lstm"):
        interop.from_torch_lstm_cell(torch.nn.LSTM(I, H).state_dict())
    with pytest.raises(ValueError, match=r"weight_ih has shape \(15, 4\), expected \(20, 4\)"):
        interop.from_torch_lstm_cell(torch.nn.GRUCell(I, H).state_dict())
    partial = {f"core.{k}": v for k, v in torch.nn.GRUCell(I, H).state_dict().items() if k != "bias_hh"}
    with pytest.raises(ValueError, match="lacks core.bias_hh"):
        interop.from_torch_gru_cell(partial, prefix="core.")
    with pytest.raises(ValueError, match="projection"):
        interop.to_torch_lstm_cell(jlstm.lstm(H, proj_size=2).init(jax.random.key(0), I))
    with pytest.raises(TypeError, match="reset_after=False"):
        interop.to_torch_gru_cell(jlstm.gru(H, reset_after=False).init(jax.random.key(0), I))

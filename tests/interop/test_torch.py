"""jlstm <-> PyTorch nn.LSTM / nn.GRU: real torch modules run on the same inputs.

Outputs, final states and input gradients (torch autograd against jax.grad) must agree
to 1e-5 in float32, with and without lengths (torch's pack_padded_sequence).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm
from jlstm import interop

torch = pytest.importorskip("torch")
nn = torch.nn

TOL = dict(atol=1e-5, rtol=1e-5)
T, B, I = 6, 3, 4


def _random_params(model, input_size, seed):
    """Params of the model's structure filled with uniform(-0.5, 0.5) (no compiled init needed)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda k: model.init(k, input_size), jax.random.key(0))
    return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape).astype(np.float32)), shapes)


def _randomize(module, seed):
    """Uniform(-0.5, 0.5) for every weight and both biases, so b_ih != b_hh."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g) - 0.5)
    return module.float()


def _torch_rnn(kind, seed, hidden=5, num_layers=1, bidirectional=False, proj_size=0):
    torch.manual_seed(seed)
    if kind == "lstm":
        m = nn.LSTM(I, hidden, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size)
    else:
        m = nn.GRU(I, hidden, num_layers=num_layers, bidirectional=bidirectional)
    return _randomize(m, seed)


def _torch_run(m, kind, xs, h0, c0, cot, lengths=None):
    """Torch forward + backward of sum(ys * cot); returns ys, h_n, c_n, dxs, dh0 as numpy."""
    x = torch.tensor(xs, requires_grad=True)
    h = torch.tensor(h0, requires_grad=True)
    c = None if c0 is None else torch.tensor(c0, requires_grad=True)
    inp = x
    if lengths is not None:
        inp = nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    out, hc = m(inp, h if kind == "gru" else (h, c))
    if lengths is not None:
        out, _ = nn.utils.rnn.pad_packed_sequence(out, total_length=xs.shape[0])
    (out * torch.tensor(cot)).sum().backward()
    h_n, c_n = (hc, None) if kind == "gru" else hc
    np_ = lambda t: None if t is None else t.detach().numpy()
    return np_(out), np_(h_n), np_(c_n), np_(x.grad), np_(h.grad)


def _jlstm_run(model, params, kind, xs, h0, c0, cot, lengths=None):
    def loss(xs, h0, c0):
        state = interop.from_torch_state(params, h0, c0)
        final, ys = model.apply(params, xs, state, lengths=lengths)
        return jnp.sum(ys * cot), (ys, final)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (ys, final)), (dx, dh) = grad(xs, h0, c0)
    final = interop.to_torch_state(final)  # torch tensors, converted outside jit
    assert all(isinstance(t, torch.Tensor) for t in ((final,) if kind == "gru" else final))
    h_n, c_n = (final, None) if kind == "gru" else final
    return ys, h_n, c_n, dx, dh


def _inputs(seed, dirs, num_layers, out_size, state_size, hidden):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((num_layers * dirs, B, state_size)).astype(np.float32)
    c0 = rng.standard_normal((num_layers * dirs, B, hidden)).astype(np.float32)
    cot = rng.standard_normal((T, B, dirs * out_size)).astype(np.float32)
    return xs, h0, c0, cot


def _compare(got, want):
    for name, g, w in zip(("ys", "h_n", "c_n", "d xs", "d h0"), got, want):
        if w is None:
            assert g is None
            continue
        np.testing.assert_allclose(np.asarray(g), w, **TOL, err_msg=name)


LSTM_CONFIGS = [  # (num_layers, bidirectional, proj_size)
    (1, False, 0),
    (2, True, 3),
    (2, False, 2),
]


@pytest.mark.parametrize("num_layers,bidirectional,proj_size", LSTM_CONFIGS)
def test_lstm_matches_torch(num_layers, bidirectional, proj_size):
    H = 5
    m = _torch_rnn("lstm", 1, H, num_layers, bidirectional, proj_size)
    model, params = interop.from_torch_lstm(m.state_dict())
    assert len(params) == num_layers
    R = proj_size or H
    D = 2 if bidirectional else 1
    assert model.output_size == D * R
    xs, h0, c0, cot = _inputs(2, D, num_layers, R, R, H)
    _compare(_jlstm_run(model, params, "lstm", xs, h0, c0, cot), _torch_run(m, "lstm", xs, h0, c0, cot))


@pytest.mark.parametrize("num_layers,bidirectional,proj_size", [(2, True, 0), (1, False, 2)])
def test_lstm_lengths_match_torch_packed(num_layers, bidirectional, proj_size):
    H = 5
    m = _torch_rnn("lstm", 3, H, num_layers, bidirectional, proj_size)
    model, params = interop.from_torch_lstm(m.state_dict())
    R, D = proj_size or H, 2 if bidirectional else 1
    xs, h0, c0, cot = _inputs(4, D, num_layers, R, R, H)
    lengths = np.array([T, 2, 4], np.int32)
    want = _torch_run(m, "lstm", xs, h0, c0, cot, lengths=lengths)
    got = _jlstm_run(model, params, "lstm", xs, h0, c0, cot, lengths=jnp.asarray(lengths))
    _compare(got, want)


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_gru_matches_torch(num_layers, bidirectional):
    H = 5
    m = _torch_rnn("gru", 5, H, num_layers, bidirectional)
    model, params = interop.from_torch_gru(m.state_dict())
    D = 2 if bidirectional else 1
    xs, h0, _, cot = _inputs(6, D, num_layers, H, H, H)
    _compare(_jlstm_run(model, params, "gru", xs, h0, None, cot), _torch_run(m, "gru", xs, h0, None, cot))
    lengths = np.array([3, T, 1], np.int32)
    want = _torch_run(m, "gru", xs, h0, None, cot, lengths=lengths)
    _compare(_jlstm_run(model, params, "gru", xs, h0, None, cot, lengths=jnp.asarray(lengths)), want)


def test_gru_bias_mapping_is_exact():
    m = _torch_rnn("gru", 7, 3)
    _, params = interop.from_torch_gru(m.state_dict())
    p = params[0]
    np.testing.assert_array_equal(np.asarray(p.b_x), m.bias_ih_l0.detach().numpy())
    np.testing.assert_array_equal(np.asarray(p.b_h), m.bias_hh_l0.detach().numpy())
    np.testing.assert_array_equal(np.asarray(p.w_x), m.weight_ih_l0.detach().numpy().T)


def test_numpy_state_dict_and_default_state():
    m = _torch_rnn("lstm", 8, 4, num_layers=2)
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    model, params = interop.from_torch_lstm(sd)
    xs = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    final, ys = model.apply(params, jnp.asarray(xs))
    out, (h_n, c_n) = m(torch.tensor(xs))
    np.testing.assert_allclose(ys, out.detach().numpy(), **TOL)
    h, c = interop.to_torch_state(final)
    assert isinstance(h, torch.Tensor) and isinstance(c, torch.Tensor)
    np.testing.assert_allclose(h.numpy(), h_n.detach().numpy(), **TOL)
    np.testing.assert_allclose(c.numpy(), c_n.detach().numpy(), **TOL)
    h, c = interop.to_torch_state(final, as_numpy=True)
    assert isinstance(h, np.ndarray) and isinstance(c, np.ndarray)
    np.testing.assert_allclose(c, c_n.detach().numpy(), **TOL)
    with pytest.raises(TypeError, match="convert it outside"):
        jax.jit(interop.to_torch_state)(final)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_round_trip_through_torch(kind):
    cfg = dict(num_layers=2, bidirectional=True) | ({"proj_size": 2} if kind == "lstm" else {})
    m = _torch_rnn(kind, 9, 4, **cfg)
    frm = interop.from_torch_lstm if kind == "lstm" else interop.from_torch_gru
    to = interop.to_torch_lstm if kind == "lstm" else interop.to_torch_gru
    model, params = frm(m.state_dict())
    kwargs = interop.torch_kwargs(params)
    assert kwargs["num_layers"] == 2 and kwargs["bidirectional"] and kwargs["hidden_size"] == 4
    fresh = (nn.LSTM if kind == "lstm" else nn.GRU)(**kwargs)
    fresh.load_state_dict(to(model, params))  # strict: same keys and shapes
    xs = torch.tensor(np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32))
    with torch.no_grad():
        a, sa = m(xs)
        b, sb = fresh(xs)
    np.testing.assert_allclose(b.numpy(), a.numpy(), atol=2e-6)
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):  # h_n (and c_n)
        np.testing.assert_allclose(y.numpy(), x.numpy(), atol=2e-6)
    # and back again: the same params
    _, again = frm(to(model, params, as_numpy=True))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_allclose(y, x, atol=1e-6)


def test_jlstm_initialised_model_runs_in_torch():
    layer = jlstm.bidirectional(jlstm.lstm(4, proj_size=3))
    model = jlstm.stack(layer, layer)
    params = _random_params(model, I, 0)
    sd = interop.to_torch_lstm(model, params)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert not sd["bias_hh_l1_reverse"].any()
    m = nn.LSTM(**interop.torch_kwargs(params))
    m.load_state_dict(sd)
    xs = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    final, ys = jax.jit(model.apply)(params, jnp.asarray(xs))
    with torch.no_grad():
        out, (h_n, c_n) = m(torch.tensor(xs))
    np.testing.assert_allclose(ys, out.numpy(), **TOL)
    h, c = interop.to_torch_state(final)
    np.testing.assert_allclose(h.numpy(), h_n.numpy(), **TOL)
    np.testing.assert_allclose(c.numpy(), c_n.numpy(), **TOL)


def test_bias_false_and_prefix():
    m = nn.LSTM(I, 3, bias=False)
    _randomize(m, 10)
    sd = {"encoder." + k: v for k, v in m.state_dict().items()} | {"head.weight": torch.zeros(2, 2)}
    model, params = interop.from_torch_lstm(sd, prefix="encoder.")
    assert not np.any(np.asarray(params[0].b))
    _, from_module = interop.from_torch_lstm(m)  # the module itself works too
    np.testing.assert_array_equal(from_module[0].w_x, params[0].w_x)
    xs = np.random.default_rng(3).standard_normal((T, B, I)).astype(np.float32)
    _, ys = model.apply(params, jnp.asarray(xs))
    with torch.no_grad():
        out, _ = m(torch.tensor(xs))
    np.testing.assert_allclose(ys, out.numpy(), **TOL)


def test_dropout_between_layers():
    m = _torch_rnn("lstm", 11, 4, num_layers=2)
    model, params = interop.from_torch_lstm(m.state_dict(), dropout=0.5)
    xs = jnp.ones((T, B, I))
    _, ys = jax.jit(model.apply)(params, xs)
    _, ys_drop = jax.jit(model.apply)(params, xs, key=jax.random.key(0))
    assert not np.allclose(ys, ys_drop)
    with pytest.raises(ValueError, match="dropout"):
        interop.from_torch_lstm(m.state_dict(), dropout=1.5)


def test_bad_state_dicts():
    lstm_sd = _torch_rnn("lstm", 12, 3, num_layers=2).state_dict()
    gru_sd = _torch_rnn("gru", 12, 3).state_dict()
    with pytest.raises(ValueError, match="unexpected key 'weight_foo_l0'"):
        interop.from_torch_lstm(dict(lstm_sd) | {"weight_foo_l0": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing bias_hh_l1"):
        interop.from_torch_lstm({k: v for k, v in lstm_sd.items() if k != "bias_hh_l1"})
    with pytest.raises(ValueError, match="nn.GRU"):
        interop.from_torch_lstm(gru_sd)
    with pytest.raises(ValueError, match="nn.LSTM"):
        interop.from_torch_gru(lstm_sd)
    with pytest.raises(ValueError, match=r"weight_ih_l1 has shape \(12, 5\), expected \(12, 3\)"):
        interop.from_torch_lstm(dict(lstm_sd) | {"weight_ih_l1": torch.zeros(12, 5)})
    with pytest.raises(ValueError, match="weight_hr"):
        interop.from_torch_gru(dict(gru_sd) | {"weight_hr_l0": torch.zeros(2, 3)})
    with pytest.raises(TypeError, match="nn.LSTM"):
        interop.from_torch_lstm(nn.GRU(2, 3))
    with pytest.raises(TypeError, match="state_dict"):
        interop.from_torch_lstm([1, 2])
    with pytest.raises(ValueError, match="no weights"):
        interop.from_torch_lstm(lstm_sd, prefix="decoder.")


def test_bad_models_for_torch():
    peep = jlstm.recurrent(jlstm.lstm(3, peephole="diagonal"))
    with pytest.raises(ValueError, match="peephole"):
        interop.to_torch_lstm(peep, _random_params(peep, 2, 0))
    with pytest.raises(ValueError, match="peephole"):
        interop.to_torch_lstm(None, _random_params(peep, 2, 0))
    clip = jlstm.recurrent(jlstm.lstm(3, cell_clip=2.0))
    with pytest.raises(ValueError, match="cell_clip"):
        interop.to_torch_lstm(clip, _random_params(clip, 2, 0))
    rev = jlstm.recurrent(jlstm.lstm(3), reverse=True)
    with pytest.raises(ValueError, match="reversed"):
        interop.to_torch_lstm(rev, _random_params(rev, 2, 0))
    g = jlstm.recurrent(jlstm.gru(3))
    with pytest.raises(TypeError, match="LSTMParams"):
        interop.to_torch_lstm(g, _random_params(g, 2, 0))
    mixed = jlstm.stack(jlstm.recurrent(jlstm.lstm(3)), jlstm.recurrent(jlstm.lstm(4)))
    with pytest.raises(ValueError, match="hidden size 3"):
        interop.to_torch_lstm(mixed, _random_params(mixed, 2, 0))
    mix_dirs = jlstm.stack(jlstm.recurrent(jlstm.lstm(3)), jlstm.bidirectional(jlstm.lstm(3)))
    with pytest.raises(ValueError, match="mix"):
        interop.to_torch_lstm(mix_dirs, _random_params(mix_dirs, 2, 0))
    _, params = interop.from_torch_lstm(_torch_rnn("lstm", 13, 3).state_dict())
    with pytest.raises(ValueError, match="c0"):
        interop.from_torch_state(params, np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="num_layers"):
        interop.from_torch_state(params, np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 3), np.float32))


def test_import_does_not_load_torch_or_keras():
    code = ("import sys, jlstm, jlstm.interop; from jlstm import interop; "
            "assert 'torch' not in sys.modules and 'keras' not in sys.modules, sorted(sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)

"""Bad calls fail at trace time with a message that names the problem and the fix."""

import jax
import jax.numpy as jnp
import pytest

import jlstm

cell = jlstm.lstm(4)
params = cell.init(jax.random.key(0), 3)
xs = jnp.ones((5, 2, 3))


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda: cell.step(params, cell.initial_state(params, (2,)), jnp.ones((2, 5))), ValueError,
     r"5 features.*input_size=3"),
    (lambda: jlstm.scan(cell, params, jnp.ones(3)), ValueError, r"time and a feature axis"),
    (lambda: jlstm.scan(cell, params, xs, cell.initial_state(params, (7,))), ValueError, r"batch shape"),
    (lambda: jlstm.scan(cell, params, xs, lengths=jnp.array([1, 2, 3])), ValueError, r"lengths has shape"),
    (lambda: jlstm.scan(cell, params, xs, lengths=jnp.array([1.0, 2.0])), TypeError, r"lengths must be integers"),
    (lambda: jlstm.scan(cell, params, xs, mask=jnp.ones((5, 2))), TypeError, r"mask must be boolean"),
    (lambda: jlstm.scan(cell, params, xs, mask=jnp.ones((4, 2), bool)), ValueError, r"mask has shape"),
    (lambda: jlstm.lstm(-1), ValueError, r"hidden_size must be >= 1"),
    (lambda: jlstm.lstm(4, peephole="diag"), ValueError, r"unknown peephole"),
    (lambda: jlstm.scan(jlstm.gru(4), params, xs), TypeError, r"GRUParams.*LSTMParams"),
    (lambda: jlstm.scan(jlstm.lstm(5), params, xs), ValueError,
     r"w_x has shape \(3, 16\), expected \(3, 20\)"),
    (lambda: jlstm.scan(jlstm.lstm(4, peephole="full"), params, xs), ValueError, r"w_c is None"),
    (lambda: jlstm.scan(cell, params, xs.astype(jnp.int32)), TypeError, r"floating point"),
    (lambda: jlstm.scan(cell, params, xs, unroll=0), ValueError, r"unroll must be a positive"),
    (lambda: jlstm.scan(cell, params, xs, remat="always"), ValueError, r"unknown remat"),
    (lambda: jlstm.recurrent(cell, zoneout=1.5), ValueError, r"zoneout must lie in"),
    (lambda: jlstm.recurrent(cell, recurrent_dropout=0.2).apply(params, xs, key=3), TypeError, r"PRNG key"),
])
def test_bad_calls_raise_clear_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call()
    assert "jlstm" in info.traceback[-1].path.parts


def test_errors_happen_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="features"):
        jax.jit(lambda x: jlstm.scan(cell, params, x))(jnp.ones((5, 2, 4)))

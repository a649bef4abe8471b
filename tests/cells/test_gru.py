"""jlstm.gru's two forms: what sets reset_after=False apart, and the errors that keep the two apart.

Both forms run through every core test in tests/cell_cases.py against NumPy transcriptions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jlstm


def test_the_two_forms_differ_only_through_the_reset_product():
    """With W_hn = 0 the reset gate multiplies nothing in either form, so equal weights give equal
    outputs (b_h folded into b); with W_hn ≠ 0 they differ."""
    after, before = jlstm.gru(4), jlstm.gru(4, reset_after=False)
    p = after.init(jax.random.key(0), 3)
    p = p._replace(b_h=jax.random.normal(jax.random.key(1), p.b_h.shape))
    xs = jax.random.normal(jax.random.key(2), (6, 2, 3))
    no_hn = p._replace(w_h=p.w_h.at[:, 8:].set(0.0), b_h=p.b_h.at[8:].set(0.0))
    q = jlstm.ResetBeforeGRUParams(no_hn.w_x, no_hn.w_h, no_hn.b_x + no_hn.b_h)
    np.testing.assert_allclose(jlstm.scan(before, q, xs)[1], jlstm.scan(after, no_hn, xs)[1], atol=1e-6)
    q = jlstm.ResetBeforeGRUParams(p.w_x, p.w_h, p.b_x + p.b_h.at[8:].set(0.0))
    gap = jnp.abs(jlstm.scan(before, q, xs)[1] - jlstm.scan(after, p._replace(b_h=p.b_h.at[8:].set(0.0)), xs)[1])
    assert float(gap.max()) > 1e-3


def test_bad_reset_after_and_mixed_params_raise():
    with pytest.raises(TypeError, match="reset_after must be True or False"):
        jlstm.gru(4, reset_after=1)
    before = jlstm.gru(4, reset_after=False)
    p_after = jlstm.gru(4).init(jax.random.key(0), 3)
    with pytest.raises(TypeError, match="ResetBeforeGRUParams"):
        jlstm.scan(before, p_after, jnp.ones((2, 1, 3)))
    with pytest.raises(TypeError, match="GRUParams"):
        jlstm.scan(jlstm.gru(4), before.init(jax.random.key(0), 3), jnp.ones((2, 1, 3)))

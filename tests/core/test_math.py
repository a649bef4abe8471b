"""jlstm.core.math: the transposed product keeps the plain product's dtype rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jlstm.core.math import matmul, matmul_t


@pytest.mark.parametrize("dtype", [None, jnp.float32, jnp.bfloat16, jnp.float16])
def test_matmul_t_equals_matmul_by_the_transpose(dtype):
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (5, 7))
    w_t = jax.random.normal(k2, (3, 7)).astype(jnp.bfloat16)   # mixed with a's float32 where dtype is None
    got, want = matmul_t(a, w_t, dtype), matmul(a, w_t.T, dtype)
    assert got.dtype == want.dtype and got.shape == (5, 3)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-6, atol=1e-6)

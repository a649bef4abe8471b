"""The affine recurrences inside a Newton step (jlstm.newton.linear) against a NumPy loop.

``s_t = A_t s_{t-1} + b_t`` in both Jacobian layouts (dense ``[T, B, D, D]`` and diagonal
``[T, B, D]``), by ``lax.associative_scan`` and by the blocked form the CPU uses, at lengths
that fill whole blocks and lengths that leave a padded last block.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jlstm.core.linear import Algebra, affine_scan, blocked_affine_scan, constant_affine_scan, reverse_affine_scan
from jlstm.core.time import sqrt_length as block_length

B, D = 2, 3


def _loop(A: np.ndarray, b: np.ndarray, s0: np.ndarray, dense: bool, reverse: bool = False) -> np.ndarray:
    out = np.zeros_like(b)
    s = s0
    for t in (reversed(range(len(b))) if reverse else range(len(b))):
        s = (np.einsum("bij,bj->bi", A[t], s) if dense else A[t] * s) + b[t]
        out[t] = s
    return out


def _problem(T: int, dense: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (T, B, D, D) if dense else (T, B, D)
    A = rng.normal(size=shape) * (0.5 if dense else 1.0)      # signs of both kinds on the diagonal
    return A, rng.normal(size=(T, B, D))


@pytest.mark.parametrize("dense", [False, True], ids=["diag", "dense"])
@pytest.mark.parametrize("T", [1, 9, 50])               # 9 = 3 blocks of 3; 50 = 7 blocks of 8, padded
def test_affine_scan_both_evaluations_match_a_loop(T, dense):
    alg = Algebra(dense=dense)
    A, b = _problem(T, dense)
    A[0] = 0                                            # s_0 folded into b_1, as the Newton step does
    want = _loop(A, b, np.zeros((B, D)), dense)
    for associative in (True, False):
        got = jax.jit(lambda A, b, a=associative: affine_scan(alg, A, b, associative=a))(
            A.astype(np.float32), b.astype(np.float32))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4, err_msg=f"{associative=}")


@pytest.mark.parametrize("T", [1, 2, 7, 8, 9, 50])      # powers of two and either side of them
def test_constant_affine_scan_matches_a_loop(T):
    """One matrix per sequence, gated per step (0: a reset, and the first step): recursive doubling."""
    rng = np.random.default_rng(T)
    M = rng.normal(size=(B, D, D)) * 0.5
    g = (rng.random((T, B)) > 0.25).astype(np.float64)
    g[0] = 0
    b = rng.normal(size=(T, B, D))
    want = _loop(g[:, :, None, None] * M[None], b, np.zeros((B, D)), dense=True)
    got = jax.jit(constant_affine_scan)(M.astype(np.float32), g.astype(np.float32), b.astype(np.float32))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dense", [False, True], ids=["diag", "dense"])
def test_blocked_from_a_nonzero_start_and_reversed(dense):
    alg = Algebra(dense=dense)
    A, b = _problem(23, dense, seed=1)
    s0 = np.random.default_rng(2).normal(size=(B, D))
    got = jax.jit(lambda A, b, s0: blocked_affine_scan(alg, A, b, s0))(A, b, s0)
    np.testing.assert_allclose(np.asarray(got), _loop(A, b, s0, dense), rtol=1e-5, atol=1e-5)
    A[-1] = 0                                           # the backward recurrence's convention
    got = jax.jit(lambda A, b: reverse_affine_scan(alg, A, b))(A, b)
    np.testing.assert_allclose(np.asarray(got), _loop(A, b, np.zeros((B, D)), dense, reverse=True),
                               rtol=1e-5, atol=1e-5)


def test_block_length_is_about_the_square_root():
    assert [block_length(T) for T in (0, 1, 2, 9, 10, 50, 16384)] == [1, 1, 2, 3, 4, 8, 128]
    for T in range(1, 300):
        L = block_length(T)
        assert 1 <= L <= T and L * L >= T


@pytest.mark.parametrize("T", [1, 2, 10, 50])            # 10 = 3 blocks of 4, padded
def test_blocked_prefix_scan_matches_a_loop(T):
    """prefix_scan's blocked form keeps the order of a non-commutative composition (matrix products)."""
    from jlstm.core.linear import prefix_scan

    rng = np.random.default_rng(T)
    A, c = rng.normal(size=(T, B, D, D)), rng.normal(size=(T, B))
    with jax.enable_x64(True):
        got = jax.jit(lambda e: prefix_scan(lambda x, y: (x[0] @ y[0], x[1] + y[1]), e, associative=False))((A, c))
    prod, total = np.broadcast_to(np.eye(D), (B, D, D)), np.zeros(B)
    for t in range(T):
        prod, total = prod @ A[t], total + c[t]
        np.testing.assert_allclose(np.asarray(got[0][t]), prod, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(np.asarray(got[1][t]), total, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [1, 2, 3, 9])
def test_gauss_jordan_matches_numpy_solve(n):
    """The pure-XLA solve of the damped (ELK) step, with a zero leading entry that needs a row swap."""
    from jlstm.core.linear import gauss_jordan

    rng = np.random.default_rng(n)
    m, x = rng.normal(size=(4, 3, n, n)), rng.normal(size=(4, 3, n, 2))
    if n > 1:
        m[0, 0, 0, 0] = 0.0
    want = np.linalg.solve(m, x)
    with jax.enable_x64(True):
        got = jax.jit(gauss_jordan)(m, x)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-9)


_ELK_SCRIPT = """
import sys
import jax, jlstm
cell = jlstm.gru(8)
params = cell.init(jax.random.key(0), 2)
xs = jax.random.normal(jax.random.key(1), (2048, 4, 2))
run = jax.jit(lambda p, x: jlstm.scan(cell, p, x, method=jlstm.Newton("elk", on_failure="ignore"),
                                      return_info=True))
sys.stdin.readline()                    # compile when told
run = run.lower(params, xs).compile()
print("compiled", flush=True)
sys.stdin.readline()                    # the two processes start their calls together
for _ in range(3):
    _, ys, info = run(params, xs)
    jax.block_until_ready(ys)
    assert bool(info.converged), info
print("done")
"""


@pytest.mark.slow                       # started first (tests/conftest.py): two processes
def test_dense_elk_does_not_hang_on_two_cores():
    """Dense ELK on a GRU(8), T=2048, B=4: two concurrent batched LAPACK solves once deadlocked XLA:CPU's
    2-thread pool (7 runs of 8 hung at 0% CPU). Three calls in each of two fresh processes, run at once,
    must finish."""
    import os
    import select
    import subprocess
    import sys

    # XLA's default flags, as a user runs it: the suite's fast-compile flags make these programs slower.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(sys.path), XLA_FLAGS="")
    procs = [subprocess.Popen([sys.executable, "-c", _ELK_SCRIPT], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]

    def tell(proc, line):
        try:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        except BrokenPipeError:         # it has exited: its output says why
            pass

    try:
        # They compile one after the other: with the run's compilation cache (tests/compile_cache.py)
        # the second reads the first one's executable (0.6 s) instead of compiling it again (5 s).
        for proc in procs:
            tell(proc, "compile")
            if not select.select([proc.stdout], [], [], 150)[0]:
                pytest.fail("dense ELK did not compile within 150 s")
            if proc.stdout.readline().strip() != "compiled":
                proc.kill()
                pytest.fail(f"the dense ELK process failed before its calls:\n{proc.communicate()[1][-2000:]}")
        # Then they make their calls at once: twice the threads on the same cores, a harder test for a deadlock.
        for proc in procs:
            tell(proc, "go")
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=150)
            except subprocess.TimeoutExpired as e:
                pytest.fail(f"dense ELK did not finish within {e.timeout} s: a hang")
            assert proc.returncode == 0 and out.strip().endswith("done"), err[-2000:]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()

"""The reference for resets: every episode run alone, from the cell's initial state, by a Python loop
over ``cell.step``.

A row's valid steps are cut into episodes before each reset (a reset at an invalid step is no
boundary). Forwards, the first episode starts from the ``state`` argument unless a reset opens it;
with ``reverse=True`` each episode runs from its last step back to its first, and the episode
processed first (the last in time) starts from ``state``. Invalid steps output zeros. The episodes
of all rows run side by side, each alone, under plain Python control flow on concrete flags: the
loop is differentiable (``jax.grad``) and shares nothing with the code it checks but ``cell.step``
and ``cell.initial_state``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jlstm


def episodes_of(resets: np.ndarray, valid: np.ndarray) -> list[list[int]]:
    """One row's valid steps, in time order, cut into episodes before each reset."""
    out: list[list[int]] = []
    for t in np.flatnonzero(valid):
        if not out or resets[t]:
            out.append([])
        out[-1].append(int(t))
    return out


def run_episodes(cell, params, xs, resets, *, valid=None, state=None, reverse=False) -> tuple[Any, jax.Array]:
    """``(final_state, ys)`` as ``jlstm.scan(cell, params, xs, state, resets=resets, mask=valid,
    reverse=reverse)`` must give them: ``xs`` ``[T, B, I]``, flags ``[T, B]`` (concrete).

    The episodes of all rows are gathered side by side, each padded to the longest, and a Python
    loop calls ``cell.step`` on all of them at once: each starts from its own initial state and
    never sees another.
    """
    T, B = xs.shape[:2]
    resets = np.asarray(resets, bool)
    valid = np.ones((T, B), bool) if valid is None else np.asarray(valid, bool)
    runs = []  # (row, steps in processing order, starts from the state argument)
    for b in range(B):
        eps = episodes_of(resets[:, b], valid[:, b])
        for i, ep in enumerate(eps[::-1] if reverse else eps):
            runs.append((b, ep[::-1] if reverse else ep, i == 0 and (reverse or not resets[ep[0], b])))
    E, L = len(runs), max([len(r[1]) for r in runs], default=0)
    steps = np.zeros((L, E), int)
    live = np.zeros((L, E), bool)
    for e, (_, ep, _) in enumerate(runs):
        steps[:len(ep), e], live[:len(ep), e] = ep, True
    rows = np.array([r[0] for r in runs], int)
    init = cell.initial_state(params, (E,))
    if state is not None:
        from_state = jnp.asarray([r[2] for r in runs], bool)
        init = jax.tree.map(lambda i, s: jnp.where(_flags(from_state, i), s[rows], i), init, state)
    s, ys = init, []
    step = jax.jit(cell.step)  # compiled once (with its derivatives), called once per step
    for j in range(L):
        new, y = step(params, s, xs[steps[j], rows])
        s = jax.tree.map(lambda n, o, j=j: jnp.where(_flags(jnp.asarray(live[j]), n), n, o), new, s)
        ys.append(y)
    out = jnp.zeros((T, B) + ys[0].shape[1:], ys[0].dtype) if ys else jnp.zeros((T, B, cell.output_size), xs.dtype)
    if ys:
        j, e = np.nonzero(live)
        out = out.at[steps[j, e], rows[e]].set(jnp.stack(ys)[j, e])
    final = cell.initial_state(params, (B,)) if state is None else state
    for e, (b, _, _) in enumerate(runs):  # a row's final state: after its last processed episode
        final = jax.tree.map(lambda f, v, b=b, e=e: f.at[b].set(v[e]), final, s)
    return final, out


def _flags(f: jax.Array, like: jax.Array) -> jax.Array:
    return f.reshape(f.shape + (1,) * (like.ndim - f.ndim))


def random_resets(rng: np.random.Generator, T: int, B: int, p: float = 0.2, at: tuple = ()) -> np.ndarray:
    """Bool ``[T, B]`` resets at random steps (probability ``p``) plus the ``(t, b)`` pairs in ``at``."""
    r = rng.random((T, B)) < p
    for t, b in at:
        r[t, b] = True
    return r


def _loss_terms(final, ys, w):
    return jnp.sum(ys * w) + sum(jnp.sum(jnp.tanh(leaf)) for leaf in jax.tree.leaves(final))


def check_scan_against_episodes(cell, params, xs, resets, methods, *, state=None, lengths=None, mask=None,
                                reverse=False, atol=2e-5, grad_tol=1e-4):
    """``jlstm.scan(..., resets=resets, method=m)`` for every ``m`` in ``methods`` against
    :func:`run_episodes`: outputs and final states to ``atol``, the gradients of a scalar loss of
    both with respect to the params and the inputs to ``grad_tol`` (relative to their scale)."""
    T, B = xs.shape[:2]
    valid = np.ones((T, B), bool)
    if lengths is not None:
        valid &= np.arange(T)[:, None] < np.asarray(lengths)[None]
    if mask is not None:
        valid &= np.asarray(mask)
    w = jnp.cos(jnp.arange(int(np.prod(xs.shape[:2])) * cell.output_size)).reshape(T, B, cell.output_size)

    def reference(p, x):
        final, ys = run_episodes(cell, p, x, resets, valid=valid, state=state, reverse=reverse)
        return _loss_terms(final, ys, w), (final, ys)

    (_, want), want_grads = jax.value_and_grad(reference, argnums=(0, 1), has_aux=True)(params, xs)
    flags = jnp.asarray(resets)
    for method in methods:
        def run(p, x, method=method):
            final, ys = jlstm.scan(cell, p, x, state, lengths=lengths, mask=mask, resets=flags, reverse=reverse,
                                   method=method)
            return _loss_terms(final, ys, w), (final, ys)

        (_, got), grads = jax.jit(jax.value_and_grad(run, argnums=(0, 1), has_aux=True))(params, xs)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, atol=atol, rtol=atol, err_msg=f"values, {method}")
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
            assert np.all(np.isfinite(a)), f"gradient not finite, {method}"
            scale = max(1.0, float(np.max(np.abs(b))))
            np.testing.assert_allclose(a, b, atol=grad_tol * scale, rtol=grad_tol, err_msg=f"gradients, {method}")

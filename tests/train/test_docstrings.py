"""Every ``>>>`` example in jlstm.train's docstrings runs and prints what it says."""

import doctest
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jlstm

MODULES = ["fit", "fit_state", "generate", "heads", "lm", "losses", "preemption", "stateful", "step"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"jlstm.train.{name}")
    globs = dict(vars(module), jax=jax, jnp=jnp, np=np, optax=optax, jlstm=jlstm)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module.__name__, globs=globs):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module.__name__}"

"""Renamed keyword arguments: the old name keeps working, with a ``DeprecationWarning``."""

from __future__ import annotations

import functools
import warnings
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def renamed_keyword(old: str, new: str) -> Callable[[F], F]:
    """Accept ``old=`` as a deprecated alias of the keyword argument ``new=`` of the decorated function.

    A call with ``old=`` warns (``DeprecationWarning``, pointing at the caller) and runs as if it
    had passed ``new=``; a call with both is a ``TypeError``. The signature stays that of the
    function, so a type checker flags the old name.

    Example:
      >>> @renamed_keyword("rate", "inter_layer_dropout")
      ... def f(*, inter_layer_dropout=0.0):
      ...     return inter_layer_dropout
      >>> import warnings
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     value = f(rate=0.5)
      >>> value, caught[0].category.__name__
      (0.5, 'DeprecationWarning')
    """

    def decorate(fn: F) -> F:
        where = fn.__name__

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{where}: got both {new}= and {old}=, its deprecated former name; "
                                    f"pass only {new}=.")
                warnings.warn(f"{where}: {old}= is deprecated and will be removed; pass {new}= instead "
                              f"(the same option under its new name).", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return decorate

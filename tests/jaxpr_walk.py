"""Walk a traced program: the scan bodies it holds and how many equations of a kind each has.

The kernel tests assert loop structure (one recurrent product per step, the input's product inside or
outside the loop) on ``jax.make_jaxpr`` output; the sub-programs of pjit, custom_jvp and scan equations
are searched recursively.
"""

from __future__ import annotations

from typing import Any, Iterator


def sub_jaxprs(eqn: Any) -> Iterator[Any]:
    """The jaxprs held in one equation's parameters (a closed jaxpr's inner jaxpr, or a bare one)."""
    for v in eqn.params.values():
        for sub in (v if isinstance(v, (list, tuple)) else [v]):
            if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                yield sub.jaxpr
            elif hasattr(sub, "eqns"):
                yield sub


def scan_bodies(closed: Any) -> list[Any]:
    """Every ``scan`` equation's body jaxpr in ``closed`` (a ``jax.make_jaxpr`` result), in program order."""
    out = []

    def visit(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "scan":
                out.append(eqn.params["jaxpr"].jaxpr)
            for sub in sub_jaxprs(eqn):
                visit(sub)

    visit(closed.jaxpr)
    return out


def count(jx: Any, name: str) -> int:
    """The equations of primitive ``name`` in the jaxpr ``jx``, its sub-programs included."""
    return sum((eqn.primitive.name == name) + sum(count(sub, name) for sub in sub_jaxprs(eqn)) for eqn in jx.eqns)


def dots_per_scan_body(closed: Any) -> list[int]:
    """The number of ``dot_general`` equations in each scan body of ``closed``."""
    return [count(body, "dot_general") for body in scan_bodies(closed)]

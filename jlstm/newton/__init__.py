"""Parallel-in-time evaluation of any cell by Newton's method (DEER, quasi-DEER, ELK).

``method`` (the :class:`~jlstm.Newton` strategy and its loop), ``step`` (the flattened step and its
Jacobians), ``linear`` (the damped Kalman solve), ``grad`` (implicit gradients) and ``shard``
(time split over a device mesh).
"""

"""Benchmarks for jlstm: ``python -m benchmarks.scan`` (timings) and ``python -m benchmarks.plot``."""

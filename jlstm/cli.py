"""The ``jlstm`` command: ``jlstm demo`` (the main job) and ``jlstm bench``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jlstm", description="LSTMs as pure JAX functions.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train an LSTM and a plain RNN on the adding problem")
    demo.add_argument("--length", type=int, default=100, help="sequence length T (default 100)")
    demo.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    demo.add_argument("--hidden", type=int, default=32, help="hidden units (default 32)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    bench = sub.add_parser("bench", help="run the scan benchmarks (python -m benchmarks.scan)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for benchmarks.scan")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from jlstm.examples.demo import run_demo

        results = run_demo(length=args.length, steps=args.steps, hidden=args.hidden,
                           seed=args.seed, progress=not args.no_progress)
        return 0 if results else 1
    return _bench(args.args)


def _bench(argv: Sequence[str]) -> int:
    """``python -m benchmarks.scan`` in a child process: the benchmarks live in a checkout, not the wheel."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("benchmarks") is None:  # looks for the folder without importing it
        print("jlstm bench needs the benchmarks/ folder of a jlstm checkout: run it from the "
              "repository root (python -m benchmarks.scan).", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "benchmarks.scan", *argv])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

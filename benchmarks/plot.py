"""Plot the benchmark JSON files: ``python -m benchmarks.plot [files...] [--out-dir DIR]``.

For each ``benchmarks/results/*.json`` (or the files given) it writes ``<name>.png`` next
to it: one panel per mode, a bar per implementation and configuration showing the
speed-up of jlstm (peer time / jlstm time; above 1 means jlstm is faster), log scale.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Sequence


def plot_file(path: str, out_dir: str | None = None) -> str:
    """Write the PNG for one results file and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        doc = json.load(f)
    rows = doc["results"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    peers = [i for i in dict.fromkeys(r["impl"] for r in rows) if i != "jlstm"]
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(6 * max(1, len(modes)), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        keys = list(dict.fromkeys((r["B"], r["T"], r["I"], r["H"], r["dtype"]) for r in rows
                                  if r["mode"] == mode))
        by = {(r["B"], r["T"], r["I"], r["H"], r["dtype"], r["impl"]): r for r in rows if r["mode"] == mode}
        width = 0.8 / max(1, len(peers))
        for j, peer in enumerate(peers):
            xs, ys = [], []
            for k, key in enumerate(keys):
                r, base = by.get(key + (peer,)), by.get(key + ("jlstm",))
                if r and base:
                    xs.append(k + (j - (len(peers) - 1) / 2) * width)
                    ys.append(r["median_ms"] / base["median_ms"])
            ax.bar(xs, ys, width, label=peer)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{b},{t},{i},{h}" + ("\nbf16" if d == "bfloat16" else "")
                            for b, t, i, h, d in keys], rotation=30, fontsize=8)
        ax.set_title(f"{mode}: peer time / jlstm time")
        ax.set_xlabel("B,T,I,H")
        ax.legend(fontsize=8)
    fig.suptitle(f"{doc.get('suite', '')} on {doc.get('device', '')}", fontsize=9)
    fig.tight_layout()
    out_dir = out_dir or os.path.dirname(os.path.abspath(path))
    out = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="JSON files (default: benchmarks/results/*.json)")
    p.add_argument("--out-dir", default=None, help="where to write the PNGs (default: next to each file)")
    args = p.parse_args(list(argv) if argv is not None else None)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    files = args.files or sorted(glob.glob(os.path.join(here, "*.json")))
    if not files:
        print("no results JSON found; run python -m benchmarks.scan --out benchmarks/results/NAME.json")
        return 1
    for path in files:
        if not _is_scan_result(path):
            print("skipped", path, "(not a benchmarks.scan result)")
            continue
        print("wrote", plot_file(path, args.out_dir))
    return 0


def _is_scan_result(path: str) -> bool:
    try:
        with open(path) as f:
            rows = json.load(f).get("results", [])
    except (OSError, ValueError, AttributeError):
        return False
    ok = bool(rows) and all(isinstance(r, dict) and {"impl", "median_ms", "mode"} <= set(r) for r in rows)
    return ok and any(r["impl"] == "jlstm" for r in rows)


if __name__ == "__main__":
    sys.exit(main())

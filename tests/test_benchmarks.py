"""Smoke test of ``python -m benchmarks.scan``: it runs end to end and writes the agreed JSON schema.

No timings are asserted: only the structure of the output.
"""

import json
import os

import pytest

scan = pytest.importorskip("benchmarks.scan")


def test_quick_suite_writes_schema(tmp_path, capsys):
    out = tmp_path / "quick.json"
    code = scan.main(["--suite", "quick", "--repeats", "2", "--peers", "equinox,jax_cudnn",
                      "--modes", "fwd,fwdbwd", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "peer time / jlstm time" in printed
    doc = json.loads(out.read_text())
    for key, typ in {"suite": str, "device": str, "backend": str, "versions": dict, "date": str,
                     "results": list}.items():
        assert isinstance(doc[key], typ), key
    assert doc["suite"] == "quick" and doc["backend"] in ("cpu", "gpu")
    assert "jax" in doc["versions"]
    impls = {r["impl"] for r in doc["results"]}
    assert {"jlstm", "equinox"} <= impls
    assert {r["mode"] for r in doc["results"]} == {"fwd", "fwd+bwd"}
    for r in doc["results"]:
        assert set(r) >= {"impl", "B", "T", "I", "H", "mode", "dtype", "median_ms", "compile_s"}
        assert all(isinstance(r[k], int) for k in ("B", "T", "I", "H"))
        assert r["dtype"] in ("float32", "bfloat16")
        assert isinstance(r["median_ms"], float) and r["median_ms"] > 0
        assert r["compile_s"] is None or r["compile_s"] >= 0
        assert r["ratio"] > 0
    if doc["backend"] == "cpu":  # cuDNN from JAX is skipped with a reason, not an error
        assert any(s["impl"] == "jax_cudnn" and s["reason"] for s in doc["skipped"])


def test_peephole_suite_times_jlstm_and_skips_the_peers(tmp_path):
    out = tmp_path / "peep.json"
    code = scan.main(["--suite", "quick", "--repeats", "1", "--peers", "jlstm_ref,equinox",
                      "--peephole", "full", "--out", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["peephole"] == "full"
    assert {r["impl"] for r in doc["results"]} == {"jlstm", "jlstm_ref"}
    assert all("peephole" in s["reason"] for s in doc["skipped"] if s["impl"] == "equinox")


def test_bad_arguments_exit():
    with pytest.raises(SystemExit):
        scan.main(["--suite", "quick", "--peers", "nosuchpeer"])


def test_suite_cases():
    cpu = scan.suite_cases("perf", "cpu", None, None)
    assert {(c.B, c.T, c.I, c.H) for c in cpu} == set(scan.CPU_PERF)
    gpu = scan.suite_cases("perf", "gpu", ["fwd+bwd"], None)
    assert {c.dtype for c in gpu} == {"float32", "bfloat16"} and {c.mode for c in gpu} == {"fwd+bwd"}
    deep = scan.suite_cases("deepbench", "gpu", None, ["bfloat16"])
    assert all(c.I == c.H and c.dtype == "bfloat16" for c in deep)


def test_train_long_runs_a_short_sequence_and_reports(tmp_path):
    from benchmarks.train_long import main as train_long

    out = tmp_path / "long.json"
    result = train_long(["--length", "300", "--hidden", "8", "--out", str(out)])
    assert result["finite"] and result["T"] == 300 and result["temp_mib"] >= 0
    assert json.loads(out.read_text())["remat"] == "segment"


def test_xlstm_blocks_times_every_form_and_the_package(tmp_path):
    from benchmarks.xlstm_blocks import main as xlstm_blocks

    out = tmp_path / "xlstm.json"
    assert xlstm_blocks(["--lengths", "8", "--embedding", "8", "--heads", "2", "--repeats", "1", "--modes", "fwd",
                         "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["suite"] == "xlstm_blocks" and "xlstm" in doc["versions"]
    forms = {(r["block"], r["impl"], r["form"]) for r in doc["results"]}
    assert forms == {("mlstm", "jlstm", f) for f in ("parallel", "chunkwise", "sequential")} | {
        ("slstm", "jlstm", "sequential"), ("slstm", "xlstm", "vanilla")}
    assert all(r["median_ms"] > 0 for r in doc["results"]) and len(doc["ratios"]) == 3


def test_anchors_smoke_runs_every_section_and_builder(tmp_path):
    """``python -m benchmarks.anchors --smoke``: each section, jlstm and its peers, at tiny sizes."""
    anchors = pytest.importorskip("benchmarks.anchors")
    out = tmp_path / "anchors.json"
    assert anchors.main(["--smoke", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["suite"] == "anchors" and doc["smoke"] is True and doc["device"] and doc["reference"]["cudnn_ms"]
    rows = doc["results"]
    for section in ("lstm", "latency", "slstm"):
        mine = [r for r in rows if r["section"] == section]
        assert any(r["impl"] == "jlstm" for r in mine), section
        assert all(r["median_ms"] > 0 and r["ratio"] > 0 for r in mine)
    assert {r["mode"] for r in rows if r["section"] == "slstm"} == {"fwd", "fwd+bwd"}
    assert all(r["us_per_step"] > 0 for r in rows if r["section"] == "latency")
    slstm = {r["impl"] for r in rows if r["section"] == "slstm"}
    assert {"jlstm", "jlstm_ref"} <= slstm and all(r["heads"] == 2 for r in rows if r["section"] == "slstm")
    timed_or_skipped = slstm | {s["impl"] for s in doc["skipped"] if s["section"] == "slstm"}
    assert timed_or_skipped == set(anchors.SLSTM_IMPLS)          # every builder ran or said why not
    assert all(s["reason"] for s in doc["skipped"])
    if doc["backend"] == "cpu":       # the kernels in interpret mode; cuDNN from JAX skipped with a reason
        assert "jlstm_pallas" in slstm
        assert any(s["impl"] == "jax_cudnn" for s in doc["skipped"])


def test_quasi_deer_blocks_counts_iterations_and_checks_the_answer(tmp_path):
    from benchmarks.quasi_deer_blocks import main as sweep

    out = tmp_path / "q.json"
    sweep(["--H", "4", "--T", "64", "--inputs", "2", "--seeds", "0", "--max-iters", "64", "--out", str(out)])
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert (row["H"], row["T"], row["input_size"]) == (4, 64, 2)
    for name in ("quasi_deer_auto", "quasi_deer_mean", "quasi_deer_blocks", "quasi_deer_diagonal", "deer"):
        assert row[name]["converged"], (name, row[name])     # T=64 ≤ max_iters: exact in at most T steps
        assert 1 <= row[name]["iterations"] <= 64 and row[name]["max_abs_error"] <= 2e-5, (name, row[name])
    assert row["deer"]["iterations"] <= row["quasi_deer_diagonal"]["iterations"]
    with pytest.raises(SystemExit):
        sweep(["--variants", "newton_raphson", "--out", str(out)])


def test_gru_benchmark_writes_its_json(tmp_path):
    """``python -m benchmarks.gru`` at a toy shape: every implementation timed, ratios against jlstm's GRU."""
    gru = pytest.importorskip("benchmarks.gru")
    out = tmp_path / "gru.json"
    assert gru.main(["--shapes", "2x5x3x4", "--rounds", "2", "--impls", "jlstm,jlstm_ref,flax",
                     "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["suite"] == "gru" and doc["skipped"] == []
    rows = {(r["impl"], r["mode"]): r for r in doc["results"]}
    assert set(rows) == {(i, m) for i in ("jlstm", "jlstm_ref", "flax") for m in ("fwd", "fwd+bwd")}
    for (impl, _), r in rows.items():
        assert (r["B"], r["T"], r["I"], r["H"]) == (2, 5, 3, 4) and r["median_ms"] > 0
        assert (r["ratio"] == 1.0) if impl == "jlstm" else r["ratio"] > 0
    with pytest.raises(SystemExit):
        gru.main(["--shapes", "2x5x3"])


@pytest.mark.parametrize("args,suite", [(["--cell", "gru"], "native_gru"),
                                        (["--peephole", "full"], "native_lstm")])
def test_native_benchmark_times_both_engines(tmp_path, args, suite):
    """``python -m benchmarks.native_lstm`` at a toy shape, for the GRU's kernel and the article's LSTM."""
    native = pytest.importorskip("benchmarks.native_lstm")
    from jlstm.kernels import native_library

    if not native_library.available() and not os.environ.get("CI"):  # CI must build it (tests/kernels)
        pytest.skip(f"the native kernels are unavailable here: {native_library.why_unavailable()}")
    out = tmp_path / "native.json"
    assert native.main([*args, "--shapes", "2x4x3x8", "--rounds", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["suite"] == suite and doc["command"].endswith("--out " + str(out))
    assert [r["mode"] for r in doc["results"]] == ["fwd", "fwd+bwd"]
    for r in doc["results"]:
        assert (r["B"], r["T"], r["I"], r["H"]) == (2, 4, 3, 8) and r["native_ms"] > 0 and r["xla_ms"] > 0
    with pytest.raises(SystemExit):  # peepholes are the LSTM's
        native.main(["--cell", "gru", "--peephole", "diagonal", "--shapes", "2x4x3x8"])

def test_step_layout_benchmark_writes_its_json(tmp_path):
    """``python -m benchmarks.step_layout`` at a toy shape: both layouts timed for each cell asked for."""
    step_layout = pytest.importorskip("benchmarks.step_layout")
    out = tmp_path / "layout.json"
    assert step_layout.main(["--shape", "8x4x3x4", "--cells", "gru,simple_rnn", "--rounds", "1",
                             "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {(r["cell"], r["mode"]) for r in doc["results"]} == {
        (c, m) for c in ("gru", "simple_rnn") for m in ("fwd", "fwd+bwd")}
    for r in doc["results"]:
        assert r["in_loop_ms"] > 0 and r["hoisted_ms"] > 0 and r["hoisted_over_in_loop"] > 0
    import jlstm._scan
    from jlstm.core.plan import current_plan
    assert jlstm._scan.current_plan is current_plan        # the benchmark put the real plan back
    with pytest.raises(SystemExit):
        step_layout.main(["--cells", "nosuchcell"])


def test_eager_benchmark_writes_its_json(tmp_path):
    """``python -m benchmarks.eager`` at toy shapes: first, repeated, direct and jitted calls timed per cell, for
    a warm-started Newton, an xLSTM block stack and the front doors over whole arrays."""
    eager = pytest.importorskip("benchmarks.eager")
    out = tmp_path / "eager.json"
    assert eager.main(["--shape", "2x4x3x4", "--cells", "lstm,gru", "--rounds", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["suite"] == "eager" and doc["shape_BTIH"] == [2, 4, 3, 4]
    assert [r["cell"] for r in doc["rows"]] == ["lstm", "gru"]
    for r in doc["rows"]:
        assert r["first_s"] > 0 and r["repeat_ms"] > 0 and r["direct_ms"] > 0 and r["jit_ms"] > 0
        assert r["direct_over_repeat"] > 0
    newton = tmp_path / "newton.json"      # a fresh warm start each call; an xLSTM stack's apply; the front doors
    others = ["lstm_deer_warm", "xlstm_stack", "mlstm_core", "linear_recurrence", "lstm_sequence"]
    assert eager.main(["--shape", "1x3x2x2", "--cells", ",".join(others), "--rounds", "1",
                       "--out", str(newton)]) == 0
    rows = json.loads(newton.read_text())["rows"]
    assert [r["cell"] for r in rows] == others
    assert all(r["repeat_ms"] > 0 and r["direct_ms"] > 0 and r["jit_ms"] > 0 for r in rows)
    with pytest.raises(SystemExit):
        eager.main(["--cells", "nosuchcell"])


def test_results_are_written_atomically(tmp_path):
    """A results file is replaced whole or not at all: a dump that fails midway keeps the previous file
    and leaves no temporary file behind."""
    import json

    from benchmarks.deer import write

    path = tmp_path / "results.json"
    write(str(path), {"run": 1})
    assert json.loads(path.read_text()) == {"run": 1}
    with pytest.raises(TypeError):
        write(str(path), {"run": 2, "bad": object()})        # not JSON: fails after part of it was dumped
    assert json.loads(path.read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    write(str(path), {"run": 3})
    assert json.loads(path.read_text()) == {"run": 3}
    nested = tmp_path / "new" / "folder" / "results.json"       # the folder is made, as every benchmark needs
    write(str(nested), {"run": 4})
    assert json.loads(nested.read_text()) == {"run": 4} and nested.read_text().endswith("}\n")

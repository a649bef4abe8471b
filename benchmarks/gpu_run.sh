#!/usr/bin/env bash
# One device call on an H100/H200, under 8 minutes: the perf suite (peers included, 220 s), DeepBench (40 s),
# the modern cells' forms (120 s) and parallel-in-time (90 s); each section is cut by its own timeout.
# Usage (from the repository root, on the device machine):  bash benchmarks/gpu_run.sh
# Writes $OUT/gpu_perf.json, $OUT/gpu_deepbench.json, PNGs and logs (OUT defaults to benchmarks/results).
set -u
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-}:."
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # torch and JAX share the card
export KERAS_BACKEND=jax
echo "== device"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
echo "== versions"
python - <<'PY' 2>&1
import importlib
for m in ("jax", "jaxlib", "flax", "equinox", "torch", "keras"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, "unavailable:", type(e).__name__)
import jax; print("jax devices:", jax.devices())
try:
    import torch; print("torch cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), torch.cuda.is_available())
except Exception as e:
    print("torch:", e)
PY
echo "== perf suite: (1,512,512,512) (64,256,512,512) (256,100,1024,1024) (16,2048,256,256), fwd and fwd+bwd"
# jlstm = the automatic choice (the Pallas kernel where B <= 64), jlstm_pallas / jlstm_fused / jlstm_ref =
# the Pallas kernel, the fused scan and the reference scan forced; cuDNN from JAX and from PyTorch; Flax;
# gemm_floor = the same GEMMs alone. float32, plus bf16 for 64,256,512,512.
timeout 220 python -m benchmarks.scan --suite perf --repeats 10 \
  --peers jlstm_pallas,jlstm_fused,jlstm_ref,jax_cudnn,torch,flax --out "$OUT/gpu_perf.json" 2>&1 | tee "$OUT/gpu_perf.log"
echo "== deepbench (training + inference, float32), if time remains"
timeout 40 python -m benchmarks.scan --suite deepbench --repeats 3 \
  --peers flax,torch,jax_cudnn --out "$OUT/gpu_deepbench.json" 2>&1 | tail -60 | tee "$OUT/gpu_deepbench.log"
echo "== cells: sequential against parallel/chunkwise forms, T from 128 to 65536"
timeout 120 python -m benchmarks.scan --cells lstm,slstm,mlstm,min_lstm,min_gru \
  --lengths 1024,16384,65536 --repeats 3 --out "$OUT/cells_gpu.json" 2>&1 | tail -60 | tee "$OUT/cells_gpu.log"
echo "== parallel in time: DEER / quasi-DEER / ELK against sequential, T from 1k to 1M"
timeout 90 python -m benchmarks.deer --device gpu --batch 16 --Ts 1024,16384,262144,1048576 --Hs 4,16,64 \
  --states untrained --repeats 3 --out "$OUT/deer_gpu.json" 2>&1 | tail -40 | tee "$OUT/deer_gpu.log"
python -m benchmarks.plot "$OUT"/gpu_*.json --out-dir "$OUT" 2>&1 || true
echo "== done"

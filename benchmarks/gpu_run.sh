#!/usr/bin/env bash
# One device call on an H100/H200, about 9 minutes: correctness of the GPU-only paths (the Pallas kernels, the wide
# persistent LSTM kernel included; 110 s), the perf suite (peers included, 170 s), the anchor shapes (the LSTM at
# (16,1024,768,768) against cuDNN, B=1 per-step latency, the sLSTM's Pallas kernels at FlashRNN's head sizes; 190 s)
# and the wide kernel on the perf suite's shapes (80 s). Each section is cut by its own
# timeout and writes its JSON as it goes. The sections run last time and not repeated by default (parallel
# in time, DeepBench, the cells' forms; results/deer_gpu*.json, cells_gpu.json) run when named, in a second
# call (about 7 minutes: DEER/quasi-DEER to T=1M, ParaRNN's cells and the block method to T=1M, DEER's README
# case, then DeepBench and the cells' forms), and the GRU's fused kernel against cuDNN's GRU (never run on a GPU;
# about 1 minute):
#   SECTIONS="gru deer deepbench cells" bash benchmarks/gpu_run.sh
# Usage (from the repository root, on the device machine):  bash benchmarks/gpu_run.sh
# Writes $OUT/check_gpu.json, gpu_perf.json, gpu_anchors.json, gpu_perf_wide.json, PNGs and logs (OUT defaults to benchmarks/results).
set -u
OUT="${OUT:-benchmarks/results}"
SECTIONS="${SECTIONS:-check perf anchors wide}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-}:."
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # torch and JAX share the card
export KERAS_BACKEND=jax
want() { case " $SECTIONS " in *" $1 "*) return 0;; *) return 1;; esac; }
echo "== device"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
echo "== versions"
python - <<'PY' 2>&1
import importlib
for m in ("jax", "jaxlib", "flax", "equinox", "torch", "keras", "triton", "xlstm"):
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
if want check; then
  echo "== correctness of the GPU-only paths (Pallas LSTM and sLSTM kernels, fused scan, Newton methods)"
  timeout 110 python -m benchmarks.gpu_check --out "$OUT/check_gpu.json" 2>&1 | tee "$OUT/check_gpu.log"
fi
if want perf; then
  echo "== perf suite: (1,512,512,512) (64,256,512,512) (256,100,1024,1024) (16,2048,256,256), fwd and fwd+bwd"
  # jlstm = the automatic choice (the Pallas kernel where B <= 64), jlstm_pallas / jlstm_fused / jlstm_ref =
  # the Pallas kernel, the fused scan and the reference scan forced; cuDNN from JAX and from PyTorch; Flax;
  # gemm_floor = the same GEMMs alone. float32, plus bf16 for 64,256,512,512.
  timeout 170 python -m benchmarks.scan --suite perf --repeats 10 \
    --peers jlstm_pallas,jlstm_fused,jlstm_ref,jax_cudnn,torch,flax --out "$OUT/gpu_perf.json" 2>&1 | tee "$OUT/gpu_perf.log"
fi
if want anchors; then
  echo "== anchors: LSTM (16,1024,768,768) f32/bf16 vs cuDNN; B=1 latency H=256/512/1024; sLSTM H=768, d=64/32/128"
  timeout 190 python -m benchmarks.anchors --out "$OUT/gpu_anchors.json" 2>&1 | tee "$OUT/gpu_anchors.log"
fi
if want wide; then
  echo "== the wide persistent LSTM kernel (never compiled by Triton before its first run) on the perf suite's shapes"
  # jlstm = the automatic choice, jlstm_pallas_wide = the wide kernel forced where it fits (float32 to 512 units, bf16
  # to 1024), jax_cudnn = cuDNN from JAX. Its own file and its own cut, last, so a slow first build costs nothing else.
  timeout 80 python -m benchmarks.scan --suite perf --repeats 10 --peers jlstm_pallas_wide,jax_cudnn \
    --out "$OUT/gpu_perf_wide.json" 2>&1 | tee "$OUT/gpu_perf_wide.log"
fi
if want gru; then
  echo "== the GRU: jlstm's fused kernel (an XLA loop on GPU), its reference path, Flax and PyTorch (cuDNN), float32"
  timeout 90 python -m benchmarks.gru --shapes 64x256x512x512,256x100x1024x1024,16x1024x768x768 --rounds 10 \
    --out "$OUT/gpu_gru.json" 2>&1 | tee "$OUT/gpu_gru.log"
fi
if want deer; then
  echo "== parallel in time: DEER / quasi-DEER against sequential, B=1, T from 1k to 131k, then T=1M"
  timeout 120 python -m benchmarks.deer --device gpu --batch 1 --Ts 1024,16384,131072 --Hs 4,16 --cells gru,lstm \
    --states untrained --methods quasi_deer,deer --repeats 3 --out "$OUT/deer_gpu.json" 2>&1 | tail -40 | tee "$OUT/deer_gpu.log"
  timeout 40 python -m benchmarks.deer --device gpu --batch 1 --Ts 1048576 --Hs 16 --cells gru \
    --states untrained --methods quasi_deer --repeats 1 --out "$OUT/deer_gpu_1m.json" 2>&1 | tail -10 | tee "$OUT/deer_gpu_1m.log"
  echo "== parallel in time: ParaRNN's cells and the kept Jacobians (quasi_deer = auto, blocks, diagonal), B=1, T to 1M"
  timeout 150 python -m benchmarks.deer --device gpu --batch 1 --Ts 1024,16384,131072,1048576 --Hs 16 \
    --cells para_gru,para_lstm,lstm --states untrained,trained --methods quasi_deer,quasi_deer_blocks,quasi_deer_diag,deer --repeats 3 \
    --out "$OUT/deer_gpu_pararnn.json" 2>&1 | tail -30 | tee "$OUT/deer_gpu_pararnn.log"
  echo "== DEER's README case: GRU, input 2, batch 16, T=10,000 (68x the sequential scan on a V100, published)"
  timeout 60 python -m benchmarks.deer --device gpu --batch 16 --Ts 10000 --Hs 1,32 --cells gru,para_gru \
    --states untrained --methods deer,quasi_deer --repeats 5 --out "$OUT/deer_gpu_readme.json" 2>&1 \
    | tail -10 | tee "$OUT/deer_gpu_readme.log"
fi
if want deepbench; then
  echo "== deepbench (training + inference, float32)"
  timeout 30 python -m benchmarks.scan --suite deepbench --repeats 3 \
    --peers flax,torch,jax_cudnn --out "$OUT/gpu_deepbench.json" 2>&1 | tail -60 | tee "$OUT/gpu_deepbench.log"
fi
if want cells; then
  echo "== cells: sequential against parallel/chunkwise forms, T from 128 to 65536"
  timeout 60 python -m benchmarks.scan --cells lstm,slstm,mlstm,min_lstm,min_gru \
    --lengths 1024,16384,65536 --repeats 3 --out "$OUT/cells_gpu.json" 2>&1 | tail -60 | tee "$OUT/cells_gpu.log"
fi
plots=$(ls "$OUT"/gpu_perf.json "$OUT"/gpu_deepbench.json 2>/dev/null)
[ -n "$plots" ] && { python -m benchmarks.plot $plots --out-dir "$OUT" 2>&1 || true; }
echo "== done"

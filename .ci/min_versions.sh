#!/usr/bin/env bash
# The oldest versions pyproject.toml allows: install every runtime dependency at exactly its lower
# bound (`name>=X` becomes `name==X`) into a fresh venv, install jlstm --no-deps, and run a smoke
# subset that reaches the newest APIs the library uses. A bound below what the code needs fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# Every dependency must have a `>=` lower bound; an environment marker is kept.
"$python" - > "$scratch/pins.txt" <<'PY'
import re, sys, tomllib
for dep in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\[\]-]+)\s*>=\s*([^,;\s]+)\s*(;.*)?", dep)
    if not m:
        sys.exit(f"min_versions: {dep!r} has no single '>=' lower bound to pin")
    print(f"{m[1]}=={m[2]}{m[3] or ''}")
PY
echo "min_versions: $(tr '\n' ' ' < "$scratch/pins.txt")"

"$python" -m venv "$scratch/venv"
pip=("$scratch/venv/bin/python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" install -r "$scratch/pins.txt" pytest pytest-xdist pytest-timeout
"${pip[@]}" install --no-deps -e .
"$scratch/venv/bin/python" -m pip check --disable-pip-version-check   # the pins agree with each other

# jax.shard_map/jax.reshard and a Mesh inside a hashed static argument (test_deer_shard), the fused
# LSTM's custom_jvp under grad, remat and scan (test_reverse_and_remat), typed PRNG keys, flax
# serialization and optax state (test_checkpoint), flax NNX (test_nnx).
JLSTM_QUICK=1 "$scratch/venv/bin/python" -m pytest -q -p no:cacheprovider -n 2 \
    tests/newton/test_deer_shard.py tests/newton/test_deer.py::test_reverse_and_remat tests/test_checkpoint.py \
    tests/test_nnx.py tests/layers/test_layers.py::test_layers_under_jit_and_grad

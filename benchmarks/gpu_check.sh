#!/usr/bin/env bash
# The GPU checks of the speed benchmark in one prepared run, for a machine with an NVIDIA GPU whose Python
# already has JAX with CUDA, PyTorch with CUDA, flax, optax and orbax but not the rest of jaxdiff's
# dependencies (a lent GPU machine that cannot reach a package index, say).
#
#   bash benchmarks/gpu_check.sh fetch            # where pip reaches the index: the missing wheels -> .whl/
#   bash benchmarks/gpu_check.sh OUTDIR [ARGS]    # on the GPU machine: install .whl/ if present, check the
#                                                 # versions, run the bf16 model test and speed.py's GPU rows
#
# OUTDIR receives versions.txt, bf16_test.log, speed.md (speed.py's table) and speed.json (raw timings).
# ARGS go to speed.py instead of its defaults (its GPU rows: float32 training at batch 16 and 64, bf16 at
# 64, forward, DDIM-50 at 16 and 256, DDPM-1000 at 16). Each stage has its own time limit, so that the
# whole run stays inside a 10-minute call; a stage that fails is reported and the next one still runs.
# The exit status is that of speed.py.
set -uo pipefail
cd "$(dirname "$0")/.."

# What speed.py and tests/test_models.py import beyond a CUDA image's usual packages (pure Python wheels).
WHEELS=(diffusers==0.42.1 ml_collections==1.1.0)
PYTHON=${PYTHON:-python3}

if [[ "${1:-}" == "fetch" ]]; then
    mkdir -p .whl
    exec "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
fi
if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: bash benchmarks/gpu_check.sh fetch | OUTDIR [speed.py arguments]" >&2
    exit 2
fi
out=$1
shift
mkdir -p "$out"

if compgen -G ".whl/*.whl" >/dev/null; then
    site=${TMPDIR:-/tmp}/jaxdiff-gpu-check-site
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        .whl/*.whl || exit
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# Versions, the device, and jaxdiff's minimum versions (setup.py) checked before anything long runs.
"$PYTHON" - <<'EOF' 2>&1 | tee "$out/versions.txt" || exit
import importlib.metadata as md
import subprocess
import sys

import jax

MINIMUM = {"jax": "0.7", "flax": "0.12", "optax": "0.2.5", "orbax-checkpoint": "0.11", "torch": "2.0",
           "diffusers": "0.42.1", "ml_collections": "1.0", "safetensors": "0.4", "absl-py": "2"}

def as_tuple(version):
    return tuple(int(part) for part in version.split("+")[0].split(".")[:3] if part.isdigit())

too_old = []
for name, minimum in MINIMUM.items():
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        version = None
    print(f"{name} {version}")
    if version is None or as_tuple(version) < as_tuple(minimum):
        too_old.append(f"{name} {version} (needs >= {minimum})")
print("python", sys.version.split()[0])
print("jax backend:", jax.default_backend(), jax.devices())
try:
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.strip())
except (OSError, subprocess.TimeoutExpired):
    print("nvidia-smi: not available")
if too_old:
    sys.exit("error: missing or too old: " + "; ".join(too_old) + " (add their wheels to .whl/)")
if jax.default_backend() != "gpu":
    print("warning: JAX sees no GPU; speed.py measures the CPU")
EOF

echo "== bf16 model test"
timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_models.py -k bf16 2>&1 | tee "$out/bf16_test.log"

echo "== speed.py"
timeout 420 "$PYTHON" benchmarks/speed.py --json "$out/speed.json" "$@" | tee "$out/speed.md"

#!/usr/bin/env bash
# Runs every GPU benchmark row on a GPU machine in under 8 minutes (each part is bounded by a timeout):
#   1. ResNet-50, 224 px, global batch 256, bf16: compile time, step, loader, e2e, and torchvision's
#      ResNet-50 eager (AMP) and under torch.compile;
#   2. DenseNet-121, same size, batch and precision: step, torchvision eager and torch.compile.
#
#   OUT=/tmp/jaxcxr_bench bash launch/gpu_bench.sh [extra jaxcxr.bench flags for both runs]
#
# A torch.compile that runs past its --peer_timeout shows as a skipped row saying so; the other rows stand.
#
# For a machine that has jax (CUDA), flax, optax, orbax-checkpoint, numpy and torch + torchvision but lacks
# grain and ml_collections: wheels of those (and of their missing dependencies) in .whl/ at the repo root
# are installed into /tmp/site, which holds nothing else, so the machine's own jax, flax, optax and numpy
# are the ones used. Without .whl/ the script uses whatever Python finds. Writes $OUT/bench.json (ResNet-50),
# $OUT/bench_densenet121.json and $OUT/bench.log ($OUT defaults to /tmp/jaxcxr_bench).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/jaxcxr_bench}
SITE=${SITE:-/tmp/site}
python=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  echo "== $(date -u +%FT%TZ) $(hostname)"
  nvidia-smi -L || echo "(no nvidia-smi)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
  echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
  [[ -d "$SITE" ]] && echo "Added from .whl/ into $SITE: $(ls "$SITE" | grep -v -e dist-info -e '^bin$' | tr '\n' ' ')"
  "$python" - <<'PY'
import sys
import jax, flax, optax, numpy, grain, ml_collections
print("python", sys.version.split()[0])
for m in (jax, flax, optax, numpy, grain, ml_collections):
  print(f"{m.__name__:15s} {getattr(m, '__version__', '?'):10s} {m.__file__}")
print("devices:", jax.devices())
PY
  echo "XLA_FLAGS=${XLA_FLAGS:-}"
  # 1. compile (2 processes) + torch eager and torch.compile (1 process each) + step, loader, e2e: <= 270 s.
  timeout 270 "$python" -m jaxcxr.bench --config=configs/bench_resnet50.py --json_out="$OUT/bench.json" \
    --peer=torchvision --peer_compile --peer_timeout=140 --steps=30 --warmup=5 --windows=5 "$@" \
    || echo "gpu_bench: the ResNet-50 run stopped (exit $?)"
  # 2. DenseNet-121 (CheXNet's network): torch eager and torch.compile + step: <= 190 s.
  timeout 190 "$python" -m jaxcxr.bench --config=configs/bench_resnet50.py --config.model.name=densenet121 \
    --json_out="$OUT/bench_densenet121.json" --parts=step --peer=torchvision --peer_compile \
    --peer_timeout=110 --steps=30 --warmup=5 --windows=5 "$@" \
    || echo "gpu_bench: the DenseNet-121 run stopped (exit $?)"
} 2>&1 | tee "$OUT/bench.log"

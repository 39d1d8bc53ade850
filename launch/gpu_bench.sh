#!/usr/bin/env bash
# Runs the speed benchmark (ResNet-50, 224 px, global batch 256, bf16) on a GPU machine, in about 5 minutes.
#
#   OUT=/tmp/jaxcxr_bench bash launch/gpu_bench.sh [extra jaxcxr.bench flags, e.g. --steps=50]
#
# For a machine that has jax (CUDA), flax, optax, orbax-checkpoint, numpy and torch + torchvision but lacks
# grain and ml_collections: wheels of those (and of their missing dependencies) in .whl/ at the repo root
# are installed into /tmp/site, which holds nothing else, so the machine's own jax, flax, optax and numpy
# are the ones used. Without .whl/ the script uses whatever Python finds. Writes $OUT/bench.json and
# $OUT/bench.log ($OUT defaults to /tmp/jaxcxr_bench).
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
  # compile (2 processes) + torch peer (1 process) + step, loader and e2e here: about 4-5 minutes on an H100.
  timeout 540 "$python" -m jaxcxr.bench --config=configs/bench_resnet50.py --json_out="$OUT/bench.json" \
    --peer=torchvision --steps=30 --warmup=5 --windows=5 "$@"
} 2>&1 | tee "$OUT/bench.log"

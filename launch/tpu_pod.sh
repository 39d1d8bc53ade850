#!/usr/bin/env bash
# Trains on every worker of a Cloud TPU VM pod slice (e.g. v5p-32: 4 workers x 4 chips) at once.
#
#   TPU_NAME=my-pod ZONE=us-east5-a launch/tpu_pod.sh --config=configs/hernia.py:focal \
#     --config.data.dir=/mnt/shared/nih --workdir=/mnt/shared/runs/hernia_focal
#
# It runs, from your workstation:
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all \
#     --command="cd $REPO_DIR && $PYTHON -m jaxcxr.main ARGS..."
# On each worker `jaxcxr.cluster` sees a Cloud TPU VM and calls jax.distributed.initialize() with no
# arguments (JAX reads the worker list from the TPU metadata server). Worker 0 writes logs and the report.
#
# Edit or set before use:
#   TPU_NAME, ZONE (required); PROJECT (default: gcloud's current project);
#   REPO_DIR: this repository on every worker (default ~/jaxcxr), installed with jax[tpu];
#   PYTHON: the interpreter there (default python3);
#   SETUP: an optional command run first on every worker, e.g. SETUP="git -C ~/jaxcxr pull";
#   DRY_RUN=1 prints the gcloud command instead of running it.
# The data folder and workdir must be the same path on every worker (NFS/Filestore or a gcsfuse mount).
# train.batch_size is the global batch: it must divide by the slice's chip count.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the pod slice's name}"
: "${ZONE:?set ZONE to the pod slice's zone}"
repo_dir=${REPO_DIR:-'~/jaxcxr'}
python=${PYTHON:-python3}
remote="cd $repo_dir && $python -m jaxcxr.main"
for arg in "$@"; do remote+=" $(printf '%q' "$arg")"; done
if [[ -n "${SETUP:-}" ]]; then remote="$SETUP && $remote"; fi
cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$remote")
if [[ -n "${PROJECT:-}" ]]; then cmd+=(--project="$PROJECT"); fi
if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${cmd[@]}"; echo
else
  "${cmd[@]}"
fi

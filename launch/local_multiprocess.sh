#!/usr/bin/env bash
# Runs jaxcxr.main as NUM_PROCESSES processes on this machine (loopback), each with simulated CPU devices.
# For testing multi-process code paths without a cluster.
#
#   launch/local_multiprocess.sh 2 --config=configs/demo.py --workdir=/tmp/jaxcxr_mp
#
# Environment: DEVICES_PER_PROCESS (default 2), PORT (default: a free one), PYTHON (default python).
# Processes 1.. log to $LOG_DIR (default: a new temp folder); process 0 prints to this terminal.
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_PROCESSES [jaxcxr.main flags...]" >&2
  exit 2
fi
n=$1; shift
python=${PYTHON:-python}
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=${LOG_DIR:-$(mktemp -d -t jaxcxr_mp_XXXXXX)}
mkdir -p "$log_dir"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM
for ((i = 1; i < n; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=${DEVICES_PER_PROCESS:-2} "$python" -m jaxcxr.main "$@" \
    --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id="$i" > "$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
echo "Process logs in $log_dir" >&2
status=0
JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=${DEVICES_PER_PROCESS:-2} "$python" -m jaxcxr.main "$@" \
  --coordinator_address="127.0.0.1:$port" --num_processes="$n" --process_id=0 || status=$?
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
pids=()
exit $status

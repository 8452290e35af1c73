#!/usr/bin/env bash
# The GPU check: one command, at most 8 minutes, on a machine with a CUDA GPU and a CUDA build
# of torch. It runs the tests that use a GPU, a short training in fp16 and in bf16, a
# checkpoint and resume on the GPU, and the fast recipes' time to accuracy on Fashion-MNIST,
# and writes a small report. DEVELOPERS.md says how to run it on the lent GPU machine.
#
#   CNNLAB_DATA=/path/with/fashion-mnist bash benchmarks/gpu_check.sh [REPORT_DIR]
#
# REPORT_DIR defaults to $OUT (the device tool's folder) or gpu-report/. Each step has its own
# time limit, so one that hangs cannot take the others' time; the report says which failed.
set -u
cd "$(dirname "$0")/.."
report_dir=${1:-${OUT:-gpu-report}}
mkdir -p "$report_dir"
report="$report_dir/gpu_report.md"
work=$(mktemp -d)
export CNNLAB_CACHE="$work/cache" PYTHONUNBUFFERED=1
export CNNLAB_DATA=${CNNLAB_DATA:-../shared/data}
python -c "import cnnlab" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
cnnlab() { python -m cnnlab "$@"; }
status=0

step() {  # step NAME SECONDS COMMAND...: run it with a limit, log it, note the result
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  timeout "$limit" "$@" >"$report_dir/$name.log" 2>&1
  local code=$?
  local verdict=ok
  [ $code -eq 0 ] || { verdict="FAILED (exit $code)"; status=1; }
  echo "| $name | $verdict | $((SECONDS - started)) s | \`$*\` |" >>"$report"
}

{
  echo "# cnnlab GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  echo '```'
  echo
  echo "| step | result | time | command |"
  echo "|---|---|---:|---|"
} >"$report"

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "torch sees no CUDA device: nothing to check" >>"$report"
  cat "$report"
  exit 2
}

# 1. the tests that run only with a GPU (they skip without one), plus the data and metric ops
step gpu-tests 180 python -m pytest -q -p no:cacheprovider tests/runs/test_checkpoint.py \
  tests/train/test_metrics.py tests/data/test_augment_ops.py
# 2. a short training in each reduced precision
for precision in fp16 bf16; do
  step "train-$precision" 90 cnnlab train --model resnet18 --epochs 1 --device cuda \
    --precision "$precision" --quiet --out "$work/runs/resnet18-$precision"
done
# 3. checkpoint and resume on the GPU: stop a 10-epoch run with SIGINT after 12 s,
#    then continue it; it must end with a test accuracy
resume_run="$work/runs/resume"
timeout -s INT 12 python -m cnnlab train --model lenet_bn --epochs 10 --device cuda \
  --quiet --out "$resume_run" >"$report_dir/interrupt.log" 2>&1
step resume 90 cnnlab train --resume "$resume_run"
# 4. the fast recipes' time to accuracy (one seed each) and a 1-minute budget run
step time-to-accuracy 200 python benchmarks/time_to_accuracy.py --targets fast-90 fast-92 \
  --seeds 1 --out "$work/tta" --json "$report_dir/time_to_accuracy.json" -- --device cuda
step budget-1m 80 cnnlab train --budget 1m --device cuda --quiet --out "$work/runs/budget"

{
  echo
  echo "Last lines:"
  for log in "$report_dir"/*.log; do
    echo "- $(basename "$log"): $(tail -n 1 "$log")"
  done
} >>"$report"
cat "$report"
rm -rf "$work"
exit $status

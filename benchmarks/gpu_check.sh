#!/usr/bin/env bash
# Every GPU check of the project in one call, bounded to 10 minutes in all (each step has its own limit;
# the limits add up to 560 s), ending in one summary:
#   1. cuda-tests:   the CUDA tests (tests/test_gpu.py: device data, bf16 channels_last steps with
#                    torch.cuda.set_sync_debug_mode("error"), compile; they skip without CUDA)
#   2. syncs:        host syncs and host-to-device copies per step of every method, counted on CUDA
#   3. throughput:   mixcli's device-resident data path vs a torchvision DataLoader pipeline (images/s)
#   4. sweep-packing: 1, 2 and 4 jobs packed onto one GPU (--jobs-per-gpu), total images/s
#   5. method-cost:  the per-step cost of every method relative to erm (resnet18, bf16)
#   6. gpu-step:     fp32 vs bf16 autocast, eager vs torch.compile, timed with CUDA events
#   7. vmap-seeds:   K = 1, 4, 8 seeds trained as one batched model (torch.func.stack_module_state + vmap,
#                    per-member BatchNorm buffers) vs K sequential runs, CUDA events, and the check that
#                    both train the same weights
# Usage: bash benchmarks/gpu_check.sh   (after: pip install --no-deps --no-build-isolation -e .)
# A step that runs past its limit is reported as rc=124 and the next one starts.
set -u
cd "$(dirname "$0")/.."
logs=${GPU_CHECK_LOGS:-$(mktemp -d)}
mkdir -p "$logs"
declare -A status
steps=(cuda-tests syncs throughput sweep-packing method-cost gpu-step vmap-seeds)
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  status[$name]="rc=$rc $((SECONDS - t0))s"
}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" \
  || { echo "gpu_check: no CUDA device here"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader 2>/dev/null || true
step cuda-tests 100 python -m pytest -q tests/test_gpu.py
step syncs 40 python benchmarks/syncs.py --device cuda
step throughput 90 python benchmarks/throughput.py --device cuda --steps 100 --batch-size 256 --workers 8
step sweep-packing 120 python benchmarks/sweep.py --device cuda --epochs 2 --n-train 20000
step method-cost 60 python benchmarks/method_cost.py --device cuda --batch-size 128 --steps 20 --rounds 3 \
  --warmup 10
step gpu-step 90 python benchmarks/gpu_step.py --batch-size 256 --methods erm,mixup --steps 30 --rounds 3
step vmap-seeds 60 python benchmarks/vmap_seeds.py --device cuda --model resnet18 --shape 3,32,32 \
  --batch-size 128 --ks 1,4,8 --steps 20 --warmup 5
echo
echo "=================== gpu_check summary (logs: $logs) ==================="
for name in "${steps[@]}"; do
  printf '%-14s %s\n' "$name" "${status[$name]:-not run}"
done
echo "--- cuda tests";    tail -n 1 "$logs/cuda-tests.log"
echo "--- syncs/copies per step"; grep -E "^[a-z].* [0-9.]+ +[0-9.]+$" "$logs/syncs.log" | head -n 20
echo "--- throughput";    grep -E "img/s|ratio|x$" "$logs/throughput.log" | tail -n 8
echo "--- sweep packing"; grep -A5 "jobs/GPU" "$logs/sweep-packing.log"
echo "--- method cost";   grep -A25 "ms/step" "$logs/method-cost.log" | head -n 24
echo "--- step: fp32/bf16, eager/compiled"; grep -A12 "ms/step" "$logs/gpu-step.log"
echo "--- K seeds batched (vmap) vs sequential"; grep -A4 "sequential img/s" "$logs/vmap-seeds.log"

#!/usr/bin/env bash
# Every GPU check of the project in one call (about 5-8 minutes on one modern GPU), ending in one summary:
#   1. the CUDA tests (tests/test_gpu.py; they skip without CUDA)
#   2. the data-path throughput benchmark (mixcli's device-resident path vs a DataLoader)
#   3. the sweep benchmark on CUDA: 1, 2 and 4 jobs packed onto one GPU
#   4. two epochs of experiments/cifar100_resnet18.yaml on synthetic CIFAR-shaped data (nothing downloaded),
#      with 2 jobs at once on the GPU
# Usage: bash benchmarks/gpu_check.sh   (after: pip install --no-deps --no-build-isolation -e .)
set -u
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
declare -A status
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  local rc=${PIPESTATUS[0]}
  status[$name]="rc=$rc $((SECONDS - t0))s"
}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" \
  || { echo "gpu_check: no CUDA device here"; exit 2; }
step cuda-tests 120 python -m pytest -q tests/test_gpu.py
step throughput 150 python benchmarks/throughput.py --device cuda --steps 100 --batch-size 256 --workers 8
step sweep-packing 180 python benchmarks/sweep.py --device cuda --epochs 2 --n-train 20000
out=$(mktemp -d)
step cifar100-synthetic 150 mixcli run experiments/cifar100_resnet18.yaml --out "$out" --jobs-per-gpu 2 \
  --set 'dataset={name: synthetic_images, n_train: 20000, n_test: 2000}' --set train.epochs=2 \
  --set seeds=1 --set eval.selection=final
echo
echo "=================== gpu_check summary ==================="
for name in cuda-tests throughput sweep-packing cifar100-synthetic; do
  printf '%-20s %s\n' "$name" "${status[$name]:-not run}"
done
echo "--- cuda tests";       tail -n 1 "$logs/cuda-tests.log"
echo "--- throughput";       grep -E "img/s|ratio|x$" "$logs/throughput.log" | tail -n 8
echo "--- sweep packing";    grep -A5 "jobs/GPU" "$logs/sweep-packing.log"
echo "--- cifar100 (synthetic, 2 epochs)"; grep -E "✓|failed|job\(s\)" "$logs/cifar100-synthetic.log" | tail -n 6

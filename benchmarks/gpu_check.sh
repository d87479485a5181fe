#!/usr/bin/env bash
# One-GPU check, under 8 minutes: the layer benchmark on CUDA, then a short SI+FD vs plain low-rank
# comparison (with +SI and +FD alone; each run's per-epoch ‖UVᵀ‖_*/bound ratios are in runs.jsonl) on the
# lottery-ticket ResNet-32 at 10%.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [CIFAR10_PARQUET_DIR]
#
# OUT_DIR defaults to $OUT (the device tool's output folder) or benchmarks/out/gpu; tables land in
# OUT_DIR/layers/table.md and OUT_DIR/paper/table.md, logs beside them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/out/gpu}}"
DATA="${2:-../shared/data/cifar10}"
PY="${PYTHON:-python}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT_DIR/gpu.txt" 2>&1 || true
start=$(date +%s)

# 1. Layers (fwd+bwd, FLOP vs realized speedup, channels_last, torch.compile, FD overhead on resnet32_lt).
timeout 180 "$PY" benchmarks/layers.py --device cuda --threads 0 --out "$OUT_DIR/layers" \
    --fd-model resnet32_lt --fd-width 1 --fd-repeats 11 > "$OUT_DIR/layers.log" 2>&1
echo "layers: exit $? after $(( $(date +%s) - start )) s"

# 2. resnet32_lt at 10% params: low-rank, +SI, +FD, +SI+FD (seed 0), 10k images, 8 epochs, full test set.
timeout 270 "$PY" benchmarks/paper.py --device cuda --data "$DATA" --out "$OUT_DIR/paper" --parts lowrank \
    --model resnet32_lt --width 1 --seeds 1 --train-subset 10000 --epochs 8 --batch-size 128 \
    --test-subset 10000 > "$OUT_DIR/paper.log" 2>&1
echo "paper: exit $? after $(( $(date +%s) - start )) s"
ls -l "$OUT_DIR" "$OUT_DIR"/layers "$OUT_DIR"/paper 2>/dev/null

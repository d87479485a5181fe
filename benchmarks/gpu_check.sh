#!/usr/bin/env bash
# One-GPU check of issue 10, under 8 minutes, needing only torch, torchvision, pyarrow, numpy and
# pydantic on the machine (no Ray, Optuna or MLflow: nothing here imports them).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [CIFAR10_PARQUET_DIR]
#
# 1. speed.py: training img/s of dense / low-rank / SI+FD resnet32_lt at ~10% params, batch 128 and 512,
#    eager and compiled (with compile seconds); deployed latency ratio at batch 1 and 256; summed img/s of
#    1, 2, 4 processes sharing the GPU.
# 2. layers.py at batch 256: per-layer realized/FLOP quotients (the >= 256-wide line) and the FD overhead.
# 3. Table 1 rows (dense, low-rank, +SI, +FD, +SI+FD; seed 0) on full CIFAR-10, all five trained at once on
#    the GPU for as many epochs as fit in the minutes left; test accuracy per row.
# Everything lands in OUT_DIR (default $OUT, the device tool's output folder, or benchmarks/out/gpu);
# the summary is printed at the end and written to OUT_DIR/summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/out/gpu}}"
DATA="${2:-../shared/data/cifar10}"
PY="${PYTHON:-python}"
TOTAL_S="${TOTAL_S:-470}"
DEVICE="${DEVICE:-cuda}"   # DEVICE=cpu QUICK=1 TOTAL_S=200: a smoke test of this script on a CPU (digits, tiny models)
QUICK="${QUICK:-}"
if [ -n "$QUICK" ]; then
  speed_args=(--quick); layer_args=(--quick); model=resnet20; dataset=digits; images=1438
else
  speed_args=(); layer_args=(--threads 0 --batch 256 --no-compile --fd-model resnet32_lt --fd-width 1 --fd-repeats 11)
  model=resnet32_lt; dataset="parquet:$(realpath "$DATA")"; images=50000
fi
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT_DIR/gpu.txt" 2>&1 || true
start=$(date +%s)
left() { echo $(( TOTAL_S - ($(date +%s) - start) )); }

timeout 240 "$PY" benchmarks/speed.py --device "$DEVICE" "${speed_args[@]}" --out "$OUT_DIR/speed" > "$OUT_DIR/speed.log" 2>&1
echo "speed: exit $? after $(( $(date +%s) - start )) s"

timeout 100 "$PY" benchmarks/layers.py --device "$DEVICE" "${layer_args[@]}" --out "$OUT_DIR/layers" \
    > "$OUT_DIR/layers.log" 2>&1
echo "layers: exit $? after $(( $(date +%s) - start )) s"

# Table 1: epochs from the measured 4-process throughput (5 runs now share the GPU; 0.6 for safety), leaving 90 s for loading, compiling
# and the final evaluation.
budget=$(( $(left) - 90 ))
epochs=$("$PY" - "$OUT_DIR/speed/speed.json" "$budget" "$images" <<'EOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["share"]
    total = max(r["total_img_per_s"] for r in rows)
except Exception:
    total = 20000.0  # no share figure: a guess
print(max(1, int(int(sys.argv[2]) * total / 5 / int(sys.argv[3]) * 0.6)))
EOF
)
echo "table 1: $epochs epochs per row in about $budget s"
pids=()
for row in "dense:--dense" "low-rank:--init default --regularizer wd" "low-rank+SI:--init spectral --regularizer wd" \
           "low-rank+FD:--init default --regularizer fd" "low-rank+SI+FD:--init spectral --regularizer fd"; do
  name="${row%%:*}"; flags="${row#*:}"
  [ "$name" = dense ] || flags="--rank-ratio 0.1 $flags"
  # shellcheck disable=SC2086
  timeout $(( $(left) > 20 ? $(left) : 20 )) "$PY" -m automl_factor.train --model "$model" \
      --dataset "$dataset" --epochs "$epochs" --device "$DEVICE" $flags > "$OUT_DIR/table1_$name.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
echo "table 1: done after $(( $(date +%s) - start )) s"

{
  echo "# GPU check ($(cat "$OUT_DIR/gpu.txt"), $(( $(date +%s) - start )) s)"
  echo
  cat "$OUT_DIR/speed/speed.md" 2>/dev/null || { echo "speed.py failed:"; tail -5 "$OUT_DIR/speed.log"; }
  echo "## Layers (batch 256) and FD overhead"
  echo
  grep -E "^layers >= 256|^FD overhead" "$OUT_DIR/layers.log" || tail -5 "$OUT_DIR/layers.log"
  echo
  echo "## Table 1 rows ($model, ~10% params, $dataset, $epochs epochs, seed 0, five at once)"
  echo
  for f in "$OUT_DIR"/table1_*.log; do
    echo "- $(basename "$f" .log | sed 's/table1_//'): $(grep -E '^test accuracy' "$f" || echo "no result: $(tail -1 "$f")")"
  done
} | tee "$OUT_DIR/summary.md"

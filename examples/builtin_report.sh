#!/usr/bin/env bash
# The offline end-to-end example: the three methods from a poor stride
# initialisation, the complexity sweep, the stride export, the cost benchmark
# and the report, all on the built-in data (about 20 minutes on 2 CPU cores).
#   bash examples/builtin_report.sh [RUNS_DIR] [REPORT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/builtin}
OUT=${2:-reports/builtin}
SEEDS="0 1"
# Short runs: 3 epochs of 2560 images (40 steps of 64 per epoch).
FAST=(--gin_bindings='EPOCHS = 3' --gin_bindings='image_datasets.max_train_examples = 2560'
      --gin_bindings='train.verbose = 2')
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

# 1. The three methods from the poor initialisation (3, 2, 3), 2 seeds.
for m in strided_conv spectral_pooling diffstride; do
  for seed in $SEEDS; do
    stamp "$m (3,2,3) seed $seed"
    python train.py --gin_file=gin/builtin/$m.gin --seed=$seed "${FAST[@]}" \
      --gin_bindings='STRIDE_INIT = (3, 2, 3)' --workdir=$RUNS/$m/323/seed$seed
  done
done
# 2. The complexity sweep (lambda = 0 is the DiffStride run above), 2 seeds.
for lam in 0.1 0.3 1 3; do
  for seed in $SEEDS; do
    stamp "diffstride lambda $lam seed $seed"
    python train.py --gin_file=gin/complexity/builtin.gin --seed=$seed "${FAST[@]}" \
      --gin_bindings='STRIDE_INIT = (3, 2, 3)' --gin_bindings="LAMBDA = $lam" \
      --workdir=$RUNS/lambda/$lam/seed$seed
  done
done
# 3. Strided-convolution reference points at other fixed strides.
for init in "2, 2, 2" "1, 2, 2"; do
  for seed in $SEEDS; do
    stamp "strided_conv ($init) seed $seed"
    python train.py --gin_file=gin/builtin/strided_conv.gin --seed=$seed "${FAST[@]}" \
      --gin_bindings="STRIDE_INIT = ($init)" --workdir=$RUNS/strided_conv/${init//, /}/seed$seed
  done
done
# 4. Export the (3, 2, 3) DiffStride runs to fixed strides, with a 1-epoch
#    fine-tune of each export.
stamp "export"
python -m diffstride.experiments.export_run $RUNS/diffstride/323/seed* --finetune_epochs 1
# 5. Per-step time and peak memory of the three ResNet-18 variants.
stamp "cost benchmark"
mkdir -p "$OUT"
python benchmarks/cost_benchmark.py --steps 3 --json "$OUT/cost_benchmark.json"
# 6. The report: tables and figures.
stamp "report"
python -m diffstride.experiments.report $(find "$RUNS" -name metrics.json -printf '%h\n' | sort) \
  --benchmark "$OUT/cost_benchmark.json" --out "$OUT"
stamp "done"

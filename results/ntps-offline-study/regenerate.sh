#!/usr/bin/env bash
# Regenerates results/ntps-offline-study/ on a 2-core CPU machine with no hub access (≈ 2 h:
# ≈ 35 min for the three scratch LMs if they are not cached yet, ≈ 70 min for the study, 5 min cost).
# Run from the repository root after `make demo` or `make test` (they create .venv and fetch the data).
set -euo pipefail
source .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

STUDY=${STUDY:-runs/study-offline}
DATASETS=vader-movie,vader-tweets,vader-amazon,vader-nyt,rt-fresh-rotten-plot,debates-party
SETTINGS=(--out "$STUDY" --max-samples 600 --max-length 256
          --lora-steps 120 --lora-batch-size 8 --lora-lr 1e-3 --lora-max-eval-samples 600)

# 1. Three causal LMs trained from scratch on the offline corpus (cached; skipped when already there).
perceptalign ntps pretrain --size all --threads 2

# 2. NTPS, held-out probes and peer metrics: 4 models × 6 datasets (every layer, f = 0.05 … 0.95).
perceptalign ntps study --models scratch-lm-tiny,scratch-lm-small,scratch-lm-base,smollm2-135m \
    --datasets "$DATASETS" --measure ntps,probe,peers "${SETTINGS[@]}"

# 3. LoRA against the frozen-backbone linear head, with NTPS before and after LoRA (merged weights).
perceptalign ntps study --models scratch-lm-tiny,scratch-lm-small,scratch-lm-base,smollm2-135m \
    --datasets "$DATASETS" --measure lora "${SETTINGS[@]}"

# 4. The report (fixed a priori / leave-one-dataset-out nested / best-in-sample selection).
perceptalign ntps report "$STUDY"
cp "$STUDY/report.html" "$STUDY/report.json" results/ntps-offline-study/
python results/ntps-offline-study/summarize.py "$STUDY" > results/ntps-offline-study/summary.md

# 5. The cost table: NTPS vs probes vs LoRA on one model and dataset, measured in one run.
python benchmarks/ntps_cost.py --model smollm2-135m --dataset vader-movie \
    --json results/ntps-offline-study/cost.json 2>/dev/null | tee results/ntps-offline-study/cost.txt

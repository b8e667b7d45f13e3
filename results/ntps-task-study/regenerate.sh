#!/usr/bin/env bash
# Regenerates this folder: one pass of smollm2-135m over the 17,411 texts of the 66 tasks (≈ 30 min on 2 CPU
# cores), then the per-task measurements and the declared tests (≈ 15 min). The pass (≈ 1 GB) stays in
# runs/task-study and is reused by a rerun with the same inputs.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1
perceptalign ntps task-study --out runs/task-study --preregistration results/ntps-task-study/preregistration.json
# The LoRA arm (S3, amendment 1): 20 tasks, ≈ 2 h on 2 cores, resumable per task; it reruns the analysis.
perceptalign ntps task-study --out runs/task-study --preregistration results/ntps-task-study/preregistration.json --lora-arm
# The scratch-LM arm (S2, amendment 2): the token-matched zoo (≈ 35 min), then each model's pass and tasks.
perceptalign ntps pretrain --size all
perceptalign ntps task-study --out runs/task-study --preregistration results/ntps-task-study/preregistration.json --zoo-arm
cp runs/task-study/{report.json,report.html,summary.md,tasks.csv,lora_arm.json} results/ntps-task-study/
mkdir -p results/ntps-task-study/zoo
for size in tiny small base; do
  cp "runs/task-study/zoo/scratch-lm-$size/tasks.json" "results/ntps-task-study/zoo/scratch-lm-$size.json"
done

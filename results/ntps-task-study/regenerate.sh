#!/usr/bin/env bash
# Regenerates this folder: one pass of smollm2-135m over the 17,411 texts of the 66 tasks (≈ 30 min on 2 CPU
# cores), then the per-task measurements and the declared tests (≈ 15 min). The pass (≈ 1 GB) stays in
# runs/task-study and is reused by a rerun with the same inputs.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1
perceptalign ntps task-study --out runs/task-study --preregistration results/ntps-task-study/preregistration.json
cp runs/task-study/{report.json,report.html,summary.md,tasks.csv} results/ntps-task-study/

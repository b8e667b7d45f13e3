#!/usr/bin/env bash
# Regenerate the planted-recovery study (PREREGISTRATION.md): data, fits with package defaults, summary.
# Fits and figures go to runs/planted (not kept); summary.md / summary.json are written here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
runs="${RUNS:-runs/planted}"
python "$here/make_data.py" "$runs"
for name in constant_sv collapsing collapsing_sv; do
  [ -f "$runs/fit-$name/fit.json" ] || perceptalign rtify fit --data "$runs/$name.csv" --out "$runs/fit-$name"
  [ -f "$runs/ww-$name/fit.json" ] || perceptalign rtify fit-ww --data "$runs/$name.csv" --out "$runs/ww-$name"
  # amendment 1: the head with a learnable urgency gain (collapsing bound)
  [ -f "$runs/urgency-$name/fit.json" ] ||
    perceptalign rtify fit --urgency --no-baselines --data "$runs/$name.csv" --out "$runs/urgency-$name"
  # amendment 2: drift variability, alone and with urgency
  [ -f "$runs/variability-$name/fit.json" ] ||
    perceptalign rtify fit --drift-variability --no-baselines --data "$runs/$name.csv" --out "$runs/variability-$name"
  [ -f "$runs/both-$name/fit.json" ] || perceptalign rtify fit --urgency --drift-variability --no-baselines \
    --data "$runs/$name.csv" --out "$runs/both-$name"
  # amendment 3: the same four heads with a cosine-annealed learning rate
  for variant in "" urgency variability both; do
    flags=(--lr-schedule cosine --no-baselines)
    [[ $variant == urgency || $variant == both ]] && flags+=(--urgency)
    [[ $variant == variability || $variant == both ]] && flags+=(--drift-variability)
    dir="$runs/cosine${variant:+-$variant}-$name"
    [ -f "$dir/fit.json" ] || perceptalign rtify fit "${flags[@]}" --data "$runs/$name.csv" --out "$dir"
  done
  # amendment 4: the stimulus gain fitted with the head, without and with urgency
  [ -f "$runs/gain-$name/fit.json" ] ||
    perceptalign rtify fit --fit-gain --no-baselines --data "$runs/$name.csv" --out "$runs/gain-$name"
  [ -f "$runs/gain-urgency-$name/fit.json" ] || perceptalign rtify fit --fit-gain --urgency --no-baselines \
    --data "$runs/$name.csv" --out "$runs/gain-urgency-$name"
  # amendment 5: the constant head fitted on 1,000 simulated trials per coherence (default 250)
  [ -f "$runs/trials1000-$name/fit.json" ] ||
    perceptalign rtify fit --trials 1000 --no-baselines --data "$runs/$name.csv" --out "$runs/trials1000-$name"
done
python "$here/summarise.py" "$runs" "$here"

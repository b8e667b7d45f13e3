"""The cost table: what NTPS saves compared with probing or fine-tuning, measured in ONE run.

Same model (smollm2-135m, the embedded real LM), same data (vader-movie, the first ``--n`` texts of a
seeded stratified subset of the train split), same layers, same machine and clock:

  1. NTPS = statistics (one forward pass of the base model + streaming moments) + subspace solve
     (every layer, the fraction sweep; the published ``reference`` variant timed separately);
  2. held-out logistic + least-squares probes on CACHED features (70/30 stratified split, every layer);
  3. the probes including the feature extraction (one forward pass, mean pooling, every layer);
  4. LoRA (r = α = 32 on q/k/v, batch 1, Adafactor): ``--lora-steps`` optimizer steps are timed and the
     per-step time is EXTRAPOLATED to the recipe's 5,000 steps (evaluation passes are not included).

Every row is printed as a ratio to NTPS measured in the same run. The default clock is the process CPU
time at 1 thread (stable on a shared machine); ``--clock wall --threads N`` on a quiet one.
``--json PATH`` also writes the numbers (prescreen's fallback ratios come from such a run).

Usage: .venv/bin/python benchmarks/ntps_cost.py [--n 1000] [--lora-steps 20] [--layers all]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import torch

RECIPE_STEPS = 5000


def clock_fn(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter


def timed(clock: Callable[[], float], fn: Callable[[], Any]) -> tuple[float, Any]:
    start = clock()
    value = fn()
    return clock() - start, value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="vader-movie")
    parser.add_argument("--n", type=int, default=1000, help="texts (seeded stratified subset of train)")
    parser.add_argument("--layers", default="all", help="comma-separated hidden-state indices or 'all'")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--token-budget", type=int, default=4096)
    parser.add_argument("--lora-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = clock_fn(args.clock)

    from perceptalign.ntps.datasets import load_text_dataset, stratified_split
    from perceptalign.ntps.features import extract_features
    from perceptalign.ntps.finetune import EncodedTexts, SequenceClassifier, TrainConfig, train_classifier
    from perceptalign.ntps.jobs.lora import LoraSettings, apply_lora
    from perceptalign.ntps.measure import compute_statistics, resolve_layers
    from perceptalign.ntps.models import load_causal_lm
    from perceptalign.ntps.probes import probe_layers
    from perceptalign.ntps.subspace import DEFAULT_FRACTIONS, ntps_all_layers

    dataset = load_text_dataset(args.dataset, "train", max_samples=args.n, seed=0)
    loaded = load_causal_lm(args.model)
    layers = resolve_layers(
        None if args.layers == "all" else [int(x) for x in args.layers.split(",")], loaded.n_hidden_states
    )
    print(
        f"{args.model} on {args.dataset}: {len(dataset)} texts, {len(layers)} layers, "
        f"d = {loaded.hidden_size}, "
        f"clock = {args.clock}, threads = {args.threads}",
        flush=True,
    )
    rows: dict[str, float] = {}

    rows["ntps_statistics"], accumulator = timed(
        clock,
        lambda: compute_statistics(
            loaded, dataset, layers, max_length=args.max_length, token_budget=args.token_budget
        ),
    )
    statistics = accumulator.finalize()
    rows["ntps_solve"], _ = timed(
        clock, lambda: ntps_all_layers(statistics, fractions=DEFAULT_FRACTIONS, reference=False)
    )
    rows["ntps_solve_reference"], _ = timed(
        clock, lambda: ntps_all_layers(statistics, fractions=DEFAULT_FRACTIONS, reference=True)
    )
    print(f"  NTPS statistics {rows['ntps_statistics']:.1f} s, solve {rows['ntps_solve']:.1f} s", flush=True)

    rows["feature_extraction"], features = timed(
        clock,
        lambda: extract_features(
            loaded, dataset, layers, max_length=args.max_length, token_budget=args.token_budget
        ),
    )
    is_test = stratified_split(dataset.texts, dataset.labels, test_fraction=0.3, seed=42)
    tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    rows["probe_on_cached_features"], _ = timed(
        clock,
        lambda: probe_layers(
            {k: v[tr] for k, v in features.items()},
            dataset.labels[tr],
            {k: v[te] for k, v in features.items()},
            dataset.labels[te],
            n_classes=dataset.n_classes,
        ),
    )
    print(
        f"  features {rows['feature_extraction']:.1f} s, probes {rows['probe_on_cached_features']:.1f} s",
        flush=True,
    )

    train_enc = EncodedTexts.from_dataset(loaded, dataset.select(tr), args.max_length)
    eval_enc = EncodedTexts.from_dataset(loaded, dataset.select(te[:4]), args.max_length)
    apply_lora(loaded.model, LoraSettings(r=32, alpha=32.0, dropout=0.05), seed=0)
    classifier = SequenceClassifier(loaded.model, loaded.hidden_size, dataset.n_classes)
    config = TrainConfig(steps=args.lora_steps, batch_size=1, lr=1e-4, eval_interval=args.lora_steps)
    rows["lora_measured_steps"], _ = timed(
        clock, lambda: train_classifier(classifier, train_enc, eval_enc, config, name="LoRA")
    )
    per_step = rows["lora_measured_steps"] / args.lora_steps
    rows["lora_recipe_extrapolated"] = per_step * RECIPE_STEPS

    ntps = rows["ntps_statistics"] + rows["ntps_solve"]
    table = [
        ("NTPS (statistics + solve)", ntps),
        ("  of which statistics", rows["ntps_statistics"]),
        ("  of which solve (19 fractions)", rows["ntps_solve"]),
        ("  solve incl. published reference variant", rows["ntps_solve_reference"]),
        ("probe on cached features (all layers)", rows["probe_on_cached_features"]),
        ("feature extraction (all layers)", rows["feature_extraction"]),
        ("probe incl. feature extraction", rows["feature_extraction"] + rows["probe_on_cached_features"]),
        (f"LoRA, {args.lora_steps} steps measured", rows["lora_measured_steps"]),
        (
            f"LoRA, {RECIPE_STEPS} steps (EXTRAPOLATED from {args.lora_steps})",
            rows["lora_recipe_extrapolated"],
        ),
    ]
    print(f"\n{'method':58s} {'seconds':>10s} {'× NTPS':>8s}")
    for name, seconds in table:
        print(f"{name:58s} {seconds:10.2f} {seconds / ntps:8.2f}")
    result = {
        "model": args.model,
        "dataset": args.dataset,
        "n_texts": len(dataset),
        "layers": len(layers),
        "clock": args.clock,
        "threads": args.threads,
        "lora_steps_measured": args.lora_steps,
        "recipe_steps": RECIPE_STEPS,
        "seconds": rows,
        "ratios_to_ntps": {
            "probe_on_cached_features": rows["probe_on_cached_features"] / ntps,
            "probe_with_extraction": (rows["feature_extraction"] + rows["probe_on_cached_features"]) / ntps,
            "lora_recipe_extrapolated": rows["lora_recipe_extrapolated"] / ntps,
        },
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

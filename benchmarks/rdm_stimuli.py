"""Benchmark: vectorised RDM generator vs the per-trial, per-frame reference loop, on the same configs.

Run:  python benchmarks/rdm_stimuli.py [--quick] [--threads 1] [--dtype float32|uint8]

Prints videos/s for both implementations and their ratio, measured in the same run (target ≥ 10×).
Both produce the same stimulus semantics (see perceptalign.rtify.experiments.pixel.stimuli); only the
speed differs.
The "positions" column times the vectorised dot simulation alone: the gap between it and the full
generator is the cost of writing the dense (B, F, H, W) output, i.e. memory bandwidth and page faults,
which bounds the ratio for large float32 videos (uint8 output is 4× smaller).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from perceptalign.rtify.experiments.pixel.stimuli import (
    RDMConfig,
    generate_rdm,
    generate_rdm_loop,
    simulate_rdm_positions,
)


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up: the least noisy estimate on a shared machine."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--dtype", choices=("float32", "uint8"), default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    cases = [
        ("training scale 42 px × 30 frames", RDMConfig(), 64 if args.quick else 256),
        (
            "original scale 125 px × 150 frames, 3 px dots",
            RDMConfig.original_scale(),
            4 if args.quick else 16,
        ),
    ]
    repeats = 2 if args.quick else 5
    print(f"threads={args.threads} dtype={args.dtype} repeats={repeats} (best of, after one warm-up)")
    header = f"{'config':48s} {'B':>5s} {'loop vid/s':>12s} {'vectorised vid/s':>17s} {'ratio':>8s}"
    print(f"{header} {'positions vid/s':>16s}")
    for name, config, batch in cases:
        coherence = torch.linspace(0.0, 0.512, batch)
        direction = torch.where(torch.arange(batch) % 2 == 0, 1, -1)

        def vectorised(
            config: RDMConfig = config,
            coherence: torch.Tensor = coherence,
            direction: torch.Tensor = direction,
        ) -> torch.Tensor:
            return generate_rdm(coherence, direction, config, seed=0, dtype=dtype)

        def loop(
            config: RDMConfig = config,
            coherence: torch.Tensor = coherence,
            direction: torch.Tensor = direction,
        ) -> torch.Tensor:
            return generate_rdm_loop(coherence, direction, config, seed=0, dtype=dtype)

        def positions(
            config: RDMConfig = config,
            coherence: torch.Tensor = coherence,
            direction: torch.Tensor = direction,
        ) -> torch.Tensor:
            return simulate_rdm_positions(coherence, direction, config, seed=0)

        t_vec = _best_time(vectorised, repeats)
        t_loop = _best_time(loop, max(1, repeats // 2))
        t_pos = _best_time(positions, repeats)
        row = f"{name:48s} {batch:5d} {batch / t_loop:12.1f} {batch / t_vec:17.1f} {t_loop / t_vec:7.1f}×"
        print(f"{row} {batch / t_pos:16.1f}")


if __name__ == "__main__":
    main()

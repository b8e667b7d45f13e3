"""What one RTify head-fit step costs with the soft first-passage estimator (default) against the published
implicit rule, on the default `rtify fit` problem: the cached default GRU (32 units), 7 coherences ×
250 simulated trials × 100 steps of 20 ms, the shared Wasserstein objective on the packaged human
training trials.

Both estimators run in the same process on the same simulated trials, interleaved (the order alternates
every repetition), best of N; each timed unit is ``--steps`` optimisation steps of
:func:`perceptalign.rtify.experiments.rdm.fit_head_to_human` (forward, loss, backward, Adam) from the same
initial head. Process CPU time at 1 thread is the verdict clock (stable on a busy shared machine); wall
time is printed beside it. The last line is the ratio.

    python benchmarks/rtify_fit_cost.py            # 20 steps × 5 repetitions
    python benchmarks/rtify_fit_cost.py --quick    # 5 steps × 2 repetitions
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace

import torch

from perceptalign.rtify.experiments.rdm import FitConfig, HumanTargets, fit_head_to_human
from perceptalign.rtify.experiments.rdm.simulated_trials import GRUTrials
from perceptalign.rtify.experiments.rdm.task import GRUTrainConfig, RDMTaskConfig, load_or_train_gru
from perceptalign.rtify.trials import conditions, default_t0_max, load_rt_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimisation steps per timed unit")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="5 steps × 2 repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the stable verdict clock)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 5, 2
    torch.set_num_threads(args.threads)

    train = load_rt_dataset("rdm-human", split="train")
    conds = conditions(train)
    base = RDMTaskConfig()
    task = replace(base, coherences=tuple(conds))
    backbone, info = load_or_train_gru(task, GRUTrainConfig(seed=0))
    network = GRUTrials(backbone, task)
    config = FitConfig()
    sim = network(conds, config.n_train, seed=101)
    targets = HumanTargets.from_table(
        train, conds, config, name="human training trials", beyond_window="count"
    )
    t0_max = default_t0_max(train)
    print(
        f"GRU {'cached' if info['cached'] else 'trained'}; {len(sim)} trials × {task.n_steps} steps; "
        f"{args.steps} head steps per unit, best of {args.repeats}, {args.threads} thread(s)"
    )

    heads = {}
    for estimator in ("soft", "implicit"):
        cfg = replace(config, estimator=estimator, head_steps=args.steps)
        torch.manual_seed(0)
        heads[estimator] = (cfg, network.build_head(cfg, t0_max=t0_max))

    best: dict[str, tuple[float, float]] = {k: (float("inf"), float("inf")) for k in heads}
    for rep in range(args.repeats):
        order = list(heads) if rep % 2 == 0 else list(reversed(heads))
        for estimator in order:
            cfg, head0 = heads[estimator]
            head = copy.deepcopy(head0)
            cpu, wall = time.process_time(), time.perf_counter()
            fit_head_to_human(head, sim, targets, cfg)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            best[estimator] = (min(best[estimator][0], cpu), min(best[estimator][1], wall))
    for estimator, (cpu, wall) in best.items():
        print(
            f"{estimator:>9s}: {cpu / args.steps * 1e3:8.1f} ms CPU per step "
            f"({wall / args.steps * 1e3:.1f} ms wall)"
        )
    soft, implicit = best["soft"][0], best["implicit"][0]
    print(
        f"per-step cost, soft first passage / implicit rule: {soft / implicit:.2f}x "
        f"({config.head_steps}-step default fit: {soft / args.steps * config.head_steps:.0f} s vs "
        f"{implicit / args.steps * config.head_steps:.0f} s CPU)"
    )


if __name__ == "__main__":
    main()

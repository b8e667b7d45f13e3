"""The self-penalised ideal observer: CE + λ·mean(penalty·τ), trained without human data."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.rtify.experiments.rdm.config import FitConfig
from perceptalign.rtify.experiments.rdm.decision_head import init_threshold
from perceptalign.rtify.experiments.rdm.simulated_trials import SimulatedTrials, simulate
from perceptalign.rtify.experiments.rdm.task import GRUBackbone, RDMTaskConfig
from perceptalign.rtify.heads import RTifyHead
from perceptalign.rtify.losses import self_penalty_objective


def train_self_penalised(
    head: RTifyHead,
    backbone: GRUBackbone,
    task: RDMTaskConfig,
    config: FitConfig,
    *,
    progress: PhaseStatusCallback | None = None,
) -> list[dict[str, float]]:
    """Train the head (backbone frozen) with CE + λ·mean(penalty·τ), τ in steps, on fresh trials each step.

    No human data is used: θ starts where the median decision falls at half the stimulus, t₀ is fixed.
    """
    warm = simulate(backbone, task, config.self_penalty_batch, seed=config.seed + 7919)
    return train_self_penalised_on(
        head,
        lambda step: simulate(backbone, task, config.self_penalty_batch, seed=config.seed + 10_000 + step),
        warm.hidden,
        task.n_steps / 2,
        config,
        progress=progress,
    )


def train_self_penalised_on(
    head: RTifyHead,
    trials: Callable[[int], SimulatedTrials],
    warm_hidden: Tensor,
    target_step: float,
    config: FitConfig,
    *,
    progress: PhaseStatusCallback | None = None,
) -> list[dict[str, float]]:
    """The self-penalty loop, whatever the trials come from: ``trials(step)`` gives each step's batch
    (fresh simulations, or one cached pool every step). θ starts where the median decision of
    ``warm_hidden`` falls at ``target_step``; only the head's trainable parameters move (Adam,
    ``config.lr``, ``config.head_steps`` steps). Returns the per-step loss, mean τ, accuracy and
    no-decision rate.
    """
    init_threshold(head, warm_hidden, target_step)
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=config.lr)
    history: list[dict[str, float]] = []
    for step in range(config.head_steps):
        sim = trials(step)
        out = head(sim.hidden)
        loss = self_penalty_objective(out, sim.labels, lam=config.lam, kind=config.penalty)
        opt.zero_grad()
        loss.backward()
        opt.step()
        record = {
            "loss": float(loss.detach()),
            "mean_tau": float(out.decision.tau.detach().mean()),
            "accuracy": float((out.choice == sim.labels).float().mean()),
            "no_decision_rate": out.decision.no_decision_rate,
        }
        history.append(record)
        if progress is not None:
            progress("self-penalty", step + 1, config.head_steps, f"loss {record['loss']:.4g}")
    return history

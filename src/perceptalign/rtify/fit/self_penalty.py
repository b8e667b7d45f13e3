"""The self-penalised ideal observer: CE + λ·mean(τ), trained without human data."""

from __future__ import annotations

import torch

from perceptalign.rtify.fit.config import FitConfig, PhaseProgress
from perceptalign.rtify.fit.head import init_threshold
from perceptalign.rtify.fit.trials import simulate
from perceptalign.rtify.heads import RTifyHead
from perceptalign.rtify.losses import (
    self_penalty_loss,
)
from perceptalign.rtify.tasks import (
    GRUBackbone,
    RDMTaskConfig,
)


def train_self_penalised(
    head: RTifyHead,
    backbone: GRUBackbone,
    task: RDMTaskConfig,
    config: FitConfig,
    *,
    progress: PhaseProgress | None = None,
) -> list[dict[str, float]]:
    """Train the head (backbone frozen) with CE + λ·mean(penalty·τ), τ in steps, on fresh trials each step.

    No human data is used: θ starts where the median decision falls at half the stimulus, t₀ is fixed.
    """
    warm = simulate(backbone, task, config.self_penalty_batch, seed=config.seed + 7919)
    init_threshold(head, warm.hidden, task.n_steps / 2)
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=config.lr)
    history: list[dict[str, float]] = []
    for step in range(config.head_steps):
        sim = simulate(backbone, task, config.self_penalty_batch, seed=config.seed + 10_000 + step)
        out = head(sim.hidden)
        loss = self_penalty_loss(
            out.choice_logits, sim.labels, out.decision.tau, lam=config.lam, kind=config.penalty
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        accuracy = float((out.choice == sim.labels).float().mean())
        record = {
            "loss": float(loss.detach()),
            "mean_tau": float(out.decision.tau.detach().mean()),
            "accuracy": accuracy,
            "no_decision_rate": out.decision.no_decision_rate,
        }
        history.append(record)
        if progress is not None:
            progress("self-penalty", step + 1, config.head_steps, f"loss {record['loss']:.4g}")
    return history

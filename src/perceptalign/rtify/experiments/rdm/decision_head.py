"""The RTify decision head on the frozen GRU: evidence, threshold initialisation, read-out accuracy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.rdm.config import FitConfig
from perceptalign.rtify.experiments.rdm.task import (
    GRUBackbone,
    RDMTaskConfig,
)
from perceptalign.rtify.heads import RTifyHead, inverse_softplus


class IncrementEvidence(nn.Module):
    """e_t = w·(h_t − h_{t−1}) + b with h_{−1} = 0, so Σ_{k≤t} e_k = w·h_t + b·(t + 1).

    The accumulator then tracks a linear read-out of the recurrent state (which already integrates the
    stimulus) instead of integrating it a second time; b acts as an urgency signal.
    """

    def __init__(self, hidden_size: int, n_out: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, n_out)

    def forward(self, hidden: Tensor) -> Tensor:
        previous = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], dim=1)
        return self.linear(hidden - previous)


def head_from_readout(
    hidden_size: int,
    dt: float,
    config: FitConfig,
    readout_weight: Tensor,
    readout_bias: Tensor,
    *,
    t0_max: float | None = None,
) -> RTifyHead:
    """A two-bound RTify head started from a 2-class linear read-out of the states (weight (2, H), bias (2,)).

    Evidence weights start as the read-out's log-odds direction (class 1 − class 0) and the per-step
    classifier as the read-out itself: at initialisation the head bounds, and reads, the network's decision
    variable, so fitting starts from a sensible decision process instead of a random one. t₀ is learnt in the
    shared box [0, ``t0_max``] (starting at min(``t0_init``, t0_max/2)) for a human fit, fixed at
    ``t0_fixed`` when self-penalised.
    """
    human = config.objective == "human"
    t0_start = config.t0_init if human else config.t0_fixed
    if human and t0_max is not None:
        t0_start = min(t0_start, 0.5 * t0_max)  # start inside the shared box, whatever the data
    increment = config.evidence == "increment"
    evidence: nn.Module = IncrementEvidence(hidden_size) if increment else nn.Linear(hidden_size, 1)
    head = RTifyHead(
        hidden_size,
        2,
        mode="two_bound",
        dt=dt,
        evidence=evidence,
        classifier="linear",
        readout=config.readout,
        estimator=config.estimator,
        temperature=config.temperature,
        t0_init=t0_start,
        learn_t0=human,
        t0_max=t0_max if human else None,
        urgency=config.urgency,
        drift_variability=config.drift_variability,
        noise_seed=config.seed,
    )
    with torch.no_grad():
        target = head.evidence.linear if isinstance(head.evidence, IncrementEvidence) else head.evidence
        target.weight.copy_((readout_weight[1] - readout_weight[0]).unsqueeze(0))
        if increment:
            target.bias.zero_()  # no urgency at the start: the accumulator is the read-out's log-odds
        else:
            target.bias.copy_((readout_bias[1] - readout_bias[0]).unsqueeze(0))
        assert head.classifier is not None
        head.classifier.weight.copy_(readout_weight)
        head.classifier.bias.copy_(readout_bias)
    return head


def build_head(
    backbone: GRUBackbone, task: RDMTaskConfig, config: FitConfig, *, t0_max: float | None = None
) -> RTifyHead:
    """A two-bound RTify head on the GRU's states, started from the GRU's own read-out
    (:func:`head_from_readout`)."""
    readout = backbone.readout
    return head_from_readout(
        backbone.hidden_size, task.dt, config, readout.weight, readout.bias, t0_max=t0_max
    )


@torch.no_grad()
def init_threshold(head: RTifyHead, hidden: Tensor, target_step: float) -> float:
    """Set θ so that the median first-crossing step of |Φ| is ``target_step``; returns θ.

    A trial has crossed by step t* iff max_{t≤t*} |Φ_t| > θ, so the median decision step is t* when θ is
    the median over trials of that running maximum.
    """
    if head.mode != "two_bound":
        raise PerceptAlignError("init_threshold is written for two-bound heads.")
    ev = head.evidence(hidden).squeeze(-1)
    level = torch.cumsum(ev, dim=1).abs()
    step = int(min(max(round(target_step), 0), hidden.shape[1] - 1))
    theta = float(level[:, : step + 1].amax(dim=1).median())
    theta = max(theta, 1e-3)
    head.raw_threshold.copy_(torch.tensor(inverse_softplus(theta)))
    return theta


def p_correct(choice_logits: Tensor, labels: Tensor) -> Tensor:
    """Read-out probability of the correct class, per trial."""
    return torch.softmax(choice_logits, dim=-1).gather(1, labels.view(-1, 1)).squeeze(1)

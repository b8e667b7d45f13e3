"""The stimulus gain as a fitted parameter: the counterpart, for a network on a fixed stream, of the DDM's
drift per unit coherence.

The abstract RDM stream carries a fixed amount of information per second (its gain, see
:mod:`perceptalign.rtify.experiments.rdm.task`). By Wald's optimality of the sequential probability
ratio test, no read-out of that stream can be more accurate at a given mean decision time than an ideal
observer of it, whereas the DDM fits its drift k freely. A head fitted on the stream at the task's
fixed gain therefore has less freedom than the DDM it is compared with. :class:`StimulusGain` re-runs the
frozen network on noise + s·signal (the same noise draws) with s = exp(ρ) fitted together with the head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.rdm.simulated_trials import SimulatedTrials
from perceptalign.rtify.experiments.rdm.task import GRUBackbone


class StimulusGain(nn.Module):
    """Hidden states of the frozen backbone on the simulated trials' stimulus with its signal scaled by a
    learnable ``scale`` (starts at 1: exactly the task's gain). The backbone's weights are frozen
    (``requires_grad`` switched off); only the scale and whatever reads the states are fitted."""

    def __init__(self, backbone: GRUBackbone, sim: SimulatedTrials) -> None:
        super().__init__()
        if sim.signal is None or sim.noise is None:
            raise PerceptAlignError(
                "`fit_gain` re-runs the network on the stimulus at another gain, but these simulated trials "
                "carry no stimulus (e.g. a cache of network outputs); fit without `fit_gain`."
            )
        backbone.requires_grad_(False)
        self._backbone = (backbone,)  # a tuple: not a submodule, so its weights stay out of parameters()
        self.signal, self.noise = sim.signal, sim.noise
        self.log_scale = nn.Parameter(torch.zeros(()))

    @property
    def scale(self) -> Tensor:
        """The factor s > 0 on the task's gain."""
        return torch.exp(self.log_scale)

    def forward(self) -> Tensor:
        """(N, T, H) hidden states at the current gain, differentiable in the scale."""
        hidden, _ = self._backbone[0](self.noise + self.scale * self.signal)
        return hidden


__all__ = ["StimulusGain"]

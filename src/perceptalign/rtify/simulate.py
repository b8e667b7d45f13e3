"""Coherence sweeps of the Wong–Wang model: per-coherence accuracy and RT summaries, trial tables, figure.

This is the library side of ``perceptalign rtify simulate-ww``: it returns data (a JSON-ready summary,
a trials table in the :mod:`perceptalign.rtify.trials` format, example trajectories) and a matplotlib
figure; the CLI only parses options, shows progress and writes files.

Conventions: population 1 (choice 0) receives J_ext(1 + c/100), so for c > 0 choice 0 is correct (for
c < 0 choice 1; at c = 0 "accuracy" is the probability of choice 0). Accuracy and RT statistics use
decided trials only; undecided trials (no crossing within ``max_time_s``) are counted in
``no_decision_rate``. RTs include the motor delay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from perceptalign.callbacks import StepCallback
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.trials import check_coherences
from perceptalign.rtify.wongwang import WongWang2
from perceptalign.rtify.wongwang_engine import substeps

__all__ = [
    "MAX_TRIAL_STEPS",
    "CoherenceSweep",
    "SimulationCost",
    "plot_simulation",
    "simulate_coherences",
    "simulation_cost",
]

# Trials per forward call: the (T, 2, B) trajectory buffer costs 16 kB per trial at dt = 1 ms, 2 s.
_CHUNK = 16384
# Time steps × trials of one forward call (the _CHUNK trials of 2 s at 1 ms); longer trials get fewer.
_CHUNK_STEPS = _CHUNK * 2000
#: Euler (internal) steps × trials that one CPU core pair simulates per second (measured on 2 cores).
REFERENCE_RATE = 2e6
#: Runs estimated above this many trial-steps (about 30 min at REFERENCE_RATE) need an explicit go-ahead.
MAX_TRIAL_STEPS = 3.6e9
#: Euler steps of one trial (1000 s at 1 ms); a longer trajectory does not fit in memory.
MAX_STEPS_PER_TRIAL = 1_000_000


@dataclass(frozen=True)
class SimulationCost:
    """Size of a sweep: ``trial_steps`` = coherences × trials × Euler steps per trial.

    A trial has ``n_steps`` output steps of ``dt_ms``, each integrated in ``n_sub`` internal Euler steps
    (≤ 1 ms each, :mod:`perceptalign.rtify.wongwang`); the cost is in internal steps.
    """

    n_coherences: int
    n_trials: int
    n_steps: int
    dt_ms: float
    n_sub: int = 1

    @property
    def trial_steps(self) -> float:
        return float(self.n_coherences) * self.n_trials * self.n_steps * self.n_sub

    @property
    def seconds(self) -> float:
        """Rough wall time at :data:`REFERENCE_RATE` (machine-dependent)."""
        return self.trial_steps / REFERENCE_RATE

    @property
    def too_large(self) -> bool:
        return self.trial_steps > MAX_TRIAL_STEPS

    def describe(self) -> str:
        """E.g. '7 coherences × 10000000 trials × 2000 steps of 1 ms = 1.4e+11 trial-steps, about 19 h'."""
        sub = f" (× {self.n_sub} Euler sub-steps)" if self.n_sub > 1 else ""
        return (
            f"{self.n_coherences} coherence{'s' if self.n_coherences != 1 else ''} × {self.n_trials} trials "
            "× "
            f"{self.n_steps} steps of {self.dt_ms:g} ms{sub} = {self.trial_steps:.2g} trial-steps, about "
            f"{_duration(self.seconds)} at {REFERENCE_RATE:.0e} trial-steps/s (2 CPU cores)"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def check_grid(dt_ms: float, max_time_s: float) -> int:
    """Output steps per trial for a step of ``dt_ms`` over ``max_time_s``; both checked (dt in (0, 50] ms)."""
    if not (isinstance(dt_ms, (int, float)) and math.isfinite(dt_ms) and 0 < dt_ms <= 50):
        raise PerceptAlignError(
            f"dt_ms (the output step) must be in (0, 50] ms, got {dt_ms!r}; the model integrates in "
            "internal Euler steps of at most 1 ms whatever it is."
        )
    if not (isinstance(max_time_s, (int, float)) and math.isfinite(max_time_s) and max_time_s > 0):
        raise PerceptAlignError(
            f"max_time_s (simulated time per trial) must be a positive number of seconds, got {max_time_s!r}."
        )
    if max_time_s * 1000.0 < dt_ms:
        raise PerceptAlignError(
            # "Euler step" is the output step here; tests/rtify/test_bad_inputs.py pins the wording.
            f"the simulated time per trial ({max_time_s:g} s) is shorter than one Euler step ({dt_ms:g} ms); "
            "lengthen it or use a smaller step."
        )
    n_steps = math.ceil(round(max_time_s * 1000.0 / dt_ms, 6))
    if n_steps > MAX_STEPS_PER_TRIAL:
        raise PerceptAlignError(
            f"{max_time_s:g} s of simulated time per trial at {dt_ms:g} ms steps is {n_steps} steps, more "
            f"than {MAX_STEPS_PER_TRIAL:.0e} (a trial's trajectory must fit in memory); shorten the "
            "simulated time or use a larger step."
        )
    return n_steps


def simulation_cost(
    n_coherences: int,
    n_trials: int,
    *,
    dt_ms: float = 1.0,
    max_time_s: float = 2.0,
    model: WongWang2 | None = None,
) -> SimulationCost:
    """The size of :func:`simulate_coherences` with these settings, checked before any work starts."""
    n_steps = check_grid(dt_ms, max_time_s)
    n_sub = model.substeps(dt_ms) if model is not None else substeps(dt_ms, 1.0)
    return SimulationCost(n_coherences, n_trials, n_steps, float(dt_ms), n_sub)


@dataclass
class CoherenceSweep:
    """Result of :func:`simulate_coherences`.

    ``summary`` has one dict per coherence (keys of ``simulation.json``); ``trials`` one row per
    simulated trial (condition, rt_s, correct, decided); ``examples`` maps a coherence to example
    trajectories (k, T, 2) sampled at ``time_s``.
    """

    dt_ms: float
    trials_per_coherence: int
    max_time_s: float
    threshold: float
    summary: list[dict[str, float | None]]
    trials: pd.DataFrame
    examples: dict[float, np.ndarray] = field(repr=False)
    time_s: np.ndarray = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The ``simulation.json`` document: ``{"dt_ms", "trials", "coherences": [...]}`` (NaN → null)."""
        return {"dt_ms": self.dt_ms, "trials": self.trials_per_coherence, "coherences": self.summary}


def _finite_or_none(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _summarise(coherence: float, rt: np.ndarray, correct: np.ndarray, decided: np.ndarray) -> dict[str, Any]:
    rt_c = rt[decided & correct]
    rt_e = rt[decided & ~correct]
    n_decided = int(decided.sum())
    return {
        "coherence_pct": float(coherence),
        "accuracy": _finite_or_none(float(correct[decided].mean()) if n_decided else math.nan),
        "median_rt_correct_s": _finite_or_none(float(np.median(rt_c)) if rt_c.size else math.nan),
        "mean_rt_correct_s": _finite_or_none(float(rt_c.mean()) if rt_c.size else math.nan),
        "mean_rt_error_s": _finite_or_none(float(rt_e.mean()) if rt_e.size else math.nan),
        "no_decision_rate": float(1.0 - n_decided / len(decided)),
    }


def simulate_coherences(
    coherences: Sequence[float],
    n_trials: int,
    *,
    dt_ms: float = 1.0,
    seed: int = 0,
    max_time_s: float = 2.0,
    model: WongWang2 | None = None,
    n_examples: int = 3,
    progress: StepCallback | None = None,
) -> CoherenceSweep:
    """Simulate ``n_trials`` trials per coherence (%) with the two-population model (default parameters).

    Each coherence gets its own generator seeded from (``seed``, the coherence value), so its results
    do not depend on which other coherences are simulated or in what order. ``progress(trials done,
    total trials, coherence)`` is called after every chunk of trials. Coherences are percentages in
    [−100, 100] (negative: the other direction, choice 1 correct).
    """
    coh = check_coherences(coherences, signed=True)
    if not coh:
        raise PerceptAlignError("no coherences given; give e.g. 0.8 1.6 3.2 6.4 12.8 25.6 51.2 (percent).")
    if len(set(coh)) != len(coh):
        raise PerceptAlignError(f"coherences contain duplicates: {coh}; list each coherence once.")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise PerceptAlignError(f"n_trials must be a positive integer, got {n_trials!r}.")
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 0:
        raise PerceptAlignError(f"n_examples must be a non-negative integer, got {n_examples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PerceptAlignError(f"seed must be an integer, got {seed!r}.")
    n_steps = check_grid(dt_ms, max_time_s)
    model = WongWang2(dt_ms=dt_ms, max_time_s=max_time_s) if model is None else model
    chunk = max(1, min(_CHUNK, _CHUNK_STEPS // max(n_steps, 1)))
    total = len(coh) * n_trials
    summary: list[dict[str, Any]] = []
    tables: list[pd.DataFrame] = []
    examples: dict[float, np.ndarray] = {}
    time_s = np.zeros(0)
    with torch.no_grad():
        for i, c in enumerate(coh):
            stream = (seed * 1_000_003 + round(c * 1000)) % (2**63)
            gen = torch.Generator(device=model.I0.device).manual_seed(stream)
            rts, choices, decided = [], [], []
            for start in range(0, n_trials, chunk):
                batch = min(chunk, n_trials - start)
                coherence = torch.full((batch,), c, dtype=model.I0.dtype, device=model.I0.device)
                out = model(coherence, generator=gen, dt_ms=dt_ms, max_time_s=max_time_s)
                rts.append(out.rt_s.cpu().numpy())
                choices.append(out.choice.cpu().numpy())
                decided.append(out.decided.cpu().numpy())
                if progress is not None:
                    progress(i * n_trials + start + batch, total, c)
            rt = np.concatenate(rts).astype(float)
            choice = np.concatenate(choices)
            dec = np.concatenate(decided).astype(bool)
            correct = choice == (1 if c < 0 else 0)
            summary.append(_summarise(c, rt, correct, dec))
            tables.append(pd.DataFrame({"condition": c, "rt_s": rt, "correct": correct, "decided": dec}))
            if n_examples:
                traj = model.inference(
                    torch.full((n_examples,), c, dtype=model.I0.dtype, device=model.I0.device),
                    generator=gen,
                    dt_ms=dt_ms,
                    max_time_s=max_time_s,
                )
                examples[c] = traj.S.cpu().numpy()
                time_s = traj.time_s.cpu().numpy()
    return CoherenceSweep(
        dt_ms=float(dt_ms),
        trials_per_coherence=n_trials,
        max_time_s=float(max_time_s),
        threshold=float(model.threshold.detach()),
        summary=summary,
        trials=pd.concat(tables, ignore_index=True),
        examples=examples,
        time_s=time_s,
    )


def plot_simulation(sweep: CoherenceSweep) -> Any:
    """Figure: example S₁(t), S₂(t) with θ (top) and signed RT histograms (bottom) per coherence.

    Signed RT: +RT for correct, −RT for error trials (the layout of the human-data figures); undecided
    trials are left out of the histograms and their rate is printed in the title.
    """
    from matplotlib.figure import Figure

    coh = [row["coherence_pct"] for row in sweep.summary]
    ncol = len(coh)
    fig = Figure(figsize=(2.6 * ncol + 0.6, 5.6), constrained_layout=True)
    axes = fig.subplots(2, ncol, squeeze=False)
    bins = np.linspace(-(sweep.max_time_s + 0.5), sweep.max_time_s + 0.5, 61)
    for j, (c, row) in enumerate(zip(coh, sweep.summary, strict=True)):
        ax = axes[0, j]
        for k, traj in enumerate(sweep.examples.get(c, np.zeros((0, 0, 2)))):
            ax.plot(
                sweep.time_s, traj[:, 0], color="tab:blue", lw=1, alpha=0.8, label="S₁" if k == 0 else None
            )
            ax.plot(
                sweep.time_s, traj[:, 1], color="tab:red", lw=1, alpha=0.8, label="S₂" if k == 0 else None
            )
        ax.axhline(sweep.threshold, color="k", ls="--", lw=1, label="θ")
        ax.set_title(f"{c:g}% coherence")
        ax.set_xlabel("time (s)")
        ax.set_ylim(0, 1)
        if j == 0:
            ax.set_ylabel("NMDA gating S")
            ax.legend(loc="upper left", fontsize=7)
        ax = axes[1, j]
        sub = sweep.trials[(sweep.trials["condition"] == c) & sweep.trials["decided"]]
        signed = np.where(sub["correct"].to_numpy(), sub["rt_s"].to_numpy(), -sub["rt_s"].to_numpy())
        ax.hist(signed, bins=bins, color="0.3")
        ax.axvline(0, color="k", lw=0.5)
        acc = row["accuracy"]
        acc_text = "n/a" if acc is None else f"{acc:.3f}"
        ax.set_title(f"acc {acc_text}, undecided {row['no_decision_rate']:.3f}", fontsize=8)
        ax.set_xlabel("signed RT (s)")
        if j == 0:
            ax.set_ylabel("trials")
    fig.suptitle(
        f"Wong–Wang model, dt = {sweep.dt_ms:g} ms, {sweep.trials_per_coherence} trials per coherence"
    )
    return fig

"""Pixel-level RDM: every decision head on one frozen video backbone, compared with humans per coherence.

Input is the backbone's cached outputs on its fixed evaluation set (``BackboneOutputs`` of
:mod:`perceptalign.rtify.experiments.pixel.backbone_training`: per-frame logits (N, F) for "rightward",
the clip logit (N,),
LSTM states (N, F, H) for the CNN+LSTM, coherence as a fraction and direction ±1 per trial). Heads:

* ``ww-frames`` — Wong–Wang driven by w·frame logit (a time series, one value per frame);
* ``ww-clip`` — Wong–Wang driven by w·clip logit (constant while the stimulus is on);
* ``rtify-head-human`` — the RTify RNN-accumulator head (two bounds) on the LSTM states (or on the per-frame
  logit for a C3D, which has no states), fitted to the human training RTs;
* ``rtify-head-self-penalty`` — the same head trained without human data: CE + λ·penalty·τ.

Choices and why:

* Each (coherence, direction) cell of the cache is split in two by trial parity: even trials are the fit
  pool, odd ones are evaluated, so no head is scored on the trials it was fitted on (the humans are
  split train/test the same way). WW adds its own noise, so its pools are repeated with fresh noise;
  the RTify head is deterministic given the states and sees each trial once.
* The RTify head starts on the backbone's own read-out: the logit is a linear function of the LSTM
  state, recovered exactly by least squares from the cache (no backbone weights needed), and is used as
  both the evidence (the accumulator integrates the logit, as published) and the choice read-out.
* The RTify head's step is one frame (``frame_s``, 83 ms for 24 frames over 2 s): its RTs live on that
  grid plus t₀, a resolution limit WW does not have (it integrates at ``dt_ms`` between frames).
* Conditions are the human coherences; cached coherences without human data (the 99.9% curriculum one)
  are ignored, and a human coherence missing from the cache is an error.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.io import PerceptAlignError, atomic_path, write_text_atomic
from perceptalign.rtify.experiments.rdm import (
    FitConfig,
    FitResult,
    HumanTargets,
    SimulatedTrials,
    check_split_tables,
    coherence_markdown,
    evaluate_method,
    fit_head_to_human,
    markdown_number,
    predict_table,
    summary_markdown,
    train_self_penalised_on,
    write_fit_outputs,
)
from perceptalign.rtify.experiments.rdm.wongwang_fit import (
    WWFitConfig,
    WWFitRun,
    WWTrials,
    run_ww_fit,
    trajectory_figure,
)
from perceptalign.rtify.heads import RTifyHead

__all__ = [
    "HEADS",
    "PixelRDMConfig",
    "PixelRDMRun",
    "backbone_sim",
    "backbone_trials",
    "build_readout_head",
    "load_outputs_dir",
    "pixel_rdm_markdown",
    "pixel_rdm_table",
    "run_pixel_rdm",
    "train_self_penalised_cached",
    "write_pixel_rdm_outputs",
]

_TOL = 1e-3
HEADS: tuple[str, ...] = ("ww-frames", "ww-clip", "rtify-head-human", "rtify-head-self-penalty")
HEAD_LABELS = {
    "ww-frames": "WW (frame logits)",
    "ww-clip": "WW (clip logit)",
    "rtify-head-human": "RTify head (human fit)",
    "rtify-head-self-penalty": "RTify head self-penalised",
}


@dataclass(frozen=True)
class PixelRDMConfig:
    """Which heads to run, and the settings of the WW fits and of the RTify heads."""

    heads: tuple[str, ...] = HEADS
    ww: WWFitConfig = field(default_factory=WWFitConfig)
    head: FitConfig = field(default_factory=lambda: FitConfig(head_steps=300, lr=0.03, readout="gaussian"))
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown or not self.heads:
            raise PerceptAlignError(f"unknown or no heads {unknown or '[]'}; choose from {list(HEADS)}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "heads": list(self.heads),
            "ww": self.ww.to_dict(),
            "head": self.head.to_dict(),
            "seed": self.seed,
        }


# --------------------------------------------------------------------------------------------------------
# Cached backbone outputs → model trials.
# --------------------------------------------------------------------------------------------------------


def load_outputs_dir(path: str | Path) -> Any:
    """``BackboneOutputs`` from a ``rtify train-backbone`` directory (or its outputs.safetensors file)."""
    from perceptalign.rtify.experiments.pixel.backbone_training import load_backbone_outputs

    path = Path(path)
    file = path / "outputs.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise PerceptAlignError(
            f"{path}: no outputs.safetensors; pass the directory written by "
            "`perceptalign rtify train-backbone --out DIR`."
        )
    return load_backbone_outputs(file)


def _check_outputs(outputs: Any) -> None:
    for name in ("frame_logits", "clip_logit", "coherence", "direction"):
        if not isinstance(getattr(outputs, name, None), Tensor):
            raise PerceptAlignError(
                f"backbone outputs lack the tensor {name!r}; pass a BackboneOutputs (load_outputs_dir)."
            )
    n = outputs.clip_logit.shape[0]
    if outputs.frame_logits.dim() != 2 or outputs.frame_logits.shape[0] != n:
        raise PerceptAlignError(
            f"frame_logits must be (N, F) with N = {n} trials, got {tuple(outputs.frame_logits.shape)}."
        )
    if outputs.coherence.shape != (n,) or outputs.direction.shape != (n,):
        raise PerceptAlignError("coherence and direction need one entry per trial.")
    if outputs.hidden is not None and (
        outputs.hidden.dim() != 3 or outputs.hidden.shape[:2] != (n, outputs.frame_logits.shape[1])
    ):
        raise PerceptAlignError(f"hidden states must be (N, F, H), got {tuple(outputs.hidden.shape)}.")
    if not torch.isfinite(outputs.frame_logits).all():
        raise PerceptAlignError("the backbone's frame logits contain NaN or infinite values; recompute them.")


def _selection(outputs: Any, conditions: list[float], part: str) -> tuple[Tensor, Tensor]:
    """Indices of the trials of ``part`` ('fit': even trials of each cell, 'eval': odd), their conditions."""
    if part not in ("fit", "eval"):
        raise PerceptAlignError(f"part must be 'fit' or 'eval', got {part!r}.")
    _check_outputs(outputs)
    # Coherences are stored as float32 fractions (0.512 → 51.200002 %): match to 1e-3 percentage points.
    pct = outputs.coherence.double() * 100.0
    available = sorted({round(v, 3) for v in pct.tolist()})
    missing = [c for c in conditions if not any(abs(c - a) < _TOL for a in available)]
    if missing:
        raise PerceptAlignError(
            f"the backbone outputs have no trials at coherence(s) {missing}% (they have {available}); "
            "recompute them with compute_backbone_outputs(..., coherences=...) including every human one."
        )
    index, cond = [], []
    want = 0 if part == "fit" else 1
    for k, c in enumerate(conditions):
        for direction in (-1, 1):
            cell = ((pct - c).abs() < _TOL) & (outputs.direction == direction)
            rows = cell.nonzero().squeeze(1)
            rows = rows[want::2]
            if len(rows) == 0:
                raise PerceptAlignError(
                    f"coherence {c}%, direction {direction}: fewer than 2 cached trials; the fit/eval split "
                    "needs at least 2 per cell (use more trials_per_condition)."
                )
            index.append(rows)
            cond.append(torch.full((len(rows),), k, dtype=torch.long))
    return torch.cat(index), torch.cat(cond)


def backbone_trials(
    outputs: Any, conditions: list[float], *, logit: str = "frames", part: str = "fit"
) -> WWTrials:
    """WW trials from cached logits: per-frame series (``logit='frames'``) or the constant clip logit.

    The logit is for "rightward", and WW's population 1 (choice 0) receives +w·logit, so choice 0 is
    correct for rightward trials (direction +1) and choice 1 for leftward ones.
    """
    if logit not in ("frames", "clip"):
        raise PerceptAlignError(f"logit must be 'frames' or 'clip', got {logit!r}.")
    idx, cond = _selection(outputs, conditions, part)
    drive = outputs.frame_logits[idx] if logit == "frames" else outputs.clip_logit[idx]
    correct_choice = (outputs.direction[idx] < 0).long()
    frame_s = float(outputs.metadata["frame_s"]) if logit == "frames" else None
    return WWTrials(drive.float(), cond, correct_choice, list(conditions), frame_s)


def backbone_sim(outputs: Any, conditions: list[float], *, part: str = "fit") -> SimulatedTrials:
    """RTify-head trials: LSTM states (or the per-frame logit as a 1-d state for a C3D), two-class logits
    [−l/2, l/2] (softmax = sigmoid of the rightward logit), labels (1 = rightward)."""
    idx, cond = _selection(outputs, conditions, part)
    logits = outputs.frame_logits[idx].float()
    hidden = outputs.hidden[idx].float() if outputs.hidden is not None else logits.unsqueeze(-1)
    two = torch.stack([-0.5 * logits, 0.5 * logits], dim=-1)
    labels = (outputs.direction[idx] > 0).long()
    return SimulatedTrials(hidden, two, labels, cond, list(conditions))


def build_readout_head(sim: SimulatedTrials, frame_s: float, config: FitConfig, *, human: bool) -> RTifyHead:
    """Two-bound RTify head whose evidence and choice read-out start as the backbone's own logit.

    The logit l_t = a·h_t + c is linear in the state, so least squares on the cache recovers (a, c)
    exactly (residual ≈ float rounding); the evidence starts as l_t and the classifier as [−l_t/2, l_t/2].
    """
    hidden = sim.hidden
    logit = sim.logits[..., 1] - sim.logits[..., 0]
    design = torch.cat(
        [hidden.reshape(-1, hidden.shape[-1]), torch.ones(hidden.shape[0] * hidden.shape[1], 1)], 1
    )
    coef = torch.linalg.lstsq(design.double(), logit.reshape(-1, 1).double()).solution.squeeze(1).float()
    weight, bias = coef[:-1], coef[-1]
    head = RTifyHead(
        hidden.shape[-1],
        2,
        mode="two_bound",
        dt=frame_s,
        evidence=nn.Linear(hidden.shape[-1], 1),
        classifier="linear",
        readout=config.readout,
        estimator=config.estimator,
        temperature=config.temperature,
        t0_init=config.t0_init if human else config.t0_fixed,
        learn_t0=human,
    )
    with torch.no_grad():
        head.evidence.weight.copy_(weight.unsqueeze(0))
        head.evidence.bias.fill_(float(bias))
        assert head.classifier is not None
        head.classifier.weight.copy_(torch.stack([-0.5 * weight, 0.5 * weight]))
        head.classifier.bias.copy_(torch.stack([-0.5 * bias, 0.5 * bias]))
    return head


def train_self_penalised_cached(
    head: RTifyHead, sim: SimulatedTrials, config: FitConfig, *, progress: PhaseStatusCallback | None = None
) -> list[dict[str, float]]:
    """CE + λ·mean(penalty·τ) on the cached fit pool (full batch; the backbone is frozen, no human data).

    θ starts where the median decision falls at half the clip; t₀ stays at ``config.t0_fixed``.
    """
    return train_self_penalised_on(
        head, lambda step: sim, sim.hidden, sim.hidden.shape[1] / 2, config, progress=progress
    )


# --------------------------------------------------------------------------------------------------------
# The experiment.
# --------------------------------------------------------------------------------------------------------


@dataclass
class PixelRDMRun:
    """fit.json report + trials tables of every head, the WW fits (for trajectory figures)."""

    result: FitResult
    ww_runs: dict[str, WWFitRun]


def _thin(history: list[dict[str, float]]) -> list[dict[str, float]]:
    stride = max(1, len(history) // 100)
    return history[::stride] + ([history[-1]] if (len(history) - 1) % stride else [])


def run_pixel_rdm(
    outputs: Any,
    human_train: pd.DataFrame,
    human_test: pd.DataFrame,
    config: PixelRDMConfig,
    *,
    progress: PhaseStatusCallback | None = None,
) -> PixelRDMRun:
    """Fit every head in ``config.heads`` on the frozen backbone's cache and evaluate on ``human_test``."""
    conds = check_split_tables(human_train, human_test)
    _check_outputs(outputs)
    frame_s = float(outputs.metadata["frame_s"])
    entries: dict[str, dict[str, Any]] = {}
    tables: dict[str, pd.DataFrame] = {}
    histories: dict[str, list[dict[str, float]]] = {}
    runtime: dict[str, float] = {}
    ww_runs: dict[str, WWFitRun] = {}
    head_cfg = config.head
    targets_train = HumanTargets.from_table(human_train, conds, head_cfg, name="human training trials")
    targets_test = HumanTargets.from_table(human_test, conds, head_cfg, name="human test trials")

    def phase(name: str) -> PhaseStatusCallback | None:
        if progress is None:
            return None
        return lambda _p, done, total, status: progress(name, done, total, status)

    for name in config.heads:
        start = time.perf_counter()
        torch.manual_seed(config.seed)
        if name.startswith("ww-"):
            kind = name.removeprefix("ww-")
            run = run_ww_fit(
                human_train,
                human_test,
                config.ww,
                fit_trials=backbone_trials(outputs, conds, logit=kind, part="fit"),
                eval_trials=backbone_trials(outputs, conds, logit=kind, part="eval"),
                name=name,
                progress=phase(name),
            )
            ww_runs[name] = run
            entries[name] = run.result.report["rtify"]
            tables[name] = run.result.tables[name]
            histories[name] = run.result.report["history"]
        else:
            human = name == "rtify-head-human"
            sim_fit = backbone_sim(outputs, conds, part="fit")
            sim_eval = backbone_sim(outputs, conds, part="eval")
            head = build_readout_head(sim_fit, frame_s, head_cfg, human=human)
            if human:
                history = fit_head_to_human(head, sim_fit, targets_train, head_cfg, progress=phase(name))
            else:
                history = train_self_penalised_cached(head, sim_fit, head_cfg, progress=phase(name))
            table = predict_table(head, sim_eval)
            entry = evaluate_method(table, human_test, targets_test, head_cfg)
            entry["params"] = {
                "threshold": float(head.threshold.detach()),
                "t0": float(head.t0.detach()),
                "t0_learned": human,
                "choice": "accumulator (bound crossed)",
                "estimator": head_cfg.estimator,
                "dt_s": frame_s,
            }
            entries[name], tables[name], histories[name] = entry, table, _thin(history)
        entries[name]["fit_seconds"] = time.perf_counter() - start
        runtime[name] = entries[name]["fit_seconds"]

    primary, *others = config.heads
    report = {
        "version": 1,
        "objective": "human",
        "model": primary,
        "methods": list(config.heads),
        "settings": {"pixel_rdm": config.to_dict()},
        "backbone": {
            k: outputs.metadata.get(k)
            for k in ("kind", "backbone_sha256", "frame_s", "seed", "trials_per_condition", "model_config")
        },
        "data": {"conditions": conds, "n_train": len(human_train), "n_test": len(human_test)},
        "rtify": entries[primary],
        # Same schema as `rtify fit`'s baselines, so `rtify compare` lists every head of this run.
        "baselines": {name: entries[name] for name in others},
        "history": histories,
        "runtime_s": {**runtime, "total": float(sum(runtime.values()))},
    }
    return PixelRDMRun(FitResult(report=report, tables=tables), ww_runs)


def pixel_rdm_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per (coherence, method): accuracy, median correct RT and W1; the human row first."""
    entries = [(report["model"], report["rtify"]), *report.get("baselines", {}).items()]
    rows: list[dict[str, Any]] = []
    seen: set[float] = set()
    for name, entry in entries:
        for r in entry["per_condition"]:
            cond = float(r["condition"])
            if cond not in seen:
                seen.add(cond)
                rows.append(
                    {
                        "coherence_pct": cond,
                        "method": "human",
                        "accuracy": r["accuracy_human"],
                        "median_rt_correct_s": r["median_rt_correct_human"],
                        "wasserstein_s": math.nan,
                    }
                )
            rows.append(
                {
                    "coherence_pct": cond,
                    "method": HEAD_LABELS.get(name, name),
                    "accuracy": r["accuracy_model"],
                    "median_rt_correct_s": r["median_rt_correct_model"],
                    "wasserstein_s": r["wasserstein"],
                }
            )
    table = pd.DataFrame(rows).astype(
        {"accuracy": float, "median_rt_correct_s": float, "wasserstein_s": float}
    )
    order = {m: i for i, m in enumerate(dict.fromkeys(table["method"]))}
    return table.sort_values(
        ["coherence_pct", "method"], key=lambda s: s.map(order) if s.name == "method" else s
    )


def pixel_rdm_markdown(table: pd.DataFrame, report: dict[str, Any]) -> str:
    """The table as Markdown: one block per coherence and a mean-over-coherences summary."""
    bb = report.get("backbone", {})
    lines = [
        "# Pixel-level RDM: heads on a frozen backbone vs humans (test split)",
        "",
        f"backbone: {bb.get('kind')} (sha256 {str(bb.get('backbone_sha256'))[:12]}…), "
        f"frame {markdown_number(bb.get('frame_s'))} s",
        "",
    ]
    for cond, block in table.groupby("coherence_pct", sort=True):
        lines += coherence_markdown(
            cond,
            block[["method", "accuracy", "median_rt_correct_s", "wasserstein_s"]].itertuples(index=False),
        )
    models = table[table["method"] != "human"].copy()
    human = table[table["method"] == "human"].set_index("coherence_pct")["accuracy"]
    models["abs_acc_err"] = (models["accuracy"] - models["coherence_pct"].map(human)).abs()
    summary = (
        models.groupby("method", sort=False)[["wasserstein_s", "abs_acc_err"]]
        .mean()
        .sort_values("wasserstein_s")
    )
    lines += summary_markdown("mean over coherences", summary.itertuples())
    lines.append("")
    return "\n".join(lines)


def write_pixel_rdm_outputs(
    run: PixelRDMRun, human_test: pd.DataFrame, out: Path, *, seed: int = 0
) -> list[Path]:
    """fit.json, the comparison figures, pixel_rdm.md / .csv and one WW trajectory figure per WW head."""
    from perceptalign.plotting import save_figure

    out = Path(out)
    labelled = FitResult(
        report=run.result.report,
        tables={HEAD_LABELS.get(k, k): v for k, v in run.result.tables.items()},
    )
    paths = write_fit_outputs(labelled, human_test, out)
    table = pixel_rdm_table(run.result.report)
    with atomic_path(out / "pixel_rdm.csv") as tmp:
        table.to_csv(tmp, index=False)
    paths.append(out / "pixel_rdm.csv")
    write_text_atomic(out / "pixel_rdm.md", pixel_rdm_markdown(table, run.result.report))
    paths.append(out / "pixel_rdm.md")
    for name, ww in run.ww_runs.items():
        fig = trajectory_figure(ww.model, ww.eval_trials, seed=seed)
        paths.append(save_figure(fig, out / f"{name}_trajectories.png"))
    return paths

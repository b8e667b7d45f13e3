"""Pixel-level RDM: every decision head on one frozen video backbone, compared with humans per coherence.

Input is the backbone's cached outputs on its fixed evaluation set (``BackboneOutputs`` of
:mod:`perceptalign.rtify.experiments.pixel.backbone_training`: per-frame logits (N, F) for "rightward",
the clip logit (N,), LSTM states (N, F, H) for the CNN+LSTM, coherence as a fraction and direction ±1 per
trial). Every head is an estimator of :mod:`perceptalign.rtify.estimators`, fitted and scored as in
``rtify fit`` (``fit`` on the human training trials, ``simulate`` at the human coherences, the one metric
path :func:`perceptalign.rtify.experiments.rdm.evaluate_method` against the human test trials):

* ``ww-frames`` — :class:`~perceptalign.rtify.estimators.WongWangEstimator` driven by w·frame logit (a
  time series, one value per frame; :func:`backbone_drive`);
* ``ww-clip`` — the same driven by w·clip logit (constant while the stimulus is on);
* ``rtify-head-human`` — :class:`~perceptalign.rtify.estimators.RTifyHeadEstimator` (two bounds) on the
  LSTM states (or on the per-frame logit for a C3D, which has no states; :func:`backbone_network`),
  fitted to the human training RTs;
* ``rtify-head-self-penalty`` — the same head trained without human data: CE + λ·penalty·τ.

Choices and why:

* Each (coherence, direction) cell of the cache is split in two by trial parity: even trials are the fit
  pool, odd ones the eval pool (:class:`~perceptalign.rtify.estimators.CachedTrials`,
  :class:`~perceptalign.rtify.estimators.CachedDrive`), so no head is scored on the trials it was fitted
  on (the humans are split train/test the same way). WW adds its own noise, so its pools are repeated
  with fresh noise (``n_train`` trials per condition per step, ``n_eval`` at evaluation); the RTify head
  is deterministic given the states and sees each pool trial exactly once: it is fitted on the whole fit
  pool (``n_train`` and the self-penalty batch are set to the pool size) and scored on the whole eval
  pool.
* The RTify head starts on the backbone's own read-out: the logit is a linear function of the LSTM
  state, recovered exactly by least squares from the fit pool (no backbone weights needed), and is used
  as both the evidence (the accumulator integrates the logit, as published) and the choice read-out.
  Its t₀ lives in the shared box [0, min(0.8 s, median training RT)] of ``rtify fit``.
* The RTify head's step is one frame (``frame_s``, 83 ms for 24 frames over 2 s). RT = t*·frame_s + t₀
  with t* the interpolated (continuous) crossing, so RTs are not on the frame grid, but the evidence
  changes only once per frame; WW integrates at ``dt_ms`` between frames.
* Conditions are the human coherences; cached coherences without human data (the 99.9% curriculum one)
  are ignored, and a human coherence missing from the cache is an error.
* Each head's report carries the noise floor of W1 at its own number of model trials
  (:func:`perceptalign.rtify.noise_floor`: a perfect model of the human training trials, resampled at
  that size, against the human test trials), since the RTify heads have far fewer model trials (the
  eval pool) than WW.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.io import PerceptAlignError, atomic_path, write_text_atomic
from perceptalign.rtify.estimators import (
    CachedDrive,
    CachedTrials,
    RTEstimator,
    RTifyHeadConfig,
    RTifyHeadEstimator,
    WongWangEstimator,
)
from perceptalign.rtify.experiments.rdm import (
    FitConfig,
    FitResult,
    HumanTargets,
    check_split_tables,
    evaluate_method,
    markdown_number,
    summary_markdown,
    write_fit_outputs,
)
from perceptalign.rtify.experiments.rdm.baseline_fits import json_records
from perceptalign.rtify.experiments.rdm.fit_experiment import EVAL_SEED_OFFSET
from perceptalign.rtify.experiments.rdm.wongwang_fit import WWFitConfig, predict_ww_table, trajectory_figure
from perceptalign.rtify.metrics import fit_quality, summarize_fit
from perceptalign.rtify.trials import default_t0_max
from perceptalign.rtify.uncertainty import noise_floor

__all__ = [
    "HEADS",
    "PixelRDMConfig",
    "PixelRDMRun",
    "backbone_drive",
    "backbone_network",
    "load_outputs_dir",
    "pixel_estimator",
    "pixel_rdm_markdown",
    "pixel_rdm_table",
    "run_pixel_rdm",
    "write_pixel_rdm_outputs",
]

HEADS: tuple[str, ...] = ("ww-frames", "ww-clip", "rtify-head-human", "rtify-head-self-penalty")
HEAD_LABELS = {
    "ww-frames": "WW (frame logits)",
    "ww-clip": "WW (clip logit)",
    "rtify-head-human": "RTify head (human fit)",
    "rtify-head-self-penalty": "RTify head self-penalised",
}


@dataclass(frozen=True)
class PixelRDMConfig:
    """Which heads to run, the settings of the WW fits and of the RTify heads (``head``; its objective,
    ``n_train`` and ``self_penalty_batch`` are set per head and by the cache's fit pool), and the seed."""

    heads: tuple[str, ...] = HEADS
    ww: WWFitConfig = field(default_factory=WWFitConfig)
    head: RTifyHeadConfig = field(default_factory=lambda: RTifyHeadConfig(head_steps=300))
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown or not self.heads:
            raise PerceptAlignError(f"unknown or no heads {unknown or '[]'}; choose from {list(HEADS)}.")
        if not isinstance(self.ww, WWFitConfig):
            raise PerceptAlignError(f"PixelRDMConfig: `ww` must be a WWFitConfig, got {self.ww!r}.")
        if not isinstance(self.head, RTifyHeadConfig):
            raise PerceptAlignError(f"PixelRDMConfig: `head` must be an RTifyHeadConfig, got {self.head!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PerceptAlignError(
                f"PixelRDMConfig: `seed` must be a non-negative integer, got {self.seed!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "heads": list(self.heads),
            "ww": self.ww.to_dict(),
            "head": self.head.to_dict(),
            "seed": self.seed,
        }


# --------------------------------------------------------------------------------------------------------
# Cached backbone outputs → the estimators' trial sources.
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


def _pools(outputs: Any) -> tuple[list[float], Tensor]:
    """Each cached trial's coherence in % and whether it is in the fit pool (even trials of its
    (coherence, direction) cell; odd ones are the eval pool)."""
    _check_outputs(outputs)
    # Coherences are stored as float32 fractions (0.512 → 51.200002 %): rounded to 1e-3 percentage points,
    # they equal the human tables' coherences exactly.
    pct = [round(v * 100.0, 3) for v in outputs.coherence.double().tolist()]
    direction = outputs.direction.tolist()
    fit = torch.zeros(len(pct), dtype=torch.bool)
    seen: dict[tuple[float, int], int] = {}
    for i, cell in enumerate(zip(pct, direction, strict=True)):
        fit[i] = seen.get(cell, 0) % 2 == 0
        seen[cell] = seen.get(cell, 0) + 1
    thin = sorted({c for (c, _), n in seen.items() if n < 2})
    if thin:
        raise PerceptAlignError(
            f"coherence(s) {thin}%: fewer than 2 cached trials in a direction; the fit/eval split needs at "
            "least 2 per (coherence, direction) cell (use more trials_per_condition)."
        )
    return pct, fit


def backbone_network(outputs: Any) -> CachedTrials:
    """The RTify heads' trials: LSTM states (or the per-frame logit as a 1-d state for a C3D), two-class
    logits [−l/2, l/2] (softmax = sigmoid of the rightward logit), labels (1 = rightward), step
    ``frame_s``; fit/eval pools by trial parity (:func:`_pools`)."""
    pct, fit = _pools(outputs)
    logits = outputs.frame_logits.float()
    hidden = outputs.hidden.float() if outputs.hidden is not None else logits.unsqueeze(-1)
    two = torch.stack([-0.5 * logits, 0.5 * logits], dim=-1)
    labels = (outputs.direction > 0).long()
    return CachedTrials(hidden, two, labels, pct, fit, dt=float(outputs.metadata["frame_s"]))


def backbone_drive(outputs: Any, logit: str = "frames") -> CachedDrive:
    """WW input from the cached logits: per-frame series (``logit='frames'``) or the constant clip logit,
    with the pools of :func:`backbone_network`.

    The logit is for "rightward", and WW's population 1 (choice 0) receives +w·logit, so choice 0 is
    correct for rightward trials (direction +1) and choice 1 for leftward ones.
    """
    if logit not in ("frames", "clip"):
        raise PerceptAlignError(f"`logit` must be 'frames' or 'clip', got {logit!r}.")
    pct, fit = _pools(outputs)
    drive = outputs.frame_logits if logit == "frames" else outputs.clip_logit
    frame_s = float(outputs.metadata["frame_s"]) if logit == "frames" else None
    correct_choice = (outputs.direction < 0).long()
    return CachedDrive(drive.float(), correct_choice, pct, fit, frame_s=frame_s, name=logit)


def _check_coherences(source: CachedTrials, conditions: list[float]) -> None:
    available = sorted(source.conditions)
    missing = [c for c in conditions if c not in available]
    if missing:
        raise PerceptAlignError(
            f"the backbone outputs have no trials at coherence(s) {missing}% (they have {available}); "
            "recompute them with compute_backbone_outputs(..., coherences=...) including every human one."
        )


def pixel_estimator(
    name: str,
    outputs: Any,
    conditions: list[float],
    config: PixelRDMConfig,
    *,
    progress: PhaseStatusCallback | None = None,
) -> RTEstimator:
    """The (unfitted) estimator of head ``name`` on the cached ``outputs`` at ``conditions``.

    RTify heads get ``config.head`` with their objective, ``n_train`` = the fit pool's size per condition
    and the self-penalty batch = that size too (the whole fit pool every step, as a cached pool cannot
    give more); WW heads get ``config.ww`` and their logit drive.
    """
    if name not in HEADS:
        raise PerceptAlignError(f"unknown head {name!r}; choose from {list(HEADS)}.")
    if name.startswith("ww-"):
        drive = backbone_drive(outputs, name.removeprefix("ww-"))
        return WongWangEstimator(config.ww, drive=drive, progress=progress)
    network = backbone_network(outputs)
    _check_coherences(network, conditions)
    n_fit = network.pool_size(conditions, pool="fit")
    objective = "human" if name == "rtify-head-human" else "self-penalty"
    head = replace(config.head, objective=objective, n_train=n_fit, self_penalty_batch=n_fit)
    return RTifyHeadEstimator(head, network, progress=progress)


# --------------------------------------------------------------------------------------------------------
# The experiment.
# --------------------------------------------------------------------------------------------------------


@dataclass
class PixelRDMRun:
    """fit.json report + trials tables of every head, and the fitted estimators (for figures)."""

    result: FitResult
    estimators: dict[str, RTEstimator]


def _thin(history: list[dict[str, float]]) -> list[dict[str, float]]:
    stride = max(1, len(history) // 100)
    return history[::stride] + ([history[-1]] if (len(history) - 1) % stride else [])


def _loss_settings(estimator: RTEstimator) -> FitConfig:
    """The settings whose objective (``rt_loss``) the estimator minimised: its test loss uses the same."""
    if isinstance(estimator, WongWangEstimator):
        return estimator.config.hist_config()
    return estimator.config.fit_config()


def _dt_check(
    estimator: WongWangEstimator,
    conditions: list[float],
    human_test: pd.DataFrame,
    n: int,
    seed: int,
    fine_dt_ms: float,
) -> dict[str, Any]:
    """The WW head re-simulated at the fine output step (same model, finer readout) against the humans."""
    trials = estimator.drive(conditions, n, pool="eval")
    fine = predict_ww_table(estimator.model_, trials, seed=seed, dt_ms=fine_dt_ms)
    quality = fit_quality(fine, human_test)
    return {
        "dt_ms": fine_dt_ms,
        "summary": summarize_fit(quality),
        "accuracy_model": dict(zip(map(str, quality["condition"]), quality["accuracy_model"], strict=True)),
        "median_rt_correct_model": dict(
            zip(map(str, quality["condition"]), quality["median_rt_correct_model"], strict=True)
        ),
        "no_decision_rate": float(1.0 - fine["decided"].mean()),
    }


def run_pixel_rdm(
    outputs: Any,
    human_train: pd.DataFrame,
    human_test: pd.DataFrame,
    config: PixelRDMConfig,
    *,
    progress: PhaseStatusCallback | None = None,
) -> PixelRDMRun:
    """Fit every head in ``config.heads`` (an estimator each, :func:`pixel_estimator`) on the frozen
    backbone's cache and the human training trials, then score each on ``human_test`` as ``rtify fit``
    does: ``simulate`` at the human coherences (seed + ``EVAL_SEED_OFFSET``; WW: ``config.ww.n_eval`` trials
    per coherence from the eval pool, RTify heads: the whole eval pool) and ``evaluate_method``."""
    conds = check_split_tables(human_train, human_test)
    network = backbone_network(outputs)
    _check_coherences(network, conds)
    pools = {pool: network.pool_size(conds, pool=pool) for pool in ("fit", "eval")}
    eval_seed = config.seed + EVAL_SEED_OFFSET
    entries: dict[str, dict[str, Any]] = {}
    tables: dict[str, pd.DataFrame] = {}
    histories: dict[str, list[dict[str, float]]] = {}
    runtime: dict[str, float] = {}
    estimators: dict[str, RTEstimator] = {}

    def phase(name: str) -> PhaseStatusCallback | None:
        if progress is None:
            return None
        return lambda _p, done, total, status: progress(name, done, total, status)

    for name in config.heads:
        start = time.perf_counter()
        torch.manual_seed(config.seed)
        estimator = pixel_estimator(name, outputs, conds, config, progress=phase(name)).fit(human_train)
        fit_seconds = time.perf_counter() - start
        is_ww = isinstance(estimator, WongWangEstimator)
        table = estimator.simulate(conds, config.ww.n_eval if is_ww else pools["eval"], seed=eval_seed)
        settings = _loss_settings(estimator)
        targets_test = HumanTargets.from_table(
            human_test, conds, settings, name="human test trials", beyond_window="count"
        )
        entry = evaluate_method(table, human_test, targets_test, settings)
        described = estimator.to_dict()
        entry.update(
            {
                "method": described["method"],
                "n_params": described["n_parameters"],
                "params": described["params"],
                "estimator_config": described["config"],
                "model_eval_trials": len(table),
            }
        )
        if is_ww:
            assert isinstance(estimator, WongWangEstimator)
            entry["params_init"] = estimator.params_init_
            entry["model_trials_per_step"] = estimator.fit_trials_per_step_
            if config.ww.fine_dt_ms is not None and config.ww.fine_dt_ms != config.ww.dt_ms:
                entry["dt_check"] = _dt_check(
                    estimator, conds, human_test, config.ww.n_eval, eval_seed, config.ww.fine_dt_ms
                )
        else:
            entry["dt_s"] = network.dt
        floor = noise_floor(human_train, human_test, n_model=table, seed=config.seed, conditions=conds)
        entry["noise_floor"] = json_records(floor)
        entry["fit_seconds"] = fit_seconds
        entries[name], tables[name], estimators[name] = entry, table, estimator
        histories[name] = _thin(estimator.history_)  # type: ignore[attr-defined]
        runtime[name] = time.perf_counter() - start

    primary, *others = config.heads
    report = {
        "version": 2,
        "objective": "human",
        "model": primary,
        "methods": list(config.heads),
        "settings": {
            "torch_threads": torch.get_num_threads(),
            "pixel_rdm": config.to_dict(),
            "t0_max_s": default_t0_max(human_train),
            "eval_seed": eval_seed,
        },
        "backbone": {
            k: outputs.metadata.get(k)
            for k in ("kind", "backbone_sha256", "frame_s", "seed", "trials_per_condition", "model_config")
        },
        "data": {
            "conditions": conds,
            "n_train": len(human_train),
            "n_test": len(human_test),
            "cache_pools": {
                **{f"{pool}_per_condition": n for pool, n in pools.items()},
                "split": "even (fit) and odd (eval) trials of each (coherence, direction) cell",
            },
        },
        "rtify": entries[primary],
        # Same schema as `rtify fit`'s baselines, so `rtify compare` lists every head of this run.
        "baselines": {name: entries[name] for name in others},
        "history": histories,
        "runtime_s": {**runtime, "total": float(sum(runtime.values()))},
    }
    return PixelRDMRun(FitResult(report=report, tables=tables), estimators)


def _floor_by_condition(entry: dict[str, Any]) -> dict[float, float]:
    rows = entry.get("noise_floor") or []
    out = {}
    for r in rows:
        try:
            out[float(r["condition"])] = r["wasserstein_mean"]
        except (TypeError, ValueError):  # the "mean over conditions" row
            continue
    return out


def pixel_rdm_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per (coherence, method): accuracy, median correct RT, W1 and the W1 noise floor at the
    method's number of model trials (NaN where the report has none); the human row first."""
    entries = [(report["model"], report["rtify"]), *report.get("baselines", {}).items()]
    rows: list[dict[str, Any]] = []
    seen: set[float] = set()
    for name, entry in entries:
        floor = _floor_by_condition(entry)
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
                        "wasserstein_floor_s": math.nan,
                    }
                )
            rows.append(
                {
                    "coherence_pct": cond,
                    "method": HEAD_LABELS.get(name, name),
                    "accuracy": r["accuracy_model"],
                    "median_rt_correct_s": r["median_rt_correct_model"],
                    "wasserstein_s": r["wasserstein"],
                    "wasserstein_floor_s": floor.get(cond, math.nan),
                }
            )
    columns = ("accuracy", "median_rt_correct_s", "wasserstein_s", "wasserstein_floor_s")
    table = pd.DataFrame(rows).astype(dict.fromkeys(columns, float))
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
        f"frame {markdown_number(bb.get('frame_s'))} s. W1 floor: the W1 a perfect model of the human "
        "training trials would show against the test trials with the head's number of model trials.",
        "",
    ]
    for cond, block in table.groupby("coherence_pct", sort=True):
        lines += [
            f"## coherence {cond:g}%",
            "",
            "| method | accuracy | median correct RT (s) | W1 (s) | W1 floor (s) |",
            "|---|---|---|---|---|",
        ]
        for row in block.itertuples(index=False):
            values = (row.accuracy, row.median_rt_correct_s, row.wasserstein_s, row.wasserstein_floor_s)
            lines.append(f"| {row.method} | " + " | ".join(markdown_number(v) for v in values) + " |")
        lines.append("")
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
    """fit.json, the comparison figures, pixel_rdm.md / .csv and one WW trajectory figure per WW head
    (example trials of its eval pool)."""
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
    conds = run.result.report["data"]["conditions"]
    for name, estimator in run.estimators.items():
        if isinstance(estimator, WongWangEstimator) and isinstance(estimator.drive, CachedDrive):
            trials = estimator.drive.pool_trials(conds, "eval")
            fig = trajectory_figure(estimator.model_, trials, seed=seed)
            paths.append(save_figure(fig, out / f"{name}_trajectories.png"))
    return paths

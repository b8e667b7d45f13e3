"""`ntps prescreen`: for one model, rank candidate datasets (and layers) by NTPS before paying for more.

NTPS costs one forward pass and a small eigen-solve; a probe needs the same pass plus fitting, LoRA
thousands of training steps. The pre-screen computes NTPS for each candidate dataset (or reads it from a
stored study) and ranks the datasets by NTPS at a declared configuration (default: last layer, f = 0.5,
the report's fixed a-priori choice) — higher NTPS, the better a linear read-out is expected to do and the
less LoRA is expected to add. With a study that measured LoRA for THIS model on ≥ 3 datasets, the
expected gain is predicted from the relation fitted there (least squares of gain on NTPS with a 95%
prediction interval, and a decreasing isotonic fit as a shape-free check); other models' pairs are never
pooled in (see :func:`fit_gain_model`). The cost saved is reported from wall times measured in the study
when available, otherwise from the ratios in the JSON output of ``benchmarks/ntps_cost.py`` (``--json``;
default: the repository's ``results/ntps-offline-study/cost.json``), read at run time and labelled
with its path; a missing or incomplete file is an error, never a built-in number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from perceptalign.io import PerceptAlignError, read_json, write_json_atomic, write_text_atomic
from perceptalign.ntps.jobs.inputs import extraction_settings
from perceptalign.ntps.store import ResultsStore, slug
from perceptalign.ntps.subspace import DEFAULT_FRACTIONS

RESULTS_FILE = "prescreen.json"
TABLE_FILE = "prescreen.csv"

#: The cost benchmark's output in this repository (``benchmarks/ntps_cost.py --json``, written by
#: ``results/ntps-offline-study/regenerate.sh``); pass another with ``cost_json`` / ``--cost-json``.
DEFAULT_COST_FILE = Path(__file__).resolve().parents[4] / "results" / "ntps-offline-study" / "cost.json"
#: The ratios to NTPS read from it (keys of its ``ratios_to_ntps``).
COST_KEYS = ("probe_with_extraction", "lora_recipe_extrapolated")


@dataclass(frozen=True)
class PrescreenConfig:
    """One `ntps prescreen` run (the CLI fills it from its options)."""

    model: str
    datasets: list[str]
    out: Path
    study: Path | None = None
    layer: str | int = "last"
    fraction: float = 0.5
    score_metric: str = "ntps"
    layers: list[int] | None = None
    max_samples: int | None = None
    max_length: int | str = 512  # tokens, or "model": the model's own maximum
    token_budget: int = 2048
    dtype: str = "float32"
    seed: int = 0
    trust_remote_code: bool = False
    cost_json: Path | None = None

    def __post_init__(self) -> None:
        from perceptalign.ntps.models import check_max_length

        object.__setattr__(self, "max_length", check_max_length(self.max_length))
        if not self.datasets or len(set(self.datasets)) != len(self.datasets):
            raise PerceptAlignError(f"`datasets` must list each candidate once (got {self.datasets}).")
        if not 0 < self.fraction <= 1:
            raise PerceptAlignError(f"`fraction` must lie in (0, 1] (got {self.fraction}).")
        if self.study is not None and not (Path(self.study) / "cells").is_dir():
            raise PerceptAlignError(
                f"`study` {self.study} holds no study results; pass a directory written by `ntps study`."
            )
        if self.cost_json is not None and not Path(self.cost_json).is_file():
            raise PerceptAlignError(
                f"`cost_json` {self.cost_json} does not exist; pass the file written by "
                "`python benchmarks/ntps_cost.py --json PATH`."
            )


@dataclass
class PrescreenResult:
    datasets: pd.DataFrame  # one row per candidate, ranked by NTPS (rank 1 = highest)
    results: dict[str, Any]
    out: Path


# --------------------------------------------------------------------------------------------------
# the gain model


@dataclass
class GainFit:
    """Least-squares gain = a + b·NTPS fitted on (NTPS, LoRA gain) pairs, plus a decreasing isotonic fit."""

    intercept: float
    slope: float
    residual_sd: float
    n: int
    x_mean: float
    sxx: float
    x: np.ndarray
    y: np.ndarray
    source: str

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, source: str) -> GainFit:
        x, y = np.asarray(x, float), np.asarray(y, float)
        if len(x) < 3 or np.ptp(x) == 0:
            raise PerceptAlignError(
                f"a gain model needs ≥ 3 datasets with distinct NTPS and a LoRA gain, got {len(x)}; run the "
                "study with LoRA (`perceptalign ntps study … --measure lora`) on more datasets."
            )
        slope, intercept = np.polyfit(x, y, 1)
        residuals = y - (intercept + slope * x)
        sd = float(np.sqrt(np.sum(residuals**2) / (len(x) - 2))) if len(x) > 2 else math.nan
        return cls(
            float(intercept),
            float(slope),
            sd,
            len(x),
            float(x.mean()),
            float(np.sum((x - x.mean()) ** 2)),
            x,
            y,
            source,
        )

    def predict(self, x: float) -> tuple[float, float, float]:
        """Prediction and 95% prediction interval (t distribution with n − 2 degrees of freedom)."""
        mean = self.intercept + self.slope * x
        half = (
            scipy.stats.t.ppf(0.975, self.n - 2)
            * self.residual_sd
            * math.sqrt(1 + 1 / self.n + (x - self.x_mean) ** 2 / self.sxx)
        )
        return float(mean), float(mean - half), float(mean + half)

    def predict_isotonic(self, x: float) -> float:
        """Decreasing isotonic regression of gain on NTPS (the declared sign), clipped at the data range."""
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(increasing=False, out_of_bounds="clip").fit(self.x, self.y)
        return float(model.predict([x])[0])


def _value_at(rows: pd.DataFrame, layer: int, fraction: float) -> float:
    hit = rows[(rows["layer"] == layer) & np.isclose(rows["config"].fillna(-1.0), fraction)]
    return float(hit["value"].iloc[0]) if len(hit) else math.nan


def _resolve_layer(choice: str | int, layers: list[int]) -> int:
    from perceptalign.ntps.jobs.report import resolve_layer

    return resolve_layer(choice, layers)


def fit_gain_model(
    table: pd.DataFrame, model: str, layer: str | int, fraction: float, metric: str = "ntps"
) -> GainFit:
    """(NTPS at the declared config, LoRA gain) pairs of THIS model from a study, fitted by least squares.

    Other models' pairs are never pooled in: NTPS scales differ between models (the same dataset has
    different NTPS under different models), so raw NTPS is not one axis across models, and pairs of one
    model share that model, so a pooled fit's prediction interval, which assumes independent points, is
    too narrow. Within-model ranks would fix the scale but not predict a gain in accuracy units. With
    fewer than 3 of this model's datasets the fit is refused. The 95% prediction interval assumes a
    linear relation with independent normal residuals across this model's datasets.
    """
    gains = table[(table["method"] == "lora") & (table["metric"] == "gain")]
    if gains.empty:
        raise PerceptAlignError(
            "the study has no LoRA results; run it with `perceptalign ntps study … --measure lora` to "
            "predict gains."
        )
    own = gains[gains["model"] == model]
    if len(own) < 3:
        others = sorted(set(gains["model"]) - {model})
        raise PerceptAlignError(
            f"the study has LoRA gains for {len(own)} datasets of {model} (a gain model needs ≥ 3); "
            f"other models' pairs ({others}) are not pooled because NTPS scales differ between models. "
            f"Run `perceptalign ntps study --models {model} … --measure lora` on more datasets."
        )
    source = f"this model's {len(own)} datasets"
    xs, ys = [], []
    for _, row in own.iterrows():
        ntps = table[
            (table["model"] == row["model"])
            & (table["dataset"] == row["dataset"])
            & (table["method"] == "ntps")
            & (table["metric"] == metric)
        ]
        if ntps.empty:
            continue
        value = _value_at(ntps, _resolve_layer(layer, sorted(set(ntps["layer"]))), fraction)
        if math.isfinite(value):
            xs.append(value)
            ys.append(float(row["value"]))
    return GainFit.fit(np.array(xs), np.array(ys), source)


# --------------------------------------------------------------------------------------------------
# cost


def load_cost_ratios(path: Path | str | None = None) -> tuple[dict[str, float], str]:
    """The probe and LoRA cost relative to NTPS from the cost benchmark's JSON (``ratios_to_ntps``) and a
    label naming the file and its set-up. A missing file or missing keys is an error naming the file."""
    path = Path(path) if path is not None else DEFAULT_COST_FILE
    regenerate = (
        "write it with `python benchmarks/ntps_cost.py --json PATH` and pass it as `cost_json`, "
        "or give a study with measured cell times"
    )
    if not path.is_file():
        raise PerceptAlignError(f"the cost benchmark output {path} does not exist; {regenerate}.")
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise PerceptAlignError(
            f"the cost benchmark output {path} is not readable JSON ({exc}); {regenerate}."
        ) from exc
    ratios = data.get("ratios_to_ntps") if isinstance(data, dict) else None
    missing = [k for k in COST_KEYS if not isinstance(ratios, dict) or k not in ratios]
    if missing:
        raise PerceptAlignError(
            f"the cost benchmark output {path} lacks ratios_to_ntps keys {missing}; {regenerate}."
        )
    values = {k: ratios[k] for k in COST_KEYS}
    bad = [
        k
        for k, v in values.items()
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0
    ]
    if bad:
        raise PerceptAlignError(
            f"the cost benchmark output {path} has non-positive or non-numeric ratios {bad}; {regenerate}."
        )
    setup = ", ".join(
        f"{key} {data[key]}" for key in ("model", "dataset", "n_texts", "clock", "threads") if key in data
    )
    return {k: float(v) for k, v in values.items()}, f"estimated from the cost benchmark {path} ({setup})"


def cost_ratios(
    table: pd.DataFrame | None, model: str, cost_json: Path | str | None = None
) -> tuple[dict[str, float], str]:
    """Probe and LoRA wall time relative to NTPS: median over a study's cells when it has them, else the
    cost benchmark's ratios from ``cost_json`` (:func:`load_cost_ratios`)."""
    if table is not None:
        cells = table[table["metric"] == "cell_seconds"]
        ratios: dict[str, float] = {}
        for method, key in (("probe", "probe_with_extraction"), ("lora", "lora_recipe_extrapolated")):
            per_pair = []
            for (m, _dataset), group in cells.groupby(["model", "dataset"]):
                values = dict(zip(group["method"], group["value"], strict=True))
                if "ntps" in values and method in values and values["ntps"] > 0:
                    per_pair.append((m == model, values[method] / values["ntps"]))
            own = [r for is_model, r in per_pair if is_model]
            chosen = own or [r for _, r in per_pair]
            if chosen:
                ratios[key] = float(np.median(chosen))
        if ratios:
            return ratios, "measured: median ratio of cell wall times in the study"
    return load_cost_ratios(cost_json)


# --------------------------------------------------------------------------------------------------
# the job


def run_prescreen(
    config: PrescreenConfig,
    *,
    on_status: Callable[[str], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> PrescreenResult:
    """NTPS per candidate dataset (study rows reused when present), ranking, expected gain and cost."""
    from perceptalign.ntps.jobs.score import ScoreConfig, run_score

    status = on_status or (lambda _msg: None)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    study = ResultsStore(config.study).table() if config.study is not None else None
    ratios, cost_source = cost_ratios(study, config.model, config.cost_json)  # fails before any NTPS run
    records = []
    per_layer: dict[str, dict[int, float]] = {}
    for dataset in config.datasets:
        stored = None
        if study is not None:
            stored = study[
                (study["model"] == config.model) & (study["dataset"] == dataset) & (study["method"] == "ntps")
            ]
        if stored is not None and not stored.empty:
            rows = stored[stored["metric"] == config.score_metric]
            seconds = float(stored.loc[stored["metric"] == "cell_seconds", "value"].iloc[0])
            origin = "study"
        else:
            status(f"NTPS of {config.model} on {dataset}")
            started = time.perf_counter()
            result = run_score(
                ScoreConfig(
                    model=config.model,
                    dataset=dataset,
                    out=out / "runs" / slug(config.model) / slug(dataset),
                    fractions=sorted({*DEFAULT_FRACTIONS, config.fraction}),
                    **extraction_settings(config),
                ),
                on_status=status,
                on_batch=on_batch,
            )
            seconds = time.perf_counter() - started
            res = result.results
            column = res["fractions"].index(min(res["fractions"], key=lambda f: abs(f - config.fraction)))
            rows = pd.DataFrame(
                [
                    {
                        "layer": layer,
                        "config": res["fractions"][column],
                        "value": res[config.score_metric][i][column],
                    }
                    for i, layer in enumerate(res["layers"])
                ]
            )
            origin = "computed" + (" (reused cache)" if result.reused_cache else "")
        at_f = rows[np.isclose(rows["config"].astype(float).fillna(-1.0), config.fraction)]
        if at_f.empty:
            raise PerceptAlignError(
                f"no NTPS at f = {config.fraction} for {dataset}; pass a `fraction` the study computed."
            )
        layer = _resolve_layer(config.layer, sorted(set(at_f["layer"])))
        curve = {int(r.layer): float(r.value) for r in at_f.itertuples()}
        per_layer[dataset] = curve
        best_layer = max(curve, key=lambda k: (curve[k], -k))
        records.append(
            {
                "dataset": dataset,
                "ntps": curve[layer],
                "layer": layer,
                "fraction": config.fraction,
                "best_layer": best_layer,
                "best_layer_ntps": curve[best_layer],
                "ntps_seconds": seconds,
                "source": origin,
            }
        )
    table = pd.DataFrame(records).sort_values(["ntps", "dataset"], ascending=[False, True], ignore_index=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))

    gain_info: dict[str, Any] = {"available": False}
    if study is not None:
        try:
            fit = fit_gain_model(study, config.model, config.layer, config.fraction, config.score_metric)
        except PerceptAlignError as exc:
            gain_info["reason"] = str(exc)
        else:
            predictions = [fit.predict(x) for x in table["ntps"]]
            table["expected_gain"] = [p[0] for p in predictions]
            table["gain_low95"] = [p[1] for p in predictions]
            table["gain_high95"] = [p[2] for p in predictions]
            table["expected_gain_isotonic"] = [fit.predict_isotonic(x) for x in table["ntps"]]
            gain_info = {
                "available": True,
                "intercept": fit.intercept,
                "slope": fit.slope,
                "residual_sd": fit.residual_sd,
                "n": fit.n,
                "pairs_from": fit.source,
                "model": "least squares gain = a + b·NTPS on this model's datasets only, 95% prediction "
                "interval (t, n−2 df; assumes a linear relation and independent normal residuals; datasets "
                "that are in the fit are not out of sample); isotonic: decreasing fit (the declared sign)",
            }
            if fit.n < 8:
                gain_info["warning"] = f"fitted on only {fit.n} points: the intervals are wide for a reason"
    else:
        gain_info["reason"] = "no `study` given: nothing to fit the NTPS → LoRA-gain relation on"

    total = float(table["ntps_seconds"].sum())
    cost = {
        "ntps_seconds": total,
        "source": cost_source,
        "ratios_to_ntps": ratios,
        "estimated_seconds": {k: total * v for k, v in ratios.items()},
    }
    results: dict[str, Any] = {
        "model": config.model,
        "declared": {"layer": config.layer, "fraction": config.fraction, "score_metric": config.score_metric},
        "ranking": table.to_dict(orient="records"),
        "ntps_by_layer": per_layer,
        "gain_model": gain_info,
        "cost": cost,
    }
    write_json_atomic(out / RESULTS_FILE, _clean(results))
    write_text_atomic(out / TABLE_FILE, table.to_csv(index=False))
    return PrescreenResult(datasets=table, results=results, out=out)


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


__all__ = [
    "COST_KEYS",
    "DEFAULT_COST_FILE",
    "GainFit",
    "PrescreenConfig",
    "PrescreenResult",
    "cost_ratios",
    "fit_gain_model",
    "load_cost_ratios",
    "run_prescreen",
]

"""`ntps report`: every number a study supports about NTPS, with honest configuration selection.

Per model, NTPS is correlated over datasets with (a) held-out linear-probe accuracy, (b) −MSE of the
one-hot least-squares probe and (c) the LoRA gain over a frozen linear head. NTPS depends on a layer and a
fraction f of rank(V); which (layer, f) to use is chosen in three DECLARED ways (docs/ntps.md, "Selecting
the layer and k"):

* ``fixed`` — chosen a priori, before any result: the LAST hidden state and f = 0.5. The last layer is
  where the LoRA/linear-head comparison reads its features (mean pool of the last hidden state) and the
  layer the probe target is measured on; f = 0.5 is the middle of the published sweep.
* ``nested`` — leave-one-dataset-out: for each dataset, the (layer, f) with the best correlation on the
  OTHER datasets is applied to it (needs ≥ 4 datasets).
* ``best_in_sample`` — the published practice: the (layer, f) that maximises the correlation on all
  datasets. Optimistic by construction; its selection-aware permutation p (the whole maximisation repeated
  on permuted targets) is the p-value to read.

Permutation p-values enumerate all n! pairings when n! ≤ 40,320 (n ≤ 8 datasets), so the smallest possible
p at n = 6 is 1/720, never 0. Intervals: fixed — percentile bootstrap over datasets; nested — the same
bootstrap with the leave-one-dataset-out selection redone in every resample; best in sample — none (a
bootstrap that keeps the in-sample maximum's configuration showed [+1.00, +1.00] at ρ = 1). Holm's
step-down correction is applied within two declared families: every NTPS test of the correlation section
(all models × targets × selection modes) and every test of the peer tables (all models × metrics ×
targets × modes); adjusted p-values are reported beside the raw ones and decide the verdicts.

The probe target is the held-out probe accuracy (and −MSE) at ``probe_layer`` (default: the last layer,
declared like the fixed configuration). The declared sign is positive for the probe targets and negative
for the LoRA gain (the paper's claim: high NTPS → little to gain from adapters). Peer metrics go through
the same three procedures over their layers, on the same datasets, so their rows are comparable.

The report reads stored results only; it never loads a model (so the single-word Fig 1 of docs/ntps.md,
which needs the model's features of words the study does not store, is not drawn).

Outputs: ``DIR/report.html`` (self-contained: figures embedded as base64 PNG) and ``DIR/report.json``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError, read_json, write_json_atomic, write_text_atomic
from perceptalign.ntps.analysis import EXACT_PERMUTATION_LIMIT, SelectionResult, holm, select_and_correlate
from perceptalign.ntps.jobs.report_grid import NO_CONFIG, dataset_label, score_grid
from perceptalign.ntps.peer_metrics import PEER_METRICS
from perceptalign.ntps.store import NO_LAYER, ResultsStore

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
MODES = ("fixed", "nested", "best_in_sample")
MODE_LABELS = {
    "fixed": "fixed a priori",
    "nested": "leave-one-dataset-out (nested)",
    "best_in_sample": "best in sample (OPTIMISTIC, published practice)",
}
#: target name → (description, declared direction of its correlation with NTPS)
TARGETS = {
    "probe_accuracy": ("held-out probe accuracy", "positive"),
    "neg_mse": ("−MSE of the one-hot least-squares probe (held out)", "positive"),
    "lora_gain": ("LoRA gain: acc(LoRA + head) − acc(frozen + head)", "negative"),
}
NTPS_VARIANTS = ("ntps", "ntps_orthonormal", "ntps_probe")
ALPHA = 0.05
#: Holm families: which selection-aware p-values are corrected together.
HOLM_FAMILIES = {
    "ntps": "every NTPS test of the correlation section: all models × targets × selection modes",
    "peers": "every test of the peer tables: all models × metrics (NTPS variants included) × targets × modes",
}


@dataclass(frozen=True)
class ReportConfig:
    """Declared analysis choices of one report (all fixed before the numbers are looked at)."""

    directory: Path
    fixed_layer: str | int = "last"
    fixed_fraction: float = 0.5
    probe_layer: str | int = "last"
    score_metric: str = "ntps"
    n_permutations: int = 2000
    n_bootstrap: int = 2000
    seed: int = 0
    figures: bool = True

    def __post_init__(self) -> None:
        for name in ("fixed_layer", "probe_layer"):
            value = getattr(self, name)
            if not (value in ("last", "middle") or (isinstance(value, int) and value >= 0)):
                raise PerceptAlignError(
                    f"`{name}` must be 'last', 'middle' or a layer index ≥ 0 (got {value!r})."
                )
        if not 0 < self.fixed_fraction <= 1:
            raise PerceptAlignError(f"`fixed_fraction` must lie in (0, 1] (got {self.fixed_fraction}).")
        if self.score_metric not in NTPS_VARIANTS:
            raise PerceptAlignError(
                f"`score_metric` must be one of {NTPS_VARIANTS} (got {self.score_metric!r})."
            )
        if self.n_permutations < 1 or self.n_bootstrap < 0:
            raise PerceptAlignError("`permutations` must be ≥ 1 and `bootstrap` ≥ 0.")


@dataclass
class ReportResult:
    report: dict[str, Any]
    html_path: Path
    json_path: Path


# --------------------------------------------------------------------------------------------------
# tables out of the store


def resolve_layer(choice: str | int, layers: list[int]) -> int:
    """'last' → deepest stored layer, 'middle' → the middle one, an int → itself (must be stored)."""
    layers = sorted(layers)
    if choice == "last":
        return layers[-1]
    if choice == "middle":
        return layers[len(layers) // 2]
    if choice not in layers:
        raise PerceptAlignError(f"layer {choice} is not in the study (layers {layers}); pick a stored layer.")
    return int(choice)


def targets_for_model(table: pd.DataFrame, model: str, probe_layer: str | int) -> dict[str, dict[str, float]]:
    """target name → {dataset: value} for the targets this study has (probe at ``probe_layer``)."""
    out: dict[str, dict[str, float]] = {}
    sub = table[table["model"] == model]
    probe = sub[sub["method"] == "probe"]
    if not probe.empty:
        layer = resolve_layer(probe_layer, sorted(set(probe.loc[probe["layer"] != NO_LAYER, "layer"])))
        at = probe[probe["layer"] == layer]
        acc = at[at["metric"] == "accuracy"].set_index("dataset")["value"]
        mse = at[at["metric"] == "mse"].set_index("dataset")["value"]
        out["probe_accuracy"] = {d: float(v) for d, v in acc.items()}
        out["neg_mse"] = {d: -float(v) for d, v in mse.items()}
    lora = sub[(sub["method"] == "lora") & (sub["metric"] == "gain")]
    if not lora.empty:
        out["lora_gain"] = {d: float(v) for d, v in lora.set_index("dataset")["value"].items()}
    return out


# --------------------------------------------------------------------------------------------------
# selection


def _min_datasets(mode: str) -> int:
    return 4 if mode == "nested" else 3


def _summary(result: SelectionResult) -> dict[str, Any]:
    """JSON summary of one procedure. ``spearman_ci`` is the selection-appropriate interval (see
    ``interval_kind``; none for best in sample); ``spearman_p`` / ``pearson_p`` are scipy's analytic
    p-values (0 at ρ = ±1), kept for reference only: the report shows the permutation p-values."""
    c = result.correlation
    return {
        "mode": result.mode,
        "optimistic": result.optimistic,
        "method": result.method,
        "direction": result.direction,
        "n": c.n,
        "spearman": c.spearman,
        "spearman_ci": list(result.interval),
        "interval_kind": result.interval_kind,
        "spearman_p": c.spearman_p,
        "spearman_perm_p": c.spearman_perm_p,
        "naive_perm_p": result.naive_perm_p,
        "pearson": c.pearson,
        "pearson_ci": list(c.pearson_ci),
        "pearson_p": c.pearson_p,
        "pearson_perm_p": c.pearson_perm_p,
        "selection_perm_p": result.selection_perm_p,
        "exact_permutations": result.exact,
        "n_configurations": result.n_configurations,
        "n_permutations": result.n_permutations,
        "selected": [
            {
                "dataset": str(d),
                "layer": int(r.layer),
                "config": r.config,
                "score": float(r.score),
                "target": float(r.target),
                "n_tied": int(r.n_tied),
            }
            for d, r in result.selected.iterrows()
        ],
    }


def select_all_modes(
    grid: pd.DataFrame,
    target: dict[str, float],
    direction: str,
    fixed_config: tuple[int, Any],
    config: ReportConfig,
) -> dict[str, dict[str, Any]]:
    """The three selection procedures on the datasets that have both a score and a target."""
    common = [d for d in pd.unique(grid["dataset"]) if d in target]
    grid = grid[grid["dataset"].isin(common)]
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        if len(common) < _min_datasets(mode):
            out[mode] = {
                "skipped": f"needs ≥ {_min_datasets(mode)} datasets with both numbers, has {len(common)}"
            }
            continue
        try:
            result = select_and_correlate(
                grid,
                {d: target[d] for d in common},
                mode,
                fixed_config=fixed_config if mode == "fixed" else None,
                method="spearman",
                direction=direction,
                n_permutations=config.n_permutations,
                n_bootstrap=config.n_bootstrap,
                seed=config.seed,
            )
        except PerceptAlignError as exc:  # constant scores or targets: the correlation is undefined
            out[mode] = {"skipped": str(exc)}
            continue
        out[mode] = _summary(result)
    return out


# --------------------------------------------------------------------------------------------------
# the report


def _fixed_config(grid: pd.DataFrame, config: ReportConfig, fractions: bool) -> tuple[int, Any]:
    layer = resolve_layer(config.fixed_layer, sorted(set(grid["layer"])))
    if not fractions:
        return layer, NO_CONFIG
    available = sorted({c for c in grid["config"] if c != NO_CONFIG})
    if not any(np.isclose(c, config.fixed_fraction) for c in available):
        raise PerceptAlignError(
            f"the declared fraction {config.fixed_fraction} is not in the study (fractions "
            f"{available}); pass "
            "`fixed_fraction` with one of them."
        )
    return layer, float(config.fixed_fraction)


def _peer_direction(metric: str, target_direction: str) -> str:
    higher = PEER_METRICS[metric].higher_is_better if metric in PEER_METRICS else True
    if higher:
        return target_direction
    return "negative" if target_direction == "positive" else "positive"


def analyse_model(table: pd.DataFrame, model: str, config: ReportConfig) -> dict[str, Any]:
    """All numbers of one model: targets, NTPS correlations per mode, peers, NTPS before/after LoRA."""
    grid = score_grid(table, model, "ntps", config.score_metric)
    targets = targets_for_model(table, model, config.probe_layer)
    out: dict[str, Any] = {"datasets": sorted(pd.unique(grid["dataset"]).tolist()), "targets": targets}
    if grid.empty:
        out["skipped"] = "no NTPS rows for this model"
        return out
    fixed = _fixed_config(grid, config, fractions=True)
    out["fixed_config"] = {"layer": fixed[0], "fraction": fixed[1]}
    probe_rows = table[
        (table["model"] == model) & (table["method"] == "probe") & (table["layer"] != NO_LAYER)
    ]
    out["probe_layer"] = (
        resolve_layer(config.probe_layer, sorted(set(probe_rows["layer"]))) if not probe_rows.empty else None
    )
    at_fixed = grid[(grid["layer"] == fixed[0]) & grid["config"].map(lambda c: np.isclose(c, fixed[1]))]
    out["ntps_at_fixed"] = {
        str(d): float(s) for d, s in zip(at_fixed["dataset"], at_fixed["score"], strict=True)
    }
    out["correlations"] = {
        name: select_all_modes(grid, values, TARGETS[name][1], fixed, config)
        for name, values in targets.items()
    }
    out["peers"] = _peer_table(table, model, targets, config)
    out["lora_ntps"] = _lora_change(table, model, fixed)
    return out


def _peer_table(
    table: pd.DataFrame, model: str, targets: dict[str, dict[str, float]], config: ReportConfig
) -> dict[str, Any]:
    """metric → target → mode → summary; NTPS variants first, then every stored peer metric."""
    metrics: list[tuple[str, str]] = [("ntps", v) for v in NTPS_VARIANTS]
    stored = table[(table["model"] == model) & (table["method"] == "peers")]["metric"]
    metrics += [("peers", m) for m in PEER_METRICS if m in set(stored)]
    out: dict[str, Any] = {}
    for method, metric in metrics:
        grid = score_grid(table, model, method, metric)
        if grid.empty:
            continue
        has_configs = method == "ntps"
        try:
            fixed = _fixed_config(grid, config, fractions=has_configs)
        except PerceptAlignError as exc:
            out[metric] = {"skipped": str(exc)}
            continue
        if not ((grid["layer"] == fixed[0]).any()):
            fixed = (int(grid["layer"].max()), fixed[1])  # NCE/LEEP: only the last layer's row
        out[metric] = {
            name: select_all_modes(grid, values, _peer_direction(metric, TARGETS[name][1]), fixed, config)
            for name, values in targets.items()
            if name in ("probe_accuracy", "lora_gain")
        }
    return out


def _lora_change(table: pd.DataFrame, model: str, fixed: tuple[int, Any]) -> dict[str, Any] | None:
    sub = table[
        (table["model"] == model)
        & (table["method"] == "lora")
        & (table["layer"] == fixed[0])
        & np.isclose(table["config"].fillna(-1.0), fixed[1])
    ]
    before = sub[sub["metric"] == "ntps_before_lora"].set_index("dataset")["value"]
    after = sub[sub["metric"] == "ntps_after_lora"].set_index("dataset")["value"]
    common = [d for d in before.index if d in after.index]
    if not common:
        return None
    return {str(d): {"before": float(before[d]), "after": float(after[d])} for d in common}


def _costs(table: pd.DataFrame) -> dict[str, Any]:
    """Median wall seconds of a cell per (model, measure), measured by the study."""
    cells = table[table["metric"] == "cell_seconds"]
    out: dict[str, Any] = {}
    for (model, method), group in cells.groupby(["model", "method"]):
        out.setdefault(model, {})[method] = {
            "median_seconds": float(group["value"].median()),
            "n": len(group),
        }
    return out


def _family_entries(models: dict[str, Any], family: str) -> list[dict[str, Any]]:
    """The computed summaries that belong to one Holm family (``HOLM_FAMILIES``), in report order."""
    out = []
    for analysis in models.values():
        if family == "ntps":
            sections = [analysis.get("correlations", {})]
        else:
            sections = [v for v in analysis.get("peers", {}).values() if "skipped" not in v]
        for by_target in sections:
            for modes in by_target.values():
                out += [modes[m] for m in MODES if "selection_perm_p" in modes.get(m, {})]
    return out


def apply_holm(models: dict[str, Any]) -> dict[str, Any]:
    """Holm-adjust the selection-aware p-values of each family in place (``selection_perm_p_holm``,
    ``holm_family`` beside the raw p) and describe the families. Holm controls the family-wise error
    under any dependence, which matters here: the tests share datasets, targets and scores."""
    families = {}
    for family, tests in HOLM_FAMILIES.items():
        entries = _family_entries(models, family)
        adjusted = holm([e["selection_perm_p"] for e in entries])
        for entry, value in zip(entries, adjusted, strict=True):
            entry["selection_perm_p_holm"] = float(value)
            entry["holm_family"] = family
        families[family] = {"m": len(entries), "tests": tests}
    return {
        "method": "Holm–Bonferroni step-down, adjusted p = running max of (m − i + 1)·p(i), capped at 1",
        "p_value": "selection_perm_p (the selection-aware permutation p)",
        "alpha": ALPHA,
        "families": families,
    }


def _interval_text(res: dict[str, Any]) -> str:
    lo, hi = res["spearman_ci"]
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        if res["mode"] == "best_in_sample":
            return "no interval: the in-sample maximum is biased upward"
        return "no interval"
    kind = "selection-aware bootstrap" if res["mode"] == "nested" else "bootstrap"
    return f"95% {kind} interval [{lo:+.2f}, {hi:+.2f}]"


def _p_text(p: float, res: dict[str, Any]) -> str:
    how = (
        f"exact, all {res['n_permutations']:,} pairings"
        if res["exact_permutations"]
        else (f"{res['n_permutations']:,} random pairings")
    )
    return f"{p:.3g} ({how})"


def statements(model: str, analysis: dict[str, Any], families: dict[str, Any] | None = None) -> list[str]:
    """Plain sentences, negative results stated as such; verdicts use the Holm-adjusted p (call
    :func:`apply_holm` first; without it the raw p decides and the sentence says so)."""
    lines = []
    for name, modes in analysis.get("correlations", {}).items():
        what = TARGETS[name][0]
        for mode in MODES:
            res = modes.get(mode, {})
            if "skipped" in res or not res:
                lines.append(
                    f"{model}: NTPS vs {what}, {MODE_LABELS[mode]}: not computed ({res.get('skipped')})."
                )
                continue
            p = res["selection_perm_p"]
            adjusted = res.get("selection_perm_p_holm")
            sign = (
                "as declared"
                if (res["spearman"] > 0) == (res["direction"] == "positive")
                else "OPPOSITE to the declared sign"
            )
            if adjusted is None:
                verdict = f"{'SIGNIFICANT' if p < ALPHA else 'NOT significant'} at {ALPHA} (no correction)"
            else:
                m = (families or {}).get(res["holm_family"], {}).get("m", "?")
                holm_text = f"Holm-adjusted over the {m} NTPS tests p = {adjusted:.3g}"
                if adjusted < ALPHA:
                    verdict = f"{holm_text} → SIGNIFICANT at {ALPHA} after correction"
                elif p < ALPHA:
                    verdict = f"{holm_text} → NOT significant at {ALPHA} after correction (raw p < {ALPHA})"
                else:
                    verdict = f"{holm_text} → NOT significant at {ALPHA}"
            lines.append(
                f"{model}: NTPS vs {what}, {MODE_LABELS[mode]}: Spearman ρ = {res['spearman']:+.2f} "
                f"({_interval_text(res)}, n = {res['n']}, {sign}); selection-aware permutation p = "
                f"{_p_text(p, res)}; {verdict}."
            )
        fixed, best = modes.get("fixed", {}), modes.get("best_in_sample", {})
        if "spearman" in best and best["selection_perm_p"] >= ALPHA and best["naive_perm_p"] < ALPHA:
            lines.append(
                f"{model}: the best-in-sample ρ = {best['spearman']:+.2f} looks significant by its naive "
                f"permutation p = {best['naive_perm_p']:.3g} (configuration taken as given) but not once the "
                f"choice among {best['n_configurations']} configurations is accounted for "
                f"(p = {best['selection_perm_p']:.3g})."
            )
        if "spearman" in fixed and "spearman" in best and best["spearman"] - fixed["spearman"] > 0.2:
            lines.append(
                f"{model}: selecting the configuration on the outcome raises ρ from {fixed['spearman']:+.2f} "
                f"(fixed) to {best['spearman']:+.2f} (best in sample): the difference is selection, not "
                "evidence."
            )
    change = analysis.get("lora_ntps")
    if change:
        deltas = np.array([v["after"] - v["before"] for v in change.values()])
        fixed_cfg = analysis["fixed_config"]
        lines.append(
            f"{model}: after LoRA (merged), NTPS at layer {fixed_cfg['layer']}, f = {fixed_cfg['fraction']} "
            "changed by "
            f"{deltas.mean():+.3f} on average (rose on {int((deltas > 0).sum())} of {len(deltas)} datasets)."
        )
    return lines


def build_report(config: ReportConfig, on_status: Callable[[str], None] | None = None) -> ReportResult:
    """Analyse the study in ``config.directory`` and write report.json and report.html."""
    status = on_status or (lambda _msg: None)
    directory = Path(config.directory)
    store = ResultsStore(directory)
    table = store.table()
    if table.empty:
        raise PerceptAlignError(
            f"{directory} holds no study results (no {store.cells_dir}); run "
            f"`ntps study --out {directory}` first."
        )
    study = read_json(directory / "study.json") if (directory / "study.json").is_file() else {}
    models = [m for m in study.get("models", []) if m in set(table["model"])]
    models += [m for m in pd.unique(table["model"]) if m not in models]
    report: dict[str, Any] = {
        "directory": str(directory),
        "declared": {
            "fixed_layer": config.fixed_layer,
            "fixed_fraction": config.fixed_fraction,
            "probe_layer": config.probe_layer,
            "score_metric": config.score_metric,
            "selection_method": "spearman",
            "directions": {k: v[1] for k, v in TARGETS.items()},
            "n_permutations": config.n_permutations,
            "exact_permutation_limit": EXACT_PERMUTATION_LIMIT,
            "n_bootstrap": config.n_bootstrap,
            "intervals": {
                "fixed": "percentile bootstrap over datasets",
                "nested": "selection-aware percentile bootstrap (leave-one-dataset-out redone per resample)",
                "best_in_sample": "none (the in-sample maximum is biased upward; read the selection-aware p)",
            },
            "tie_breaking": "configurations tied for the best criterion: one drawn uniformly at random",
            "seed": config.seed,
            "alpha": ALPHA,
        },
        "study_settings": study.get("settings"),
        "measures": sorted(set(table["method"])),
        "models": {},
        "costs": _costs(table),
        "statements": [],
    }
    for model in models:
        status(f"analysing {model}")
        report["models"][model] = analyse_model(table, model, config)
    report["multiplicity"] = apply_holm(report["models"])
    for model, analysis in report["models"].items():
        report["statements"] += statements(model, analysis, report["multiplicity"]["families"])
    status("drawing figures")
    from perceptalign.ntps.jobs import report_figures

    figures = report_figures.all_figures(table, report, config, status) if config.figures else {}
    json_path = directory / REPORT_JSON
    write_json_atomic(json_path, _json_clean(report))
    html_path = directory / REPORT_HTML
    write_text_atomic(html_path, render_html(report, figures))
    return ReportResult(report=report, html_path=html_path, json_path=json_path)


def _json_clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# --------------------------------------------------------------------------------------------------
# HTML


def _fmt(value: Any, digits: int = 2, signed: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}g}"


def _interval_cell(res: dict[str, Any], key: str) -> str:
    lo, hi = res[key]
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "[no interval]"
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _correlation_table(modes: dict[str, dict[str, Any]]) -> str:
    head = (
        "<tr><th>selection</th><th>n</th><th>Spearman ρ [95% interval]</th>"
        "<th>p (configuration taken as given)</th><th>p (selection-aware)</th><th>p Holm (family)</th>"
        "<th>Pearson r [95% CI]</th><th>configuration(s) used</th></tr>"
    )
    body = []
    for mode in MODES:
        res = modes.get(mode, {})
        label = html.escape(MODE_LABELS[mode])
        if not res or "skipped" in res:
            body.append(
                f"<tr><td>{label}</td><td colspan=7>not computed: "
                f"{html.escape(str(res.get('skipped')))}</td></tr>"
            )
            continue
        chosen = sorted({(s["layer"], s["config"]) for s in res["selected"]}, key=str)
        chosen_text = ", ".join(f"layer {lay}, f={cfg}" for lay, cfg in chosen)
        if any(s.get("n_tied", 1) > 1 for s in res["selected"]):
            chosen_text += " (ties for the best broken at random)"
        cls = ' class="optimistic"' if res["optimistic"] else ""
        exact = "exact" if res["exact_permutations"] else "Monte Carlo"
        holm_p = res.get("selection_perm_p_holm")
        body.append(
            f"<tr{cls}><td>{label}</td><td>{res['n']}</td>"
            f"<td title='{html.escape(res['interval_kind'])}'>{_fmt(res['spearman'])} "
            f"{_interval_cell(res, 'spearman_ci')}</td>"
            f"<td>{_fmt(res['naive_perm_p'], 3, False)}</td>"
            f"<td><b>{_fmt(res['selection_perm_p'], 3, False)}</b> ({exact})</td>"
            f"<td><b>{_fmt(holm_p, 3, False)}</b> ({html.escape(str(res.get('holm_family', '—')))})</td>"
            f"<td>{_fmt(res['pearson'])} {_interval_cell(res, 'pearson_ci')}</td>"
            f"<td>{html.escape(chosen_text)}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _peer_html(peers: dict[str, Any]) -> str:
    targets = ("probe_accuracy", "lora_gain")
    present = [t for t in targets if any(t in v for v in peers.values() if isinstance(v, dict))]
    if not present:
        return "<p>No peer comparison: the study has neither probe nor LoRA targets.</p>"
    head = (
        "<tr><th>metric</th>"
        + "".join(
            f"<th>{html.escape(TARGETS[t][0])}<br>{html.escape(MODE_LABELS[m])}</th>"
            for t in present
            for m in MODES
        )
        + "</tr>"
    )
    rows = []
    for metric, by_target in peers.items():
        if "skipped" in by_target:
            rows.append(
                f"<tr><td>{metric}</td><td colspan={len(present) * 3}>"
                f"{html.escape(by_target['skipped'])}</td></tr>"
            )
            continue
        cells = []
        for t in present:
            for m in MODES:
                res = by_target.get(t, {}).get(m, {})
                if not res or "skipped" in res:
                    cells.append("<td>—</td>")
                else:
                    holm_p = res.get("selection_perm_p_holm", math.nan)
                    mark = "*" if holm_p < ALPHA else ""
                    cells.append(
                        f"<td>{_fmt(res['spearman'])}{mark} "
                        f"(p={_fmt(res['selection_perm_p'], 2, False)}; "
                        f"Holm {_fmt(holm_p, 2, False)})</td>"
                    )
        rows.append(f"<tr><td>{html.escape(metric)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #bbb;padding:3px 6px}
th{background:#eee}tr.optimistic td{background:#fff4e0}img{max-width:100%;border:1px solid #ddd;margin:.4em 0}
.note{color:#555;font-size:13px}li{margin:.2em 0}"""


def _multiplicity_items(multiplicity: dict[str, Any] | None) -> list[str]:
    if not multiplicity:
        return []
    items = [f"<li>Multiplicity: {html.escape(multiplicity['method'])}, within each family:<ul>"]
    for family, info in multiplicity["families"].items():
        name, tests = html.escape(family), html.escape(info["tests"])
        items.append(f"<li><b>{name}</b> ({info['m']} tests): {tests}</li>")
    items.append("</ul>Verdicts use the Holm-adjusted p; raw p-values are shown beside them.</li>")
    return items


def render_html(report: dict[str, Any], figures: dict[str, dict[str, str]]) -> str:
    """The whole report as one self-contained HTML page."""
    d = report["declared"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>NTPS study report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>NTPS study report</h1><p class=note>{html.escape(report['directory'])} — measures: "
        f"{', '.join(report['measures'])}</p>",
        "<h2>Declared analysis</h2><ul>",
        f"<li><b>fixed a priori</b>: layer = {html.escape(str(d['fixed_layer']))}, f = {d['fixed_fraction']} "
        f"(score: {d['score_metric']}); probe target at layer {html.escape(str(d['probe_layer']))}.</li>",
        "<li><b>nested</b>: leave-one-dataset-out; each dataset's configuration is chosen on the "
        "others. Its interval is a selection-aware bootstrap: the datasets are resampled and the "
        "leave-one-dataset-out choice is redone inside every resample.</li>",
        "<li><b>best in sample</b>: the configuration maximising ρ on all datasets — OPTIMISTIC "
        "(the published practice); read its selection-aware p. It gets NO interval: the in-sample "
        "maximum is biased upward, and a bootstrap that keeps its configuration fixed ignores the "
        "selection (it showed [+1.00, +1.00] at ρ = 1).</li>",
        "<li>Configurations tied for the best criterion: one is drawn uniformly at random (seeded), "
        "never the lowest layer or fraction by default.</li>",
        f"<li>Spearman selects; declared signs: {html.escape(str(d['directions']))}. Permutation nulls "
        f"(one-sided in the declared sign): every pairing enumerated when n! ≤ "
        f"{d['exact_permutation_limit']:,} (n ≤ 8), else {d['n_permutations']} random pairings with "
        f"the +1 correction; bootstrap: {d['n_bootstrap']} resamples; α = {d['alpha']}.</li>",
        *_multiplicity_items(report.get("multiplicity")),
        "</ul><h2>Findings</h2><ul>",
        *[f"<li>{html.escape(s)}</li>" for s in report["statements"]],
        "</ul>",
    ]
    if report.get("figure_notes"):
        parts.append("<h2>Figure notes</h2><ul>")
        parts += [f"<li>{html.escape(note)}</li>" for note in report["figure_notes"]]
        parts.append("</ul>")
    for model, analysis in report["models"].items():
        parts.append(f"<h2>Model: {html.escape(model)}</h2>")
        if "skipped" in analysis:
            parts.append(f"<p>{html.escape(analysis['skipped'])}</p>")
            continue
        parts.append(
            "<p class=note>datasets: "
            f"{html.escape(', '.join(dataset_label(x) for x in analysis['datasets']))}"
            f"; fixed configuration layer {analysis['fixed_config']['layer']}, "
            f"f = {analysis['fixed_config']['fraction']}</p>"
        )
        for name, modes in analysis.get("correlations", {}).items():
            parts.append(
                f"<h3>NTPS vs {html.escape(TARGETS[name][0])} (declared sign: {TARGETS[name][1]})</h3>"
            )
            parts.append(_correlation_table(modes))
        if not analysis.get("correlations"):
            parts.append("<p>No probe or LoRA results for this model: nothing to correlate NTPS with.</p>")
        parts.append(
            "<h3>Peers side by side (same datasets, same three selection procedures; selection-aware "
            "p and its Holm adjustment over the peer-table family; * Holm p &lt; 0.05)</h3>"
        )
        parts.append(_peer_html(analysis.get("peers", {})))
        for title, encoded in figures.get(model, {}).items():
            parts.append(
                f"<h4>{html.escape(title)}</h4><img alt='{html.escape(title)}' "
                f"src='data:image/png;base64,{encoded}'>"
            )
    for title, encoded in figures.get("", {}).items():
        parts.append(
            f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
            f"src='data:image/png;base64,{encoded}'>"
        )
    parts.append(
        "<h2>Measured cost (median wall seconds per cell)</h2><table><tr><th>model</th>"
        "<th>measure</th><th>median s</th><th>cells</th></tr>"
    )
    for model, methods in report["costs"].items():
        for method, cost in methods.items():
            parts.append(
                f"<tr><td>{html.escape(model)}</td><td>{method}</td><td>{cost['median_seconds']:.2f}</td>"
                f"<td>{cost['n']}</td></tr>"
            )
    parts.append(
        "</table><p class=note>Probe cells include the feature extraction; peers reuse the probe's "
        "features; LoRA cells include their linear-head baseline and NTPS before/after.</p></body></html>"
    )
    return "\n".join(parts)


__all__ = [
    "MODES",
    "REPORT_HTML",
    "REPORT_JSON",
    "TARGETS",
    "ReportConfig",
    "ReportResult",
    "analyse_model",
    "build_report",
    "dataset_label",
    "render_html",
    "score_grid",
    "select_all_modes",
    "statements",
    "targets_for_model",
]

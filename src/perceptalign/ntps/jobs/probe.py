"""The `ntps probe` job: load model and splits, extract (or reuse) features, fit and score the probes per
layer on held-out data, write probe.json / probe.csv and the per-layer figure (beside NTPS when the same
folder holds an ``ntps.json``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perceptalign.io import (
    PerceptAlignError,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from perceptalign.ntps.datasets import TextDataset, load_text_dataset, stratified_split
from perceptalign.ntps.datasets.core import SPLIT_SEED, TEST_FRACTION
from perceptalign.ntps.probes import (
    best_layer,
    check_cv,
    probe_layers,
)

#: Logistic-regression solvers a probe may use (sklearn's names; all fit the same L2 objective).
SOLVERS = ("lbfgs", "saga", "sag", "newton-cg", "newton-cholesky")

RESULTS_FILE = "probe.json"
TABLE_FILE = "probe.csv"
FIGURE_FILE = "probe_layers.png"
NTPS_FILE = "ntps.json"


@dataclass(frozen=True)
class ProbeConfig:
    """Everything that defines one `ntps probe` run (the CLI fills it from its options).

    Evaluation data: ``eval_split`` if given (it must exist and differ from ``split``); else the
    dataset's "test" split when it has one; else — and always when ``test_fraction`` is given — a
    stratified ``test_fraction`` of the train split held out by content hash (seed 42, docs/ntps.md, "The
    paper's protocol"), so a
    single local file without a ``split`` column still gets an honest held-out score.

    ``recipe`` (``default`` or ``paper``, :mod:`perceptalign.ntps.recipes`) fills the settings left as
    None: ``max_length`` (512 / the model's own maximum) and the logistic probe's ``C``, ``max_iter``,
    ``tol`` and ``solver`` (lbfgs, tol 1e-4, 2000 iterations / the published saga, tol 0.01, 1000).
    Settings given explicitly win over the recipe.
    """

    model: str
    dataset: str
    out: Path
    split: str = "train"
    eval_split: str | None = None
    test_fraction: float | None = None
    layers: list[int] | None = None
    max_samples: int | None = None
    max_length: int | str | None = None  # None: the recipe's; "model": the model's own maximum
    token_budget: int = 2048
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 elsewhere
    cv: int | None = None
    C: float | None = None
    max_iter: int | None = None
    text_column: str | None = None
    label_column: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    ntps_fraction: float = 0.5
    overwrite: bool = False  # recompute the feature caches in ``out`` instead of reusing or refusing them
    recipe: str = "default"
    tol: float | None = None
    solver: str | None = None
    tokenizer: str | None = None  # another tokenizer for the model (hub id or folder)
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    device_map: str | None = None  # auto: spread the model over every visible GPU

    def __post_init__(self) -> None:
        """Settings that cannot work are refused at construction, before any data or model loads; settings
        left as None are filled from the recipe."""
        from perceptalign.ntps.jobs.inputs import check_placement
        from perceptalign.ntps.models import check_max_length
        from perceptalign.ntps.recipes import get_recipe

        check_placement(self)
        recipe = get_recipe(self.recipe)
        for name, value in (
            ("max_length", recipe.max_length),
            ("C", recipe.probe.C),
            ("max_iter", recipe.probe.max_iter),
            ("tol", recipe.probe.tol),
            ("solver", recipe.probe.solver),
        ):
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "max_length", check_max_length(self.max_length))
        if self.test_fraction is not None:
            if not 0 < self.test_fraction < 1:
                raise PerceptAlignError(
                    f"`test_fraction` must lie strictly between 0 and 1 (got {self.test_fraction})."
                )
            if self.eval_split is not None:
                raise PerceptAlignError(
                    "`eval_split` and `test_fraction` both choose the evaluation data: pass only one "
                    "(`test_fraction` holds out part of `split`)."
                )
        if self.eval_split is not None and self.eval_split == self.split:
            raise PerceptAlignError(
                f"`eval_split` {self.eval_split!r} equals `split`: probes scored on their own training data "
                "saturate (train scores are reported anyway). Choose another split, or `test_fraction` 0.3."
            )
        if not 0 < self.ntps_fraction <= 1:
            raise PerceptAlignError(f"`ntps_fraction` must lie in (0, 1] (got {self.ntps_fraction}).")
        if self.C <= 0 or self.max_iter < 1 or not self.tol > 0:
            raise PerceptAlignError(
                f"C must be > 0, `max_iter` ≥ 1 and tol > 0 (got C={self.C}, max_iter={self.max_iter}, "
                f"tol={self.tol})."
            )
        if self.solver not in SOLVERS:
            raise PerceptAlignError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}.")


@dataclass
class ProbeResult:
    table: pd.DataFrame
    results: dict[str, Any]
    out: Path
    reused_cache: dict[str, bool]


@dataclass
class _Evaluation:
    train: TextDataset
    train_rows: np.ndarray  # rows of the train split's features used for fitting
    test: TextDataset | None  # a separate split (None: held out from train)
    test_rows: np.ndarray  # rows of the test features (or of the train features when held out)
    info: dict[str, Any]


def _data_key(ds: TextDataset) -> list[tuple[str, int]]:
    return sorted(zip(ds.texts, ds.labels.tolist(), strict=True))


def _held_out(train: TextDataset, fraction: float, reason: str) -> _Evaluation:
    is_test = stratified_split(train.texts, train.labels, test_fraction=fraction, seed=SPLIT_SEED)
    fit_rows, test_rows = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    if len(test_rows) == 0 or len(np.unique(train.labels[fit_rows])) < 2:
        raise PerceptAlignError(
            f"holding out {fraction:.0%} of {len(train)} {train.split!r} texts leaves {len(test_rows)} "
            f"test and {len(fit_rows)} training texts with {len(np.unique(train.labels[fit_rows]))} "
            "class(es); use more data (`max_samples`) or another `test_fraction`."
        )
    info = {
        "kind": "held_out_fraction",
        "description": f"stratified {fraction:.0%} of split {train.split!r} "
        f"(sha256 of text, seed {SPLIT_SEED})",
        "test_fraction": fraction,
        "split_seed": SPLIT_SEED,
        "reason": reason,
        "n_overlap": 0,
    }
    return _Evaluation(train, fit_rows, None, test_rows, info)


def _resolve_evaluation(
    config: ProbeConfig, train: TextDataset, status: Callable[[str], None]
) -> _Evaluation:
    if config.test_fraction is not None:
        return _held_out(train, config.test_fraction, "`test_fraction` given")
    name = config.eval_split or "test"
    explicit = config.eval_split is not None
    try:
        test = load_text_dataset(
            config.dataset,
            name,
            text_column=config.text_column,
            label_column=config.label_column,
            max_samples=config.max_samples,
            seed=config.seed,
        )
    except PerceptAlignError as exc:
        if explicit:
            raise PerceptAlignError(
                f"eval split {name!r} is not available: {exc} Pass an existing `eval_split`, or "
                "`test_fraction` 0.3 to hold out part of the train split."
            ) from exc
        status(f"no {name!r} split ({str(exc)[:120]}…); holding out {TEST_FRACTION:.0%} of {train.split!r}")
        return _held_out(train, TEST_FRACTION, f"dataset has no usable {name!r} split")
    if _data_key(test) == _data_key(train):
        # A local file without a `split` column is used whole for every split name.
        if explicit:
            raise PerceptAlignError(
                f"eval split {name!r} holds exactly the same texts as split {train.split!r} (a local file "
                "without a 'split' column is used whole for every split): add a 'split' column, or pass "
                "`test_fraction` 0.3 to hold out part of it."
            )
        status(f"{config.dataset} has no separate {name!r} split; holding out {TEST_FRACTION:.0%} of it")
        return _held_out(train, TEST_FRACTION, f"split {name!r} is the same data as {train.split!r}")
    if test.class_names != train.class_names:
        raise PerceptAlignError(
            f"splits {train.split!r} and {name!r} have different class lists ({train.class_names[:10]} vs "
            f"{test.class_names[:10]}); they must share one label space."
        )
    overlap = len(set(train.texts) & set(test.texts))
    if overlap:
        status(f"warning: {overlap} text(s) of {name!r} also occur in {train.split!r}")
    info = {
        "kind": "split",
        "description": f"split {name!r}",
        "split": name,
        "n_overlap": overlap,
    }
    return _Evaluation(train, np.arange(len(train)), test, np.arange(len(test)), info)


def _ntps_overlay(out: Path, model_fingerprint: str, dataset: str, fraction: float) -> dict[str, Any] | None:
    """NTPS at the fraction nearest ``fraction`` per layer, from OUT/ntps.json if it matches this run."""
    path = out / NTPS_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path)
        if data.get("model_fingerprint") != model_fingerprint or data.get("dataset") != dataset:
            return {"skipped": f"{NTPS_FILE} was computed for another model or dataset"}
        fractions = data.get("fractions")
        if not fractions:
            return {"skipped": f"{NTPS_FILE} has absolute k columns, not fractions"}
        column = int(np.argmin([abs(f - fraction) for f in fractions]))
        values = [float(row[column]) for row in data["ntps"]]
        return {
            "fraction": float(fractions[column]),
            "layers": [int(x) for x in data["layers"]],
            "ntps": values,
        }
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return {"skipped": f"{NTPS_FILE} is not readable ({type(exc).__name__}: {exc})"}


def run_probe(
    config: ProbeConfig,
    *,
    on_status: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> ProbeResult:
    """Load model and splits, extract (or reuse cached) features, fit and score the probes, write outputs.

    Writes OUT/probe.json, OUT/probe.csv, OUT/probe_layers.png and OUT/features_{split}.safetensors.
    ``on_start(n_texts_to_extract, 0)`` is called once before extraction, ``on_batch(texts, tokens)``
    after each batch.
    """
    from perceptalign.ntps.features import FeatureCache, feature_metadata
    from perceptalign.ntps.jobs.inputs import check_job_inputs, load_job_dataset, load_job_model
    from perceptalign.ntps.measure import resolve_layers
    from perceptalign.ntps.models import resolve_max_length
    from perceptalign.ntps.placement import resolve_device, resolve_dtype

    status = on_status or (lambda _msg: None)
    out = check_job_inputs(config)
    train = load_job_dataset(config, status)
    evaluation = _resolve_evaluation(config, train, status)
    check_cv(config.cv, train.labels[evaluation.train_rows])
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    loaded = load_job_model(config, status, device=device, dtype=dtype, device_map=config.device_map)
    layers = resolve_layers(config.layers, loaded.n_hidden_states)
    max_length = resolve_max_length(config.max_length, loaded)
    if max_length != config.max_length:
        status(f"max_length 'model': {max_length} tokens (the model's own maximum)")
    cache = FeatureCache(out)
    splits = [train] + ([evaluation.test] if evaluation.test is not None else [])
    # Check every cache (and refuse mismatching ones) before any forward pass, so the bar knows its total.
    pending = 0
    for ds in splits:
        if cache.exists(ds.split) and not config.overwrite:
            cache.load(ds.split, feature_metadata(loaded, ds, layers, max_length, config.max_samples))
        else:
            pending += len(ds)
    if on_start and pending:
        on_start(pending, 0)
    extracted = {
        ds.split: cache.load_or_extract(
            loaded,
            ds,
            layers,
            max_length=max_length,
            token_budget=config.token_budget,
            max_samples=config.max_samples,
            on_batch=on_batch,
            overwrite=config.overwrite,
        )
        for ds in splits
    }
    for ds in splits:
        status(("reused " if extracted[ds.split].reused else "wrote ") + str(extracted[ds.split].path))
    fit_source = extracted[train.split]
    test_source = extracted[evaluation.test.split] if evaluation.test is not None else fit_source
    status("fitting probes")
    started = time.perf_counter()
    table = probe_layers(
        {layer: fit_source.features[layer][evaluation.train_rows] for layer in layers},
        fit_source.labels[evaluation.train_rows],
        {layer: test_source.features[layer][evaluation.test_rows] for layer in layers},
        test_source.labels[evaluation.test_rows],
        n_classes=train.n_classes,
        cv=config.cv,
        seed=config.seed,
        C=config.C,
        max_iter=config.max_iter,
        tol=config.tol,
        solver=config.solver,
    )
    probe_seconds = time.perf_counter() - started
    overlay = _ntps_overlay(out, loaded.fingerprint, train.name, config.ntps_fraction)
    if overlay and "ntps" in overlay:
        by_layer = dict(zip(overlay["layers"], overlay["ntps"], strict=True))
        table["ntps"] = [by_layer.get(int(layer), math.nan) for layer in table["layer"]]
    elif overlay:
        status(f"NTPS overlay skipped: {overlay['skipped']}")
    y_fit = fit_source.labels[evaluation.train_rows]
    y_test = test_source.labels[evaluation.test_rows]
    majority = int(np.argmax(np.bincount(y_fit, minlength=train.n_classes)))
    timing = {
        split: {
            "reused": item.reused,
            "n_texts": len(item.labels),
            "n_tokens": item.metadata.get("n_tokens"),
            "extract_seconds": item.metadata.get("extract_seconds"),
        }
        for split, item in extracted.items()
    }
    results: dict[str, Any] = {
        "model": loaded.model_id,
        "model_fingerprint": loaded.fingerprint,
        "dataset": train.name,
        "dataset_source": train.source,
        "split": train.split,
        "evaluation": evaluation.info,
        "n_train": len(y_fit),
        "n_test": len(y_test),
        "n_classes": train.n_classes,
        "class_names": list(train.class_names),
        "train_class_counts": np.bincount(y_fit, minlength=train.n_classes).tolist(),
        "test_class_counts": np.bincount(y_test, minlength=train.n_classes).tolist(),
        "majority_class_accuracy": float(np.mean(y_test == majority)),
        "max_length": max_length,
        "dtype": dtype,
        "device": str(device),
        "device_map": config.device_map,
        "layers": [int(x) for x in table["layer"]],
        "cv": config.cv,
        "seed": config.seed,
        "recipe": config.recipe,
        "logistic": {"solver": config.solver, "C": config.C, "tol": config.tol, "max_iter": config.max_iter},
        "best_layer": best_layer(table),
        "columns": list(table.columns),
        "rows": _records(table),
        "ntps_overlay": overlay,
        "features": {split: str(item.path) for split, item in extracted.items()},
        "timing": {"features": timing, "probe_seconds": round(probe_seconds, 3)},
        "definitions": {
            "accuracy/log_loss": "standardize + L2 logistic regression "
            f"(C = {config.C}, {config.solver}), fit on the train rows, scored on the evaluation rows; "
            "log-loss over all classes",
            "mse": "standardize + least squares on one-hot targets; mean over samples and classes",
            "train_*": "the same probes scored on their own training rows (the published, saturating "
            "protocol)",
            "cv_*": "stratified K-fold on the train rows: mean (and sample sd) over folds",
        },
    }
    write_json_atomic(out / RESULTS_FILE, results)
    write_text_atomic(out / TABLE_FILE, table.to_csv(index=False))
    from perceptalign.plotting import save_figure

    save_figure(probe_figure(table, results), out / FIGURE_FILE)
    return ProbeResult(
        table=table, results=results, out=out, reused_cache={s: e.reused for s, e in extracted.items()}
    )


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain JSON values (NaN → None)."""
    rows = []
    for record in table.to_dict(orient="records"):
        clean = {}
        for key, value in record.items():
            if isinstance(value, (bool, np.bool_)):
                clean[key] = bool(value)
            elif isinstance(value, (int, np.integer)):
                clean[key] = int(value)
            else:
                number = float(value)
                clean[key] = None if math.isnan(number) else number
        rows.append(clean)
    return rows


def probe_figure(table: pd.DataFrame, results: Mapping[str, Any]) -> Any:
    """Held-out vs train accuracy and −MSE per layer; NTPS on a twin axis if ``table`` has ``ntps``."""
    from matplotlib.ticker import MaxNLocator

    from perceptalign.plotting import subplots

    layers = table["layer"].to_numpy()
    fig, axes = subplots(1, 2, figsize=(11, 4))
    panels = (("accuracy", "accuracy", 1.0), ("−MSE", "mse", -1.0))
    for ax, (label, key, sign) in zip(axes, panels, strict=True):
        ax.plot(layers, sign * table[key], "o-", color="C0", label=f"held-out {label}")
        ax.plot(layers, sign * table[f"train_{key}"], "s--", color="C7", label=f"train {label} (fit data)")
        if key == "accuracy" and "cv_accuracy_mean" in table:
            mean, sd = table["cv_accuracy_mean"], table["cv_accuracy_sd"]
            ax.fill_between(layers, mean - sd, mean + sd, color="C2", alpha=0.25, label="CV mean ± sd")
        if key == "accuracy":
            ax.axhline(results["majority_class_accuracy"], color="C3", lw=0.8, ls=":", label="majority class")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, names = ax.get_legend_handles_labels()
        if "ntps" in table:
            twin = ax.twinx()
            fraction = results["ntps_overlay"]["fraction"]
            twin.plot(layers, table["ntps"], "^-", color="C1", label=f"NTPS (f = {fraction:g})")
            twin.set_ylabel("NTPS")
            twin.set_ylim(0, 1)
            more, more_names = twin.get_legend_handles_labels()
            handles, names = handles + more, names + more_names
        # Below the axes: over the plot it would hide points (and a twin axis would draw over it).
        ax.legend(handles, names, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    evaluation = results["evaluation"]["description"]
    fig.suptitle(
        f"Linear probes — {results['model']} on {results['dataset']} (fit on {results['n_train']} "
        f"{results['split']!r} texts, scored on {results['n_test']}: {evaluation})",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


__all__ = ["ProbeConfig", "ProbeResult", "probe_figure", "run_probe"]

"""Linear probes on mean-pooled features, scored on held-out data, and the `ntps probe` job.

NTPS is validated against how well a linear read-out of a layer's sentence vectors performs (ntps.md §5):
(a) standardize + L2 logistic regression (C = 1) → accuracy and log-loss, (b) standardize + least squares on
one-hot targets → MSE. The published probes were scored on the data they were fit on, which saturates as
soon as d ≳ n (any labelling of n points in general position is linearly separable in d ≥ n dimensions).
Here every probe is fit on the train split and scored on a held-out split; the train-set scores are
reported beside them (``train_*``) so that the saturation stays visible.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from perceptalign.io import (
    PerceptAlignError,
    read_json,
    write_json_atomic,
    write_text_atomic,
)
from perceptalign.ntps.datasets import TextDataset, load_text_dataset, stratified_split
from perceptalign.ntps.datasets.core import SPLIT_SEED, TEST_FRACTION

RESULTS_FILE = "probe.json"
TABLE_FILE = "probe.csv"
FIGURE_FILE = "probe_layers.png"
NTPS_FILE = "ntps.json"
DEFAULT_MAX_ITER = 2000


# --------------------------------------------------------------------------------------------------
# input checks


def _check_features(X: Any, what: str = "features") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise PerceptAlignError(f"{what} must be a non-empty n×d matrix, got shape {X.shape}.")
    if X.dtype.kind not in "fiu":
        raise PerceptAlignError(f"{what} must be numeric, got dtype {X.dtype}.")
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        rows = np.flatnonzero(~np.isfinite(X).all(1))[:5].tolist()
        raise PerceptAlignError(
            f"{what} contain NaN or infinite values (rows {rows}…); re-extract them in float32."
        )
    return X


def _check_labels(y: Any, n_classes: int, n_rows: int, what: str = "labels") -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_rows:
        raise PerceptAlignError(
            f"{what} must be a 1-D array with one label per row ({n_rows}), got {y.shape}."
        )
    if y.dtype.kind not in "iu":
        raise PerceptAlignError(f"{what} must be integer class indices, got dtype {y.dtype}.")
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        raise PerceptAlignError(
            f"{what} must lie in [0, {n_classes}) but {int(bad.sum())} do not "
            f"(values {sorted({int(v) for v in y[bad]})[:5]}); pass the full n_classes."
        )
    return y.astype(np.int64)


def _check_n_classes(n_classes: int) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise PerceptAlignError(f"n_classes must be an integer ≥ 2 (got {n_classes!r}).")
    return int(n_classes)


# --------------------------------------------------------------------------------------------------
# the two probes


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Standardize + multinomial L2 logistic regression (lbfgs), over a fixed label space of ``n_classes``.

    ``predict_proba`` always has ``n_classes`` columns (zero for classes absent from the training data), so
    log-loss stays defined and comparable when a split lacks a class.
    """

    def __init__(
        self, n_classes: int = 2, C: float = 1.0, max_iter: int = DEFAULT_MAX_ITER, tol: float = 1e-4
    ):
        self.n_classes = n_classes
        self.C = C
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X: Any, y: Any) -> LogisticProbe:
        n_classes = _check_n_classes(self.n_classes)
        X = _check_features(X)
        y = _check_labels(y, n_classes, len(X))
        seen = np.unique(y)
        if len(seen) < 2:
            raise PerceptAlignError(
                f"the probe's training data hold only class {int(seen[0])}; a classifier needs ≥ 2 classes: "
                "use more training samples."
            )
        self.scaler_ = StandardScaler().fit(X)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self.model_ = LogisticRegression(
                C=self.C, solver="lbfgs", max_iter=self.max_iter, tol=self.tol
            ).fit(self.scaler_.transform(X), y)
        self.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        self.seen_classes_ = self.model_.classes_.astype(np.int64)
        self.classes_ = np.arange(n_classes)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        X = _check_features(X)
        seen = self.model_.predict_proba(self.scaler_.transform(X))
        proba = np.zeros((len(X), self.classes_.size))
        proba[:, self.seen_classes_] = seen
        return proba

    def predict(self, X: Any) -> np.ndarray:
        return np.argmax(self.predict_proba(X), axis=1)

    def log_loss(self, X: Any, y: Any) -> float:
        """Mean negative log-likelihood over the full label space (a class absent from ``y`` is fine)."""
        y = _check_labels(y, self.classes_.size, len(np.asarray(X)))
        return float(log_loss(y, self.predict_proba(X), labels=self.classes_))


class OneHotRegressionProbe(BaseEstimator):
    """Standardize + ordinary least squares on one-hot targets (one column per class, intercept included).

    The reported MSE is the mean squared error over samples AND classes,
    ``mean_{n,c} (ŷ_nc − 1[y_n = c])²`` (sklearn's ``mean_squared_error`` with uniform multi-output
    averaging); for d ≥ n the fit is the minimum-norm interpolant and its train MSE is ≈ 0.
    """

    def __init__(self, n_classes: int = 2):
        self.n_classes = n_classes

    def fit(self, X: Any, y: Any) -> OneHotRegressionProbe:
        n_classes = _check_n_classes(self.n_classes)
        X = _check_features(X)
        y = _check_labels(y, n_classes, len(X))
        self.scaler_ = StandardScaler().fit(X)
        self.model_ = LinearRegression().fit(self.scaler_.transform(X), np.eye(n_classes)[y])
        return self

    def predict(self, X: Any) -> np.ndarray:
        """n × n_classes real-valued class scores."""
        return self.model_.predict(self.scaler_.transform(_check_features(X)))

    def mse(self, X: Any, y: Any) -> float:
        y = _check_labels(y, int(self.n_classes), len(np.asarray(X)))
        return float(np.mean((self.predict(X) - np.eye(int(self.n_classes))[y]) ** 2))

    def score(self, X: Any, y: Any) -> float:
        """−MSE, so that higher is better like every sklearn score."""
        return -self.mse(X, y)


# --------------------------------------------------------------------------------------------------
# per-layer table


def _check_cv(cv: int | None, y_train: np.ndarray) -> int | None:
    if cv is None:
        return None
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise PerceptAlignError(
            f"--cv must be an integer ≥ 2 folds (got {cv!r}); omit it to skip cross-validation."
        )
    classes, counts = np.unique(y_train, return_counts=True)
    if counts.min() < cv:
        worst = int(classes[np.argmin(counts)])
        raise PerceptAlignError(
            f"--cv {cv} needs at least {cv} training samples of every class, but class {worst} has only "
            f"{int(counts.min())}: lower --cv to ≤ {int(counts.min())} (it must stay ≥ 2) or use more data "
            "(--max-samples)."
        )
    return int(cv)


def probe_layer(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    n_classes: int,
    cv: int | None = None,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = DEFAULT_MAX_ITER,
) -> dict[str, Any]:
    """Held-out, train and (optionally) cross-validated probe scores of one layer."""
    logistic = LogisticProbe(n_classes, C=C, max_iter=max_iter).fit(X_train, y_train)
    regression = OneHotRegressionProbe(n_classes).fit(X_train, y_train)
    row: dict[str, Any] = {
        "accuracy": float(logistic.score(X_test, y_test)),
        "log_loss": logistic.log_loss(X_test, y_test),
        "mse": regression.mse(X_test, y_test),
        "train_accuracy": float(logistic.score(X_train, y_train)),
        "train_log_loss": logistic.log_loss(X_train, y_train),
        "train_mse": regression.mse(X_train, y_train),
    }
    converged = logistic.converged_
    if cv is not None:
        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        accuracy, loss, mse = [], [], []
        for fit_rows, score_rows in folds.split(X_train, y_train):
            fold = LogisticProbe(n_classes, C=C, max_iter=max_iter).fit(X_train[fit_rows], y_train[fit_rows])
            converged = converged and fold.converged_
            accuracy.append(fold.score(X_train[score_rows], y_train[score_rows]))
            loss.append(fold.log_loss(X_train[score_rows], y_train[score_rows]))
            fold_ls = OneHotRegressionProbe(n_classes).fit(X_train[fit_rows], y_train[fit_rows])
            mse.append(fold_ls.mse(X_train[score_rows], y_train[score_rows]))
        # Sample standard deviation (ddof = 1) over folds: the spread a rerun with other folds would show.
        row.update(
            cv_accuracy_mean=float(np.mean(accuracy)),
            cv_accuracy_sd=float(np.std(accuracy, ddof=1)),
            cv_log_loss_mean=float(np.mean(loss)),
            cv_mse_mean=float(np.mean(mse)),
        )
    row["converged"] = bool(converged)
    return row


def probe_layers(
    train_features: Mapping[int, np.ndarray],
    train_labels: np.ndarray,
    test_features: Mapping[int, np.ndarray],
    test_labels: np.ndarray,
    *,
    n_classes: int,
    cv: int | None = None,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = DEFAULT_MAX_ITER,
    on_layer: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """One row per layer: held-out accuracy/log_loss/mse, the same on train (``train_*``), optional CV.

    Probes are fit on the train features only. With ``cv`` = K, a stratified K-fold on the train split
    adds ``cv_accuracy_mean`` ± ``cv_accuracy_sd`` (sample sd over folds), ``cv_log_loss_mean`` and
    ``cv_mse_mean``. ``converged`` is False if any lbfgs fit hit ``max_iter``.
    """
    n_classes = _check_n_classes(n_classes)
    if not train_features:
        raise PerceptAlignError("no layers to probe: pass at least one layer's features.")
    if set(train_features) != set(test_features):
        raise PerceptAlignError(
            f"train and test features cover different layers ({sorted(train_features)} vs "
            f"{sorted(test_features)}); extract the same layers for both splits."
        )
    first = next(iter(train_features))
    y_train = _check_labels(train_labels, n_classes, len(np.asarray(train_features[first])), "train labels")
    y_test = _check_labels(test_labels, n_classes, len(np.asarray(test_features[first])), "test labels")
    cv = _check_cv(cv, y_train)
    rows = []
    for layer in sorted(train_features):
        X_train = _check_features(train_features[layer], f"train features of layer {layer}")
        X_test = _check_features(test_features[layer], f"test features of layer {layer}")
        if X_train.shape[1] != X_test.shape[1] or len(X_train) != len(y_train) or len(X_test) != len(y_test):
            raise PerceptAlignError(
                f"layer {layer}: train features {X_train.shape} / test features {X_test.shape} do not match "
                f"the labels ({len(y_train)}, {len(y_test)}) or each other's width."
            )
        row = probe_layer(
            X_train, y_train, X_test, y_test, n_classes=n_classes, cv=cv, seed=seed, C=C, max_iter=max_iter
        )
        rows.append({"layer": int(layer), **row, "n_train": len(y_train), "n_test": len(y_test)})
        if on_layer:
            on_layer(int(layer))
    columns = ["layer", "accuracy", "log_loss", "mse", "train_accuracy", "train_log_loss", "train_mse"]
    if cv is not None:
        columns += ["cv_accuracy_mean", "cv_accuracy_sd", "cv_log_loss_mean", "cv_mse_mean"]
    columns += ["n_train", "n_test", "converged"]
    return pd.DataFrame(rows, columns=columns)


def best_layer(table: pd.DataFrame) -> int:
    """Layer with the highest held-out accuracy (ties: lower held-out log-loss, then the earlier layer)."""
    ordered = table.sort_values(["accuracy", "log_loss", "layer"], ascending=[False, True, True])
    return int(ordered["layer"].iloc[0])


# --------------------------------------------------------------------------------------------------
# the `ntps probe` job


@dataclass
class ProbeConfig:
    """Everything that defines one `ntps probe` run (the CLI fills it from its options).

    Evaluation data: ``eval_split`` if given (it must exist and differ from ``split``); else the
    dataset's "test" split when it has one; else — and always when ``test_fraction`` is given — a
    stratified ``test_fraction`` of the train split held out by content hash (seed 42, ntps.md §5), so a
    single local file without a ``split`` column still gets an honest held-out score.
    """

    model: str
    dataset: str
    out: Path
    split: str = "train"
    eval_split: str | None = None
    test_fraction: float | None = None
    layers: list[int] | None = None
    max_samples: int | None = None
    max_length: int = 512
    token_budget: int = 2048
    dtype: str = "float32"
    cv: int | None = None
    C: float = 1.0
    max_iter: int = DEFAULT_MAX_ITER
    text_column: str | None = None
    label_column: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    ntps_fraction: float = 0.5
    overwrite: bool = False  # recompute the feature caches in ``out`` instead of reusing or refusing them


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


def _validate_config(config: ProbeConfig) -> None:
    if config.test_fraction is not None:
        if not 0 < config.test_fraction < 1:
            raise PerceptAlignError(
                f"--test-fraction must lie strictly between 0 and 1 (got {config.test_fraction})."
            )
        if config.eval_split is not None:
            raise PerceptAlignError(
                "--eval-split and --test-fraction both choose the evaluation data: pass only one "
                "(--test-fraction holds out part of --split)."
            )
    if config.eval_split is not None and config.eval_split == config.split:
        raise PerceptAlignError(
            f"--eval-split {config.eval_split!r} equals --split: probes scored on their own training data "
            "saturate (train scores are reported anyway). Choose another split, or --test-fraction 0.3."
        )
    if not 0 < config.ntps_fraction <= 1:
        raise PerceptAlignError(f"--ntps-fraction must lie in (0, 1] (got {config.ntps_fraction}).")
    if config.C <= 0 or config.max_iter < 1:
        raise PerceptAlignError(
            f"C must be > 0 and max_iter ≥ 1 (got C={config.C}, max_iter={config.max_iter})."
        )


def _data_key(ds: TextDataset) -> list[tuple[str, int]]:
    return sorted(zip(ds.texts, ds.labels.tolist(), strict=True))


def _held_out(train: TextDataset, fraction: float, reason: str) -> _Evaluation:
    is_test = stratified_split(train.texts, train.labels, test_fraction=fraction, seed=SPLIT_SEED)
    fit_rows, test_rows = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    if len(test_rows) == 0 or len(np.unique(train.labels[fit_rows])) < 2:
        raise PerceptAlignError(
            f"holding out {fraction:.0%} of {len(train)} {train.split!r} texts leaves {len(test_rows)} "
            f"test and {len(fit_rows)} training texts with {len(np.unique(train.labels[fit_rows]))} "
            "class(es); use more data (--max-samples) or another --test-fraction."
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
        return _held_out(train, config.test_fraction, "--test-fraction given")
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
                f"eval split {name!r} is not available: {exc} Pass an existing --eval-split, or "
                "--test-fraction 0.3 to hold out part of the train split."
            ) from exc
        status(f"no {name!r} split ({str(exc)[:120]}…); holding out {TEST_FRACTION:.0%} of {train.split!r}")
        return _held_out(train, TEST_FRACTION, f"dataset has no usable {name!r} split")
    if _data_key(test) == _data_key(train):
        # A local file without a `split` column is used whole for every split name.
        if explicit:
            raise PerceptAlignError(
                f"eval split {name!r} holds exactly the same texts as split {train.split!r} (a local file "
                "without a 'split' column is used whole for every split): add a 'split' column, or pass "
                "--test-fraction 0.3 to hold out part of it."
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
    from perceptalign.ntps.jobs import check_job_inputs, load_job_dataset, load_job_model
    from perceptalign.ntps.score import resolve_layers

    status = on_status or (lambda _msg: None)
    _validate_config(config)
    out = check_job_inputs(config)
    train = load_job_dataset(config, status)
    evaluation = _resolve_evaluation(config, train, status)
    _check_cv(config.cv, train.labels[evaluation.train_rows])
    loaded = load_job_model(config, status)
    layers = resolve_layers(config.layers, loaded.n_hidden_states)
    cache = FeatureCache(out)
    splits = [train] + ([evaluation.test] if evaluation.test is not None else [])
    # Check every cache (and refuse mismatching ones) before any forward pass, so the bar knows its total.
    pending = 0
    for ds in splits:
        if cache.exists(ds.split) and not config.overwrite:
            cache.load(ds.split, feature_metadata(loaded, ds, layers, config.max_length, config.max_samples))
        else:
            pending += len(ds)
    if on_start and pending:
        on_start(pending, 0)
    extracted = {
        ds.split: cache.load_or_extract(
            loaded,
            ds,
            layers,
            max_length=config.max_length,
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
        "max_length": config.max_length,
        "dtype": config.dtype,
        "layers": [int(x) for x in table["layer"]],
        "cv": config.cv,
        "seed": config.seed,
        "best_layer": best_layer(table),
        "columns": list(table.columns),
        "rows": _records(table),
        "ntps_overlay": overlay,
        "features": {split: str(item.path) for split, item in extracted.items()},
        "timing": {"features": timing, "probe_seconds": round(probe_seconds, 3)},
        "definitions": {
            "accuracy/log_loss": f"standardize + L2 logistic regression (C = {config.C}, lbfgs), fit on the "
            "train rows, scored on the evaluation rows; log-loss over all classes",
            "mse": "standardize + least squares on one-hot targets; mean over samples and classes",
            "train_*": "the same probes scored on their own training rows (the published, saturating "
            "protocol)",
            "cv_*": "stratified K-fold on the train rows: mean (and sample sd) over folds",
        },
    }
    write_json_atomic(out / RESULTS_FILE, results)
    write_text_atomic(out / TABLE_FILE, table.to_csv(index=False))
    from perceptalign.ntps.figures import save_figure

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    layers = table["layer"].to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
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


__all__ = [
    "LogisticProbe",
    "OneHotRegressionProbe",
    "ProbeConfig",
    "ProbeResult",
    "best_layer",
    "probe_figure",
    "probe_layer",
    "probe_layers",
    "run_probe",
]

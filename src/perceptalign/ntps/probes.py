"""Linear probes on mean-pooled features, scored on held-out data (the `ntps probe` job is in
:mod:`perceptalign.ntps.jobs.probe`).

NTPS is validated against how well a linear read-out of a layer's sentence vectors performs
(docs/ntps.md, "The paper's protocol"):
(a) standardize + L2 logistic regression (C = 1) → accuracy and log-loss, (b) standardize + least squares on
one-hot targets → MSE. The published probes were scored on the data they were fit on, which saturates as
soon as d ≳ n (any labelling of n points in general position is linearly separable in d ≥ n dimensions).
Here every probe is fit on the train split and scored on a held-out split; the train-set scores are
reported beside them (``train_*``) so that the saturation stays visible.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
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
)

DEFAULT_MAX_ITER = 2000
DEFAULT_TOL = 1e-4
DEFAULT_SOLVER = "lbfgs"


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
    """Standardize + multinomial L2 logistic regression, over a fixed label space of ``n_classes``.

    ``predict_proba`` always has ``n_classes`` columns (zero for classes absent from the training data), so
    log-loss stays defined and comparable when a split lacks a class. ``solver`` is lbfgs by default; the
    paper's recipe is saga with tol 0.01 and max_iter 1000 (:mod:`perceptalign.ntps.recipes`).
    """

    def __init__(
        self,
        n_classes: int = 2,
        C: float = 1.0,
        max_iter: int = DEFAULT_MAX_ITER,
        tol: float = DEFAULT_TOL,
        solver: str = DEFAULT_SOLVER,
    ):
        self.n_classes = n_classes
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver

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
                C=self.C, solver=self.solver, max_iter=self.max_iter, tol=self.tol
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


def check_cv(cv: int | None, y_train: np.ndarray) -> int | None:
    if cv is None:
        return None
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise PerceptAlignError(
            f"`cv` must be an integer ≥ 2 folds (got {cv!r}); omit it to skip cross-validation."
        )
    classes, counts = np.unique(y_train, return_counts=True)
    if counts.min() < cv:
        worst = int(classes[np.argmin(counts)])
        raise PerceptAlignError(
            f"`cv` {cv} needs at least {cv} training samples of every class, but class {worst} has only "
            f"{int(counts.min())}: lower `cv` to ≤ {int(counts.min())} (it must stay ≥ 2) or use more data "
            "(`max_samples`)."
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
    tol: float = DEFAULT_TOL,
    solver: str = DEFAULT_SOLVER,
) -> dict[str, Any]:
    """Held-out, train and (optionally) cross-validated probe scores of one layer."""
    settings = {"C": C, "max_iter": max_iter, "tol": tol, "solver": solver}
    logistic = LogisticProbe(n_classes, **settings).fit(X_train, y_train)
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
            fold = LogisticProbe(n_classes, **settings).fit(X_train[fit_rows], y_train[fit_rows])
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
    tol: float = DEFAULT_TOL,
    solver: str = DEFAULT_SOLVER,
) -> pd.DataFrame:
    """One row per layer: held-out accuracy/log_loss/mse, the same on train (``train_*``), optional CV.

    Probes are fit on the train features only. With ``cv`` = K, a stratified K-fold on the train split
    adds ``cv_accuracy_mean`` ± ``cv_accuracy_sd`` (sample sd over folds), ``cv_log_loss_mean`` and
    ``cv_mse_mean``. ``converged`` is False if any logistic fit hit ``max_iter``.
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
    cv = check_cv(cv, y_train)
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
            X_train,
            y_train,
            X_test,
            y_test,
            n_classes=n_classes,
            cv=cv,
            seed=seed,
            C=C,
            max_iter=max_iter,
            tol=tol,
            solver=solver,
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


__all__ = [
    "DEFAULT_MAX_ITER",
    "LogisticProbe",
    "OneHotRegressionProbe",
    "best_layer",
    "probe_layer",
    "probe_layers",
]

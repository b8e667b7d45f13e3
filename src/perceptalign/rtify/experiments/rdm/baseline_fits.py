"""The baselines fitted on the same trials (entropy threshold, evidential, DDM) and the evaluation."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from perceptalign.callbacks import PhaseStatusCallback
from perceptalign.rtify.estimators import (
    DDMEstimator,
    DDMEstimatorConfig,
    EntropyThresholdConfig,
    EntropyThresholdEstimator,
    EvidentialConfig,
    EvidentialEstimator,
    NetworkTrials,
    RTEstimator,
)
from perceptalign.rtify.experiments.rdm.config import FitConfig
from perceptalign.rtify.experiments.rdm.human_fit import HumanTargets, table_loss
from perceptalign.rtify.metrics import fit_quality, summarize_fit
from perceptalign.rtify.objective import RTLoss
from perceptalign.rtify.trials import default_t0_max


def fit_baselines(
    network: NetworkTrials,
    human_train: pd.DataFrame,
    *,
    loss: RTLoss,
    n_train: int,
    seed: int,
    t0_max: float | None = None,
    reuse: Mapping[str, RTEstimator] | None = None,
    progress: PhaseStatusCallback | None = None,
) -> tuple[dict[str, RTEstimator], dict[str, float]]:
    """The baselines of ``rtify fit`` as fitted estimators, in report order: entropy threshold and
    evidential RT on the frozen network's outputs (``n_train`` simulated trials per condition, the head's
    training trials), the strong (BIC-selected) DDM and the simple DDM, each fitted on the human training
    trials in the one t₀ box ``t0_max`` (default: min(0.8 s, median training RT)).

    The entropy and evidential thresholds are grid-searched on the binned form of the shared objective
    ``loss`` (histogram MSE for ``mse``, binned W1 otherwise); the DDMs are fitted by likelihood, once for
    both (the simple DDM is a variant of the strong one's selection), or taken from ``reuse`` (fits of an
    earlier seed on the same trials, which do not depend on the seed). Every estimator simulates any
    coherence, including ones without training trials (the thresholds are shared by all coherences, the
    DDM's drift is k·coherence); human RTs beyond a method's window are counted, never dropped (see
    :class:`perceptalign.rtify.estimators.DDMEstimator`). Also returns each fit's seconds.
    """
    t0_max = default_t0_max(human_train) if t0_max is None else t0_max
    reuse = reuse or {}
    out: dict[str, RTEstimator] = {}
    seconds: dict[str, float] = {}
    steps = ["entropy", "evidential", "ddm"]

    def tick(i: int, name: str) -> None:
        if progress is not None:
            progress("baselines", i, len(steps), name)

    tick(0, "entropy")
    settings = {"loss": loss, "t0_max": t0_max, "n_train": n_train, "seed": seed}
    start = time.perf_counter()
    out["entropy"] = EntropyThresholdEstimator(EntropyThresholdConfig(**settings), network).fit(human_train)
    seconds["entropy"] = time.perf_counter() - start
    tick(1, "evidential")
    start = time.perf_counter()
    out["evidential"] = EvidentialEstimator(EvidentialConfig(**settings), network).fit(human_train)
    seconds["evidential"] = time.perf_counter() - start
    tick(2, "ddm")
    start = time.perf_counter()
    if "ddm" in reuse and "ddm-simple" in reuse:
        out["ddm"], out["ddm-simple"] = reuse["ddm"], reuse["ddm-simple"]
    else:
        strong = DDMEstimator(DDMEstimatorConfig("strong", t0_max=t0_max, seed=seed)).fit(human_train)
        out["ddm"], out["ddm-simple"] = strong, strong.simple()
    seconds["ddm"], seconds["ddm-simple"] = time.perf_counter() - start, 0.0  # one fit for both DDMs
    tick(3, "done")
    return out, seconds


def json_records(table: pd.DataFrame | None) -> list[dict[str, Any]]:
    """JSON-ready rows (NaN → None); no table, no rows."""
    if table is None:
        return []
    rows = table.to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def evaluate_method(
    table: pd.DataFrame, human_test: pd.DataFrame, targets_test: HumanTargets, config: FitConfig
) -> dict[str, Any]:
    """fit_quality per condition, its summary, the objective on the test split, and the no-decision rate."""
    quality = fit_quality(table, human_test)
    decided = table["decided"].to_numpy(bool) if "decided" in table.columns else np.ones(len(table), bool)
    return {
        "per_condition": json_records(quality),
        "summary": summarize_fit(quality),
        "test_loss": table_loss(table, targets_test, config),
        "no_decision_rate": float(1.0 - decided.mean()),
    }

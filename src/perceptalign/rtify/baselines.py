"""Reaction-time baselines that RTify is compared with, all on the same footing.

Each baseline is fitted on the human *training* trials and produces a model trials table (see
:mod:`perceptalign.rtify.trials`) for any condition, which :func:`perceptalign.rtify.metrics.fit_quality`
then compares with the human *test* trials:

- :class:`EntropyThresholdRT` — a network's softmax trajectory decides when its entropy first drops below
  a threshold θ_H (fitted to the human RT histograms, with a non-decision time t₀);
- :class:`EvidentialRT` — the evidential-uncertainty metric of Goetschalckx et al. (2023), the area under
  the uncertainty curve, mapped to seconds by a fitted increasing affine map;
- :class:`DDMBaseline` — a drift-diffusion model (drift ∝ condition strength, bound, non-decision time)
  fitted by maximum likelihood with PyDDM, simulated for the conditions asked.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.optimize import lsq_linear

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.trials import conditions as table_conditions
from perceptalign.rtify.trials import validate_trials

Objective = Literal["hist_mse", "wasserstein"]


def _condition_key(value: Any) -> float | str:
    """Conditions compare as floats when numeric (as in validated trial tables), else as strings."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _trials_table(cond: Any, rt_s: np.ndarray, correct: np.ndarray, decided: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "condition": np.full(len(rt_s), _condition_key(cond), dtype=object),
            "rt_s": np.asarray(rt_s, dtype=float),
            "correct": np.asarray(correct, dtype=bool),
            "decided": np.asarray(decided, dtype=bool),
        }
    )


def _concat_tables(tables: list[pd.DataFrame]) -> pd.DataFrame:
    return validate_trials(pd.concat(tables, ignore_index=True), name="baseline trials")


# --------------------------------------------------------------------------------------------------------
# Shared fitting objective: binned signed-RT histograms, cheap enough to evaluate on a parameter grid.
# --------------------------------------------------------------------------------------------------------


class _BinnedObjective:
    """Distance between model signed RTs and one condition's human histogram on fixed bins.

    ``hist_mse`` is the published RTify measure (MSE of histograms normalised by trial counts);
    ``wasserstein`` is W1 between the binned distributions, Σ|F_model − F_human|·Δ over the window, which
    equals the exact W1 up to the bin width Δ for trials inside the window. Model trials that are
    undecided or outside [lo, hi] contribute no mass, so the objective penalises them.
    """

    def __init__(
        self, human: tuple[np.ndarray, int], objective: Objective, n_bins: int, lo: float, hi: float
    ):
        self.n_bins, self.lo, self.width = n_bins, lo, (hi - lo) / n_bins
        self.objective = objective
        self.human = self.hist(*human)
        self.human_cdf = np.cumsum(self.human)

    def hist(self, signed: np.ndarray, n_total: int) -> np.ndarray:
        idx = np.floor((signed - self.lo) / self.width).astype(np.int64)
        idx = idx[(idx >= 0) & (idx < self.n_bins)]
        return np.bincount(idx, minlength=self.n_bins) / max(n_total, 1)

    def __call__(self, signed: np.ndarray, n_total: int) -> float:
        model = self.hist(signed, n_total)
        if self.objective == "hist_mse":
            return float(np.mean((model - self.human) ** 2))
        return float(np.sum(np.abs(np.cumsum(model) - self.human_cdf)) * self.width)


def _check_objective(objective: str) -> None:
    if objective not in ("hist_mse", "wasserstein"):
        raise PerceptAlignError(f"objective must be 'hist_mse' or 'wasserstein', got {objective!r}.")


def _human_by_condition(human: pd.DataFrame, wanted: Sequence[Any]) -> dict[Any, tuple[np.ndarray, int]]:
    """(signed RTs of responded trials, number of trials) per wanted condition; error if one is absent.

    A reference table may itself carry a ``decided`` column (e.g. synthetic data from a model): its
    undecided trials count in the normaliser exactly as in :func:`perceptalign.rtify.metrics.fit_quality`.
    """
    human = validate_trials(human, required_conditions=list(wanted), name="human training trials")
    signed = np.where(human["correct"].to_numpy(), human["rt_s"].to_numpy(), -human["rt_s"].to_numpy())
    decided = (
        human["decided"].to_numpy(dtype=bool) if "decided" in human.columns else np.ones(len(human), bool)
    )
    cond = human["condition"].to_numpy()
    out = {c: (signed[(cond == c) & decided], int((cond == c).sum())) for c in wanted}
    empty = [c for c, (values, _) in out.items() if len(values) == 0]
    if empty:
        raise PerceptAlignError(
            f"human training trials: no responded (decided) trials in condition(s) {empty}."
        )
    return out


# --------------------------------------------------------------------------------------------------------
# Entropy threshold.
# --------------------------------------------------------------------------------------------------------


def softmax_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis, with 0·log 0 = 0."""
    p = np.asarray(probs, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=-1)


def _check_probs(probs: Any, where: str) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 3 or min(p.shape) == 0:
        raise PerceptAlignError(
            f"{where}: expected class probabilities of shape (trials N, time steps T, classes C), got shape "
            f"{p.shape}."
        )
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(-1), 1.0, atol=1e-4):
        raise PerceptAlignError(
            f"{where}: probabilities must be finite, non-negative and sum to 1 over classes (last axis); "
            "pass softmax(logits, axis=-1), not raw logits."
        )
    return p


def _check_labels(labels: Any, n: int, n_classes: int, where: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any() or (y >= n_classes).any():
        raise PerceptAlignError(
            f"{where}: labels must be {n} integers in [0, {n_classes}) (the correct class of each trial), "
            "got "
            f"shape {y.shape} dtype {y.dtype}."
        )
    return y.astype(np.int64)


def _paired_inputs(
    arrays_by_condition: Mapping[Any, Any], labels_by_condition: Mapping[Any, Any], check: Any, kind: str
) -> dict[float | str, tuple[np.ndarray, np.ndarray]]:
    """Validate {condition: array} and {condition: labels} mappings that must have the same conditions."""
    if not isinstance(arrays_by_condition, Mapping) or not arrays_by_condition:
        raise PerceptAlignError(f"{kind}: expected a non-empty mapping condition -> array (N, T, C).")
    arrays = {_condition_key(k): v for k, v in arrays_by_condition.items()}
    labels = {_condition_key(k): v for k, v in labels_by_condition.items()}
    if set(arrays) != set(labels):
        raise PerceptAlignError(
            f"{kind}: the label mapping must have the same conditions as the {kind} mapping; "
            f"{kind} has {sorted(arrays, key=str)}, labels have {sorted(labels, key=str)}."
        )
    out = {}
    for cond, array in arrays.items():
        a = check(array, f"{kind} for condition {cond!r}")
        out[cond] = (a, _check_labels(labels[cond], a.shape[0], a.shape[2], f"labels for condition {cond!r}"))
    return out


def entropy_crossing_steps(entropy: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """First step t with entropy[n, t] < θ for each trial and threshold, T where it never happens.

    Uses the running minimum m_t = min_{s≤t} H_s: the first t with H_t < θ is the number of steps whose
    running minimum is still ≥ θ, so all thresholds are answered by one sorted search per trial.
    """
    h = np.asarray(entropy, dtype=float)
    running_min = np.minimum.accumulate(h, axis=1)
    negated = -running_min  # non-decreasing along time
    thresholds = np.asarray(thresholds, dtype=float)
    steps = np.empty((h.shape[0], len(thresholds)), dtype=np.int64)
    for n in range(h.shape[0]):
        steps[n] = np.searchsorted(negated[n], -thresholds, side="right")
    return steps


class EntropyThresholdRT:
    """RT = first time step at which the softmax entropy falls below θ_H, times ``dt``, plus t₀.

    Trials whose entropy never falls below θ_H get step T−1 and ``decided=False``; the choice is the
    argmax class at the decision step. ``fit`` chooses θ_H (and t₀ unless ``fit_t0=False``) minimising the
    binned distance (``objective``: histogram MSE, the RTify loss, or binned W1) summed over conditions
    between the model's and the humans' signed-RT distributions. Search: a coarse grid of θ_H at
    ``n_theta`` quantiles of the training entropies (the objective only changes where θ_H passes an
    observed entropy) × ``n_t0`` values of t₀ in [0, t0_max] (default: the fastest human RT, since no RT
    can be faster than t₀), then a refinement grid (``n_refine``² points spanning one coarse step either
    side) around each of the ``n_starts`` best coarse points; the best refined point wins.
    ``dt`` (seconds per time step) is given, not fitted: it is a property of the stimulus/network clock.
    """

    def __init__(
        self,
        dt: float,
        *,
        objective: Objective = "hist_mse",
        fit_t0: bool = True,
        t0: float = 0.0,
        t0_max: float | None = None,
        n_theta: int = 96,
        n_t0: int = 41,
        n_refine: int = 21,
        n_starts: int = 3,
        n_bins: int = 500,
        lo: float = -2.5,
        hi: float = 2.5,
    ):
        if not dt > 0:
            raise PerceptAlignError(f"dt (seconds per time step) must be > 0, got {dt}.")
        if t0 < 0:
            raise PerceptAlignError(f"t0 (non-decision time) must be >= 0, got {t0}.")
        _check_objective(objective)
        if min(n_theta, n_t0, n_refine) < 2:
            raise PerceptAlignError("n_theta, n_t0 and n_refine must be >= 2 grid points.")
        self.dt, self.objective, self.fit_t0, self.t0, self.t0_max = dt, objective, fit_t0, t0, t0_max
        self.n_theta, self.n_t0, self.n_refine = n_theta, n_t0, n_refine
        if n_starts < 1:
            raise PerceptAlignError(f"n_starts must be >= 1, got {n_starts}.")
        self.n_starts = n_starts
        self.n_bins, self.lo, self.hi = n_bins, lo, hi

    def _loss_grid(
        self,
        data: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, _BinnedObjective]],
        thetas: np.ndarray,
        t0s: np.ndarray,
    ) -> np.ndarray:
        """Summed objective for every (θ, t₀) pair: shape (len(thetas), len(t0s))."""
        loss = np.zeros((len(thetas), len(t0s)))
        for entropy, correct_at, _, n_steps, objective in data:
            steps = entropy_crossing_steps(entropy, thetas)
            decided = steps < n_steps
            steps = np.minimum(steps, n_steps - 1)
            correct = np.take_along_axis(correct_at, steps, axis=1)
            for g in range(len(thetas)):
                rt0 = steps[decided[:, g], g] * self.dt
                sign = np.where(correct[decided[:, g], g], 1.0, -1.0)
                for j, t0 in enumerate(t0s):
                    loss[g, j] += objective(sign * (rt0 + t0), len(entropy))
        return loss

    def fit(
        self,
        probs_by_condition: Mapping[Any, Any],
        human_train: pd.DataFrame,
        labels_by_condition: Mapping[Any, Any],
    ) -> EntropyThresholdRT:
        """Fit θ_H (and t₀) to the human training trials of the conditions in ``probs_by_condition``."""
        data, human = self._prepare(probs_by_condition, human_train, labels_by_condition)
        pooled = np.concatenate([entropy.ravel() for entropy, *_ in data])
        # Just above each quantile so that θ = q makes H = q count as "below"; plus one above the maximum.
        thetas = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, self.n_theta)))
        thetas = np.nextafter(thetas, np.inf)
        if self.fit_t0:
            fastest = min(float(np.abs(v).min()) for v, _ in human.values() if len(v))
            t0_max = fastest if self.t0_max is None else self.t0_max
            t0s = np.linspace(0.0, max(t0_max, 0.0), self.n_t0)
        else:
            t0s = np.array([self.t0])
        coarse = self._loss_grid(data, thetas, t0s)
        best = (math.inf, math.nan, math.nan)
        # Refine around the n_starts best coarse cells: the binned objective is rugged, and its best coarse
        # cell is not always the basin of the best fine point.
        for flat in np.argsort(coarse, axis=None)[: self.n_starts]:
            g, j = np.unravel_index(flat, coarse.shape)
            fine_thetas = np.unique(
                np.concatenate(
                    [
                        np.linspace(
                            thetas[max(g - 1, 0)], thetas[min(g + 1, len(thetas) - 1)], self.n_refine
                        ),
                        [thetas[g]],
                    ]
                )
            )
            if len(t0s) > 1:
                step = t0s[1] - t0s[0]
                fine_t0s = np.unique(
                    np.concatenate(
                        [np.clip(np.linspace(t0s[j] - step, t0s[j] + step, self.n_refine), 0, None), [t0s[j]]]
                    )
                )
            else:
                fine_t0s = t0s
            fine = self._loss_grid(data, fine_thetas, fine_t0s)
            fg, fj = np.unravel_index(np.argmin(fine), fine.shape)
            if fine[fg, fj] < best[0]:
                best = (float(fine[fg, fj]), float(fine_thetas[fg]), float(fine_t0s[fj]))
        self.loss_, self.theta_, self.t0_ = best
        self.coarse_loss_ = float(coarse.min())
        self.conditions_ = list(human)
        return self

    def _prepare(
        self,
        probs_by_condition: Mapping[Any, Any],
        human_train: pd.DataFrame,
        labels_by_condition: Mapping[Any, Any],
    ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, int, _BinnedObjective]], dict]:
        inputs = _paired_inputs(probs_by_condition, labels_by_condition, _check_probs, "probabilities")
        human = _human_by_condition(human_train, list(inputs))
        data = []
        for cond, (probs, labels) in inputs.items():
            entropy = softmax_entropy(probs)
            correct_at = probs.argmax(-1) == labels[:, None]
            objective = _BinnedObjective(human[cond], self.objective, self.n_bins, self.lo, self.hi)
            data.append((entropy, correct_at, labels, probs.shape[1], objective))
        return data, human

    def objective_value(
        self,
        probs_by_condition: Mapping[Any, Any],
        human: pd.DataFrame,
        labels_by_condition: Mapping[Any, Any],
        *,
        theta: float | None = None,
        t0: float | None = None,
    ) -> float:
        """The fitting objective (summed over conditions) at given θ_H, t₀ (default: the fitted ones)."""
        theta = self._fitted("theta_") if theta is None else theta
        t0 = self._fitted("t0_") if t0 is None else t0
        data, _ = self._prepare(probs_by_condition, human, labels_by_condition)
        return float(self._loss_grid(data, np.array([theta]), np.array([t0]))[0, 0])

    def decision_steps(
        self, probs: Any, theta: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(step, decided, choice) per trial for one array of probabilities (N, T, C)."""
        p = _check_probs(probs, "probabilities")
        theta = self._fitted("theta_") if theta is None else theta
        steps = entropy_crossing_steps(softmax_entropy(p), np.array([theta]))[:, 0]
        decided = steps < p.shape[1]
        steps = np.minimum(steps, p.shape[1] - 1)
        choice = p[np.arange(p.shape[0]), steps].argmax(-1)
        return steps, decided, choice

    def predict(
        self, probs_by_condition: Mapping[Any, Any], labels_by_condition: Mapping[Any, Any]
    ) -> pd.DataFrame:
        """Model trials table (with ``decided``) for every condition in ``probs_by_condition``."""
        theta, t0 = self._fitted("theta_"), self._fitted("t0_")
        inputs = _paired_inputs(probs_by_condition, labels_by_condition, _check_probs, "probabilities")
        tables = []
        for cond, (probs, labels) in inputs.items():
            steps, decided, choice = self.decision_steps(probs, theta)
            tables.append(_trials_table(cond, steps * self.dt + t0, choice == labels, decided))
        return _concat_tables(tables)

    def _fitted(self, attr: str) -> float:
        if not hasattr(self, attr):
            raise PerceptAlignError(f"{type(self).__name__} is not fitted yet: call fit() first.")
        return float(getattr(self, attr))


# --------------------------------------------------------------------------------------------------------
# Evidential uncertainty (Goetschalckx et al. 2023).
# --------------------------------------------------------------------------------------------------------


def _check_logits(logits: Any, where: str) -> np.ndarray:
    z = np.asarray(logits, dtype=float)
    if z.ndim != 3 or min(z.shape) == 0:
        raise PerceptAlignError(
            f"{where}: expected logits of shape (trials N, time steps T, classes C), got shape {z.shape}."
        )
    if not np.isfinite(z).all():
        raise PerceptAlignError(f"{where}: logits contain NaN or infinite values.")
    return z


def evidential_uncertainty(logits: Any) -> np.ndarray:
    """Uncertainty u_t = K / Σ_k α_k with α = exp(clip(z/10, −10, 10)) + 1, per trial and time step (N, T)."""
    z = _check_logits(logits, "logits")
    alpha = np.exp(np.clip(z / 10.0, -10.0, 10.0)) + 1.0
    return z.shape[-1] / alpha.sum(axis=-1)


def evidential_uncertainty_rt(logits: Any, *, dt: float = 1.0) -> np.ndarray:
    """Area under the uncertainty curve over time (trapezoid rule, step ``dt``): one number per trial.

    Larger means the network stayed uncertain for longer; in the original paper it is a *ranking*
    metric (correlated with RTs), not a time in seconds.
    """
    if not dt > 0:
        raise PerceptAlignError(f"dt must be > 0, got {dt}.")
    u = evidential_uncertainty(logits)
    if u.shape[1] == 1:
        return np.zeros(u.shape[0])
    return np.trapezoid(u, dx=dt, axis=1)


class EvidentialRT:
    """Evidential-uncertainty RTs mapped to seconds: RT = scale · metric + t₀ with scale > 0, t₀ ≥ 0.

    The metric has no unit, so a map to seconds must be fitted. One increasing affine map is shared by
    all conditions (a separate map per condition would fit each condition's RTs regardless of the
    network): it is fitted by quantile matching, i.e. least squares between the human RT quantiles and
    the affinely mapped metric quantiles (an increasing affine map commutes with quantiles) at ``qs`` over
    all conditions, with bounds scale ≥ 0, t₀ ≥ 0. The shape of each RT distribution and all differences
    between conditions therefore come from the network. The choice is the argmax class at the last step.
    """

    def __init__(self, *, qs: Sequence[float] = tuple(np.linspace(0.1, 0.9, 9)), dt: float = 1.0):
        qs = tuple(float(q) for q in qs)
        if len(qs) < 2 or any(not 0 <= q <= 1 for q in qs):
            raise PerceptAlignError(f"qs must hold at least two quantile levels in [0, 1], got {qs}.")
        self.qs, self.dt = qs, dt

    def fit(
        self,
        logits_by_condition: Mapping[Any, Any],
        human_train: pd.DataFrame,
        labels_by_condition: Mapping[Any, Any],
    ) -> EvidentialRT:
        inputs = _paired_inputs(logits_by_condition, labels_by_condition, _check_logits, "logits")
        human = _human_by_condition(human_train, list(inputs))
        design, target = [], []
        for cond, (logits, _) in inputs.items():
            metric_q = np.quantile(evidential_uncertainty_rt(logits, dt=self.dt), self.qs)
            human_q = np.quantile(np.abs(human[cond][0]), self.qs)
            design.append(np.column_stack([metric_q, np.ones(len(self.qs))]))
            target.append(human_q)
        a, b = np.vstack(design), np.concatenate(target)
        result = lsq_linear(a, b, bounds=([0.0, 0.0], [np.inf, np.inf]))
        self.scale_, self.t0_ = float(result.x[0]), float(result.x[1])
        self.rmse_ = float(np.sqrt(np.mean((a @ result.x - b) ** 2)))
        self.conditions_ = list(inputs)
        return self

    def predict(
        self, logits_by_condition: Mapping[Any, Any], labels_by_condition: Mapping[Any, Any]
    ) -> pd.DataFrame:
        if not hasattr(self, "scale_"):
            raise PerceptAlignError("EvidentialRT is not fitted yet: call fit() first.")
        inputs = _paired_inputs(logits_by_condition, labels_by_condition, _check_logits, "logits")
        tables = []
        for cond, (logits, labels) in inputs.items():
            rt = self.scale_ * evidential_uncertainty_rt(logits, dt=self.dt) + self.t0_
            # A zero metric with t0 = 0 would be a zero RT; keep RTs strictly positive (1 microsecond).
            rt = np.maximum(rt, 1e-6)
            choice = logits[:, -1].argmax(-1)
            tables.append(_trials_table(cond, rt, choice == labels, np.ones(len(rt), dtype=bool)))
        return _concat_tables(tables)


# --------------------------------------------------------------------------------------------------------
# Drift-diffusion model (PyDDM).
# --------------------------------------------------------------------------------------------------------


def _import_pyddm() -> Any:
    try:
        import pyddm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PerceptAlignError(
            "the drift-diffusion baseline needs PyDDM: pip install perceptalign[ddm] (or pip install pyddm)."
        ) from exc
    return pyddm


def _conditional_likelihood_loss(pyddm: Any) -> type:
    """PyDDM loss: negative log-likelihood of the observed trials *given* a response before T_dur.

    PyDDM's likelihood charges the probability of no decision within T_dur to every data set, which is
    right when timed-out trials are recorded as undecided, but biases the fit (lower bound, longer
    non-decision time) when, as in the human RDM data (all RTs < 2.5 s), trials without a response in the
    window were never recorded. Dividing each density by P(response within T_dur) fixes that.
    """

    class LossConditionalLikelihood(pyddm.LossRobustLikelihood):
        name = "Negative log likelihood conditional on responding within T_dur"

        def loss(self, model: Any) -> float:
            solutions = self.cache_by_conditions(model)
            floor = self._robustness_param
            total = 0.0
            for key, solution in solutions.items():
                upper, lower, _ = self.hist_indexes[key]
                responded = max(float(solution.prob("_top") + solution.prob("_bottom")), floor)
                with np.errstate(divide="ignore"):
                    total += float(np.sum(np.log(solution.pdf("_top")[upper] + floor)))
                    total += float(np.sum(np.log(solution.pdf("_bottom")[lower] + floor)))
                total -= (len(upper) + len(lower)) * math.log(responded)
            return -total

    return LossConditionalLikelihood


@contextlib.contextmanager
def _quiet_pyddm() -> Iterator[None]:
    """PyDDM logs every fit evaluation and renormalisation at INFO/WARNING; library code stays silent."""
    logger = logging.getLogger("pyddm")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


class DDMBaseline:
    """Drift-diffusion model fitted by maximum likelihood (PyDDM) to per-condition human trials.

    Model: evidence x with dx = v dt + dW (noise σ = 1 fixes the scale), starting at 0, bounds ±B
    (constant, or B·exp(−τ t) with ``collapsing=True``), upper bound = correct. Drift v = k · condition
    (conditions must be numeric, e.g. coherence in %) or, with ``per_condition_drift=True``, one free
    drift per condition. Non-decision time t₀ shifts all RTs. A uniform lapse mixture of weight
    ``mixture_coef`` (PyDDM's default 0.02; 0 disables it) keeps the likelihood finite for stray fast or
    slow human trials. Parameters are fitted with PyDDM's differential evolution on the likelihood
    (``max_iter`` generations, seeded); the constant-bound model is solved analytically (a fit of the
    46,644 training trials takes seconds), the collapsing one numerically (much slower). With
    ``condition_on_response=True`` (default) the likelihood is conditional on a response within T_dur,
    as appropriate for data that only contain responses (human tables); ``False`` uses PyDDM's plain
    likelihood, which counts the missing mass against the model.

    Parameter ranges: k ∈ [0, drift_max / max|condition|], per-condition drifts ∈ [−drift_max/4,
    drift_max], B ∈ [0.2, 3], τ ∈ [0.01, 5] s⁻¹, t₀ ∈ [0, min(0.8, median human RT)].
    """

    def __init__(
        self,
        *,
        collapsing: bool = False,
        per_condition_drift: bool = False,
        mixture_coef: float = 0.02,
        dt: float = 0.005,
        dx: float = 0.005,
        T_dur: float = 2.5,
        drift_max: float = 20.0,
        max_iter: int = 100,
        seed: int = 0,
        condition_on_response: bool = True,
    ):
        if not 0 <= mixture_coef < 1:
            raise PerceptAlignError(f"mixture_coef must be in [0, 1), got {mixture_coef}.")
        if not (dt > 0 and dx > 0 and T_dur > dt):
            raise PerceptAlignError(
                f"need dt > 0, dx > 0 and T_dur > dt, got dt={dt}, dx={dx}, T_dur={T_dur}."
            )
        self.collapsing, self.per_condition_drift, self.mixture_coef = (
            collapsing,
            per_condition_drift,
            mixture_coef,
        )
        self.dt, self.dx, self.T_dur, self.drift_max = dt, dx, T_dur, drift_max
        self.max_iter, self.seed, self.condition_on_response = max_iter, seed, condition_on_response

    def _build(self, pyddm: Any, values: Mapping[str, Any], conds: list[float | str]) -> Any:
        """A PyDDM model whose entries are numbers or ``pyddm.Fittable`` ranges."""
        per_condition = self.per_condition_drift
        index = {c: i for i, c in enumerate(conds)}
        names = [f"drift_{i}" for i in range(len(conds))] if per_condition else ["k"]

        def get_drift(self: Any, conditions: Mapping[str, Any], **kwargs: Any) -> float:
            cond = _condition_key(conditions["condition"])
            if per_condition:
                return float(getattr(self, f"drift_{index[cond]}"))
            return float(self.k) * float(cond)

        drift_cls = type(
            "DriftFromCondition",
            (pyddm.Drift,),
            {
                "name": "per-condition drift" if per_condition else "k * condition",
                "required_parameters": names,
                "required_conditions": ["condition"],
                "get_drift": get_drift,
            },
        )
        drift = drift_cls(**{n: values[n] for n in names})
        if self.collapsing:
            bound = pyddm.BoundCollapsingExponential(B=values["B"], tau=values["tau"])
        else:
            bound = pyddm.BoundConstant(B=values["B"])
        overlays = [pyddm.OverlayNonDecision(nondectime=values["t0"])]
        if self.mixture_coef > 0:
            overlays.append(pyddm.OverlayUniformMixture(umixturecoef=self.mixture_coef))
        return pyddm.Model(
            name="perceptalign DDM baseline",
            drift=drift,
            noise=pyddm.NoiseConstant(noise=1.0),
            bound=bound,
            overlay=pyddm.OverlayChain(overlays=overlays),
            dx=self.dx,
            dt=self.dt,
            T_dur=self.T_dur,
        )

    def fit(self, human_train: pd.DataFrame) -> DDMBaseline:
        """Maximum-likelihood fit to the human training trials (all conditions at once)."""
        pyddm = _import_pyddm()
        human = validate_trials(human_train, name="human training trials")
        if "decided" in human.columns:
            human = human[human["decided"]]
        conds = table_conditions(human)
        if not self.per_condition_drift and any(isinstance(c, str) for c in conds):
            raise PerceptAlignError(
                f"drift = k * condition needs numeric conditions, got {conds}; use per_condition_drift=True."
            )
        if float(human["rt_s"].max()) >= self.T_dur:
            raise PerceptAlignError(
                f"human RTs reach {human['rt_s'].max():.3f} s but the model is simulated for "
                f"T_dur={self.T_dur} s; "
                "increase T_dur above the slowest RT."
            )
        fit_values: dict[str, Any] = {}
        if self.per_condition_drift:
            for i in range(len(conds)):
                fit_values[f"drift_{i}"] = pyddm.Fittable(minval=-self.drift_max / 4, maxval=self.drift_max)
        else:
            largest = max(abs(float(c)) for c in conds)
            if largest == 0:
                raise PerceptAlignError("all conditions are 0: drift = k * condition cannot be fitted.")
            fit_values["k"] = pyddm.Fittable(minval=0.0, maxval=self.drift_max / largest)
        fit_values["B"] = pyddm.Fittable(minval=0.2, maxval=3.0)
        if self.collapsing:
            fit_values["tau"] = pyddm.Fittable(minval=0.01, maxval=5.0)
        t0_max = min(0.8, float(human["rt_s"].median()))
        fit_values["t0"] = pyddm.Fittable(minval=0.0, maxval=t0_max)
        model = self._build(pyddm, fit_values, conds)
        frame = pd.DataFrame(
            {
                "rt_s": human["rt_s"].to_numpy(dtype=float),
                "correct": human["correct"].to_numpy(dtype=int),
                "condition": [_condition_key(c) for c in human["condition"]],
            }
        )
        sample = pyddm.Sample.from_pandas_dataframe(
            frame, rt_column_name="rt_s", choice_column_name="correct"
        )
        start = time.perf_counter()
        with _quiet_pyddm():
            pyddm.fit_adjust_model(
                sample,
                model,
                fitting_method="differential_evolution",
                lossfunction=(
                    _conditional_likelihood_loss(pyddm)
                    if self.condition_on_response
                    else pyddm.LossRobustLikelihood
                ),
                verbose=False,
                fitparams={"maxiter": self.max_iter, "seed": self.seed, "disp": False},
            )
        self.fit_seconds_ = time.perf_counter() - start
        self.model_ = model
        self.conditions_ = conds
        self.n_trials_ = len(frame)
        self.neg_log_likelihood_ = float(model.fitresult.value())
        self.params_ = self._read_params(model)
        return self

    def _read_params(self, model: Any) -> dict[str, float]:
        """Fitted parameters with readable names (drift_<condition> for per-condition drifts)."""
        flat: dict[str, float] = {}
        for component in model.parameters().values():
            for name, value in component.items():
                flat[name] = float(value)
        out: dict[str, float] = {}
        if self.per_condition_drift:
            for i, cond in enumerate(self.conditions_):
                out[f"drift_{cond}"] = flat[f"drift_{i}"]
        else:
            out["k"] = flat["k"]
        out["B"] = flat["B"]
        if self.collapsing:
            out["tau"] = flat["tau"]
        out["t0"] = flat["nondectime"]
        return out

    def drift(self, condition: Any) -> float:
        """Drift rate of the fitted model in one condition."""
        self._check_fitted()
        cond = _condition_key(condition)
        if self.per_condition_drift:
            if cond not in self.conditions_:
                raise PerceptAlignError(
                    f"condition {cond!r} was not fitted (per-condition drifts): "
                    f"choose from {self.conditions_}."
                )
            return self.params_[f"drift_{cond}"]
        if isinstance(cond, str):
            raise PerceptAlignError(
                f"condition {cond!r} is not numeric; drift = k * condition needs a number."
            )
        return self.params_["k"] * cond

    def predict(self, conditions: Sequence[Any], n_per_condition: int, seed: int = 0) -> pd.DataFrame:
        """Simulate ``n_per_condition`` trials per condition from the fitted model's RT distributions.

        Trials that reach T_dur without a decision are returned with ``decided=False`` and rt_s = T_dur.
        """
        self._check_fitted()
        if n_per_condition < 1:
            raise PerceptAlignError(f"n_per_condition must be >= 1, got {n_per_condition}.")
        conds = [_condition_key(c) for c in conditions]
        if not conds:
            raise PerceptAlignError("predict needs at least one condition.")
        for cond in conds:
            self.drift(cond)  # raises for conditions the model cannot simulate
        rng = np.random.default_rng(seed)
        tables = []
        with _quiet_pyddm():
            for cond in conds:
                solution = self.model_.solve(conditions={"condition": cond})
                sample = solution.sample(n_per_condition, seed=int(rng.integers(0, 2**31 - 1)))
                upper = np.asarray(sample.choice_upper, dtype=float)
                lower = np.asarray(sample.choice_lower, dtype=float)
                n_und = int(sample.undecided)
                rt = np.concatenate([upper, lower, np.full(n_und, self.T_dur)])
                correct = np.concatenate([np.ones(len(upper), bool), np.zeros(len(lower) + n_und, bool)])
                decided = np.concatenate([np.ones(len(upper) + len(lower), bool), np.zeros(n_und, bool)])
                # The lapse mixture may place a trial at exactly 0 s; RTs must be positive.
                rt = np.maximum(rt, 1e-6)
                order = rng.permutation(len(rt))
                tables.append(_trials_table(cond, rt[order], correct[order], decided[order]))
        return _concat_tables(tables)

    def predicted_accuracy(self, condition: Any) -> float:
        """Probability of a correct response among decided trials in one condition (from the solution)."""
        self._check_fitted()
        self.drift(condition)
        with _quiet_pyddm():
            solution = self.model_.solve(conditions={"condition": _condition_key(condition)})
            p_c, p_e = float(solution.prob("correct")), float(solution.prob("error"))
        return p_c / (p_c + p_e) if p_c + p_e > 0 else math.nan

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise PerceptAlignError("DDMBaseline is not fitted yet: call fit() first.")

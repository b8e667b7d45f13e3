"""Linear mixed models with crossed random intercepts, fitted by REML (the task study's S2 statistic).

When several models are measured on the same tasks, the rows are not independent: a task that is easy for
one model tends to be easy for all, and tasks cut from one parent corpus share texts. A random intercept
per task (shared by the models) and one per parent absorb both, so the fixed slope measures how NTPS and
the target move together *beyond* what a task or a corpus contributes to every model.

The model is y = Xβ + Σ_k Z_k u_k + ε with u_k ~ N(0, θ_k σ² I) and ε ~ N(0, σ² I), where each Z_k is the
indicator matrix of one grouping factor. The REML criterion is profiled over σ² and β and minimised over
θ ≥ 0 (a variance component may be exactly zero). Designs here are small (a few hundred rows), so V is
never formed: the criterion goes through the q × q matrix of the random effects (Woodbury), as in lme4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize
from numpy.typing import ArrayLike

from perceptalign.io import PerceptAlignError

_THETA_MAX = 1e4


@dataclass(frozen=True)
class MixedModelFit:
    """The REML fit: fixed effects, their standard errors, and the variance components."""

    beta: np.ndarray
    beta_se: np.ndarray
    sigma2: float
    variance_ratios: np.ndarray
    reml_criterion: float

    @property
    def variances(self) -> np.ndarray:
        """σ²_k of each random intercept (θ_k · σ²)."""
        return self.variance_ratios * self.sigma2


def indicator(levels: ArrayLike) -> np.ndarray:
    """The n × L 0/1 matrix of a grouping factor (columns in order of first appearance)."""
    values = np.asarray(levels)
    _, first, codes = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    Z = np.zeros((len(values), len(first)))
    Z[np.arange(len(values)), order[codes]] = 1.0
    return Z


@dataclass(frozen=True)
class _Crossproducts:
    """Every cross-product the REML criterion needs, computed once per design (q = random effects)."""

    XtX: np.ndarray
    Xty: np.ndarray
    yty: float
    ZtZ: np.ndarray
    ZtX: np.ndarray
    Zty: np.ndarray
    levels: np.ndarray  # the factor of each of the q columns of Z
    n: int


def _crossproducts(y: np.ndarray, X: np.ndarray, Zs: list[np.ndarray]) -> _Crossproducts:
    Z = np.hstack(Zs) if Zs else np.zeros((len(y), 0))
    levels = np.concatenate([np.full(z.shape[1], k) for k, z in enumerate(Zs)]) if Zs else np.zeros(0, int)
    return _Crossproducts(X.T @ X, X.T @ y, float(y @ y), Z.T @ Z, Z.T @ X, Z.T @ y, levels, len(y))


def _profiled(theta: np.ndarray, c: _Crossproducts) -> tuple:
    """REML criterion (−2 log-likelihood up to a constant) at θ, with β̂, σ̂² and (XᵀV₀⁻¹X)⁻¹.

    V₀ = I + Z Λ Zᵀ is never formed: with S = Λ^½ and M = I + S ZᵀZ S (q × q), the Woodbury identity gives
    every quadratic form through M, and log|V₀| = log|M| (as in lme4), so a step costs O(q³), not O(n³).
    """
    p = c.XtX.shape[0]
    sqrt_theta = np.sqrt(theta[c.levels]) if len(c.levels) else np.zeros(0)
    M = np.eye(len(sqrt_theta)) + sqrt_theta[:, None] * c.ZtZ * sqrt_theta[None, :]
    if len(sqrt_theta):
        L = scipy.linalg.cholesky(M, lower=True)
        SZtX = sqrt_theta[:, None] * c.ZtX
        SZty = sqrt_theta * c.Zty
        A = scipy.linalg.solve_triangular(L, SZtX, lower=True)
        b = scipy.linalg.solve_triangular(L, SZty, lower=True)
        XVX = c.XtX - A.T @ A
        XVy = c.Xty - A.T @ b
        yVy = c.yty - float(b @ b)
        logdet_v = 2.0 * np.log(np.diag(L)).sum()
    else:
        XVX, XVy, yVy, logdet_v = c.XtX, c.Xty, c.yty, 0.0
    XVX_chol = scipy.linalg.cholesky(XVX, lower=True)
    beta = scipy.linalg.cho_solve((XVX_chol, True), XVy)
    rss = max(yVy - float(beta @ XVy), 1e-300)
    dof = c.n - p
    sigma2 = rss / dof
    criterion = dof * np.log(sigma2) + logdet_v + 2.0 * np.log(np.diag(XVX_chol)).sum()
    cov_unscaled = scipy.linalg.cho_solve((XVX_chol, True), np.eye(p))
    return float(criterion), beta, sigma2, cov_unscaled


def fit_random_intercepts(
    y: ArrayLike, X: ArrayLike, factors: Sequence[ArrayLike], *, start: Sequence[float] | None = None
) -> MixedModelFit:
    """REML fit of y = Xβ + one random intercept per factor + ε.

    ``X`` must have full column rank (include the intercept or the per-group means yourself). ``factors``
    are label arrays of length n; with none, the fit is ordinary least squares.
    """
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or y.ndim != 1 or len(y) != len(X):
        raise PerceptAlignError(
            f"`y` must be a vector with one entry per row of `X`, got {y.shape}, {X.shape}."
        )
    if not (np.isfinite(y).all() and np.isfinite(X).all()):
        raise PerceptAlignError("`y` and `X` must be finite (drop the rows with NaN first).")
    n, p = X.shape
    if np.linalg.matrix_rank(X) < p or n <= p:
        raise PerceptAlignError(f"`X` ({n} × {p}) must have full column rank and more rows than columns.")
    Zs = []
    for f in factors:
        if len(np.asarray(f)) != n:
            raise PerceptAlignError(f"every factor needs one label per row ({n}), got {len(np.asarray(f))}.")
        Zs.append(indicator(f))
    k = len(Zs)
    products = _crossproducts(y, X, Zs)
    if k == 0:
        crit, beta, sigma2, cov = _profiled(np.zeros(0), products)
        return MixedModelFit(beta, np.sqrt(np.diag(cov) * sigma2), sigma2, np.zeros(0), crit)

    def objective(theta: np.ndarray) -> float:
        return _profiled(theta, products)[0]

    # A coarse start over a few ratios guards against the flat region near θ = 0.
    if start is None:
        candidates = [np.full(k, g) for g in (0.0, 0.1, 1.0)]
        start_theta = min(candidates, key=objective)
    else:
        start_theta = np.asarray(start, dtype=np.float64)
    result = scipy.optimize.minimize(
        objective,
        start_theta,
        method="L-BFGS-B",
        bounds=[(0.0, _THETA_MAX)] * k,
        options={"ftol": 1e-12, "gtol": 1e-8, "maxiter": 500},
    )
    theta = np.clip(result.x, 0.0, _THETA_MAX)
    crit, beta, sigma2, cov = _profiled(theta, products)
    return MixedModelFit(beta, np.sqrt(np.diag(cov) * sigma2), sigma2, theta, crit)

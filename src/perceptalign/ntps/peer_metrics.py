"""Transferability metrics that NTPS is compared with, implemented from their papers in numpy.

None of these has a maintained package, and published numbers are only comparable when every metric
sees the same pooled features ``F`` (n × D) and labels ``y`` (n,). Each function validates its input
and raises :class:`PerceptAlignError` with the fix; labels may be any integers (they are re-indexed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse
from numpy.typing import ArrayLike, NDArray
from sklearn.covariance import ledoit_wolf_shrinkage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from perceptalign.io import PerceptAlignError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
_PROB_BLOCK_ELEMENTS = 1 << 22  # next-token probabilities converted to float64 at a time (32 MB)

__all__ = [
    "PEER_METRICS",
    "LogMEResult",
    "PeerMetric",
    "alpha_req",
    "compute_peer_metrics",
    "cv_logistic_accuracy",
    "fisher_ratio",
    "gbc",
    "h_score",
    "knn_accuracy",
    "leep",
    "lidar",
    "logme",
    "logme_details",
    "nce",
    "rankme",
    "transrate",
    "transrate_release",
]


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------


def _features(F: ArrayLike, *, name: str = "features") -> FloatArray:
    """Return ``F`` as a finite float64 (n, D) array, or raise with the fix."""
    arr = np.asarray(F)
    if arr.ndim != 2:
        raise PerceptAlignError(
            f"{name} must be a 2-D array (n_samples, n_features), got shape {arr.shape}; "
            "pool the hidden states to one vector per text first."
        )
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise PerceptAlignError(f"{name} must be real numbers, got dtype {arr.dtype}.")
    arr = arr.astype(np.float64, copy=False)
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise PerceptAlignError(f"{name} needs at least 2 samples and 1 feature, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr).all(axis=1)))
        raise PerceptAlignError(
            f"{name} contain NaN or infinite values in {bad} rows; recompute them in float32/float64 "
            "or drop those samples."
        )
    return arr


def _labels(y: ArrayLike, n: int, *, min_per_class: int = 1, what: str = "this metric") -> IntArray:
    """Return labels re-indexed to 0..C-1, checking length, integrality, C >= 2 and class sizes."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise PerceptAlignError(f"labels must be a 1-D array, got shape {arr.shape}.")
    if arr.shape[0] != n:
        raise PerceptAlignError(
            f"labels have {arr.shape[0]} entries but features have {n} rows; pass one label per sample."
        )
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise PerceptAlignError("labels must be integers (class indices); got non-integer floats.")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise PerceptAlignError(f"labels must be integer class indices, got dtype {arr.dtype}.")
    classes, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    if classes.size < 2:
        raise PerceptAlignError(
            f"{what} needs at least 2 classes, got only class {classes.tolist()}; "
            "check that the labels were read from the right column."
        )
    if counts.min() < min_per_class:
        small = classes[counts < min_per_class].tolist()
        raise PerceptAlignError(
            f"{what} needs at least {min_per_class} samples per class; classes {small} have fewer. "
            "Add samples or drop those classes."
        )
    return inverse.astype(np.int64).reshape(-1)


def _prob_blocks(P: Any, n: int) -> Iterator[FloatArray]:
    """Row blocks of a next-token probability matrix (n × Z, dense or scipy.sparse), each validated and
    renormalised in float64.

    Blocks keep memory bounded: n × vocab probabilities (vocab ~ 150k) do not fit in float64 at once.
    Sparse input lets callers store only the top-k of each distribution (renormalised).
    """
    sparse = scipy.sparse.issparse(P)
    if not sparse:
        P = np.asarray(P)
    if P.ndim != 2 or P.shape[0] != n:
        raise PerceptAlignError(
            f"next-token probabilities must have shape (n_samples={n}, vocab_size), got {P.shape}."
        )
    step = max(1, _PROB_BLOCK_ELEMENTS // max(P.shape[1], 1))
    for a in range(0, n, step):
        block = P[a : a + step]
        block = np.asarray(block.toarray() if sparse else block, dtype=np.float64)
        if not np.all(np.isfinite(block)) or block.min() < 0:
            raise PerceptAlignError(
                "next-token probabilities must be finite and non-negative; pass softmax(logits), not logits."
            )
        sums = block.sum(axis=1)
        if np.any(np.abs(sums - 1.0) > 1e-3):
            raise PerceptAlignError(
                "each row of next-token probabilities must sum to 1 (found sums in "
                f"[{sums.min():.4g}, {sums.max():.4g}]); apply softmax over the full vocabulary "
                "(or renormalise a top-k truncation)."
            )
        yield block / sums[:, None]


def _one_hot(y: IntArray) -> FloatArray:
    return np.eye(int(y.max()) + 1)[y]


def _one_hot_c(y: IntArray, C: int) -> FloatArray:
    return np.eye(C)[y]


def _entropy_effective_rank(values: FloatArray, eps: float) -> float:
    """exp(Shannon entropy) of ``values / sum(values) + eps``: a smooth count of non-negligible entries."""
    total = values.sum()
    if total <= 0:
        raise PerceptAlignError("the spectrum is all zeros (constant features); nothing to rank.")
    p = values / total + eps
    return float(np.exp(-np.sum(p * np.log(p))))


# --------------------------------------------------------------------------------------------------
# LogME
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogMEResult:
    """Per-class LogME fit: evidence per sample, prior precision α, noise precision β, and whether the
    fixed-point iteration settled (False: the 1-D profile search gave the maximum)."""

    evidence: FloatArray
    alpha: FloatArray
    beta: FloatArray
    n_iter: IntArray
    converged: NDArray[np.bool_]

    @property
    def score(self) -> float:
        return float(self.evidence.mean())


def _logme_evidence(s2: FloatArray, x: FloatArray, outside: float, n: int, D: int, alpha: float, beta: float):
    """Per-sample log evidence at (α, β) in the SVD basis, and the ‖m‖², ‖t − Fm‖² it implies."""
    denom = alpha + beta * s2
    m2 = float(np.sum((beta * np.sqrt(s2) * x / denom) ** 2))
    res2 = float(np.sum((alpha * x / denom) ** 2)) + outside
    logdet = float(np.sum(np.log(denom))) + (D - s2.size) * np.log(alpha)
    evidence = (
        0.5 * n * np.log(beta)
        + 0.5 * D * np.log(alpha)
        - 0.5 * n * np.log(2 * np.pi)
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * logdet
    )
    return float(evidence / n), m2, res2


def _logme_profile(s2: FloatArray, x: FloatArray, outside: float, n: int) -> tuple[float, float, float]:
    """Maximise the evidence over the ridge ratio λ = α/β with the scale α profiled out in closed form.

    cov(t) = α⁻¹(FFᵀ + λI), so for fixed λ the best α is n / tᵀ(FFᵀ + λI)⁻¹t. This 1-D search is the
    fallback when the fixed-point iteration does not settle (D >= n, where the optimum may be β = ∞).
    """
    n_out = n - s2.size  # directions of R^n outside the column space of F (eigenvalue λ there)

    def neg(log_lam: float) -> float:
        lam = float(np.exp(log_lam))
        q = float(np.sum(x**2 / (s2 + lam))) + (outside / lam if n_out > 0 else 0.0)
        logdet = float(np.sum(np.log(s2 + lam))) + n_out * log_lam
        return -(0.5 * n * np.log(n / q) - 0.5 * n - 0.5 * logdet - 0.5 * n * np.log(2 * np.pi)) / n

    scale = float(s2.max())
    lo, hi = np.log(scale * 1e-14), np.log(scale * 1e14)
    opt = scipy.optimize.minimize_scalar(neg, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    candidates = [(float(opt.fun), float(np.exp(opt.x)))]
    if n_out == 0 and s2.min() > 0:
        q0 = float(np.sum(x**2 / s2))  # λ = 0: noise-free interpolation (β = ∞)
        ev0 = 0.5 * n * np.log(n / q0) - 0.5 * n - 0.5 * np.sum(np.log(s2)) - 0.5 * n * np.log(2 * np.pi)
        candidates.append((float(-ev0 / n), 0.0))
    fun, lam = min(candidates)
    q = float(np.sum(x**2 / (s2 + lam))) + (outside / lam if n_out > 0 and lam > 0 else 0.0)
    alpha = n / q
    beta = alpha / lam if lam > 0 else float("inf")
    return -fun, alpha, beta


def _logme_single(
    s2: FloatArray, x: FloatArray, t_norm2: float, n: int, D: int, tol: float, max_iter: int
) -> tuple[float, float, float, int, bool]:
    """Fixed-point α/β for one target in the SVD basis; returns (evidence/n, α, β, iterations, converged).

    ``s2`` are the squared singular values of F (length min(n, D)), ``x = Uᵀt``. Working in this basis
    makes each iteration O(min(n, D)) instead of a D × D solve.
    """
    alpha, beta = 1.0, 1.0
    outside = max(t_norm2 - float(x @ x), 0.0)  # part of t orthogonal to the column space of F
    converged = False
    it = 0
    with np.errstate(all="ignore"):
        for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported
            denom = alpha + beta * s2
            gamma = np.sum(beta * s2 / denom)
            m2 = np.sum((beta * np.sqrt(s2) * x / denom) ** 2)
            res2 = np.sum((alpha * x / denom) ** 2) + outside
            new_alpha = float(gamma / m2)
            new_beta = float((n - gamma) / res2)
            if not (np.isfinite(new_alpha) and np.isfinite(new_beta) and new_alpha > 0 and new_beta > 0):
                break
            if new_beta > 1e14 * new_alpha / s2.max():  # heading for the noise-free limit
                break
            done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
            alpha, beta = new_alpha, new_beta
            if done:
                converged = True
                break
    if converged:
        evidence, _, _ = _logme_evidence(s2, x, outside, n, D, alpha, beta)
        if np.isfinite(evidence):
            return evidence, alpha, beta, it, True
    evidence, alpha, beta = _logme_profile(s2, x, outside, n)
    return evidence, alpha, beta, it, False


def logme_details(F: ArrayLike, y: ArrayLike, *, tol: float = 1e-10, max_iter: int = 1000) -> LogMEResult:
    """LogME per class (You et al. 2021, ICML): maximised evidence of Bayesian ridge regression on one-hot
    targets, with MacKay's fixed-point updates γ = Σ βσ²/(α+βσ²), α = γ/‖m‖², β = (n−γ)/‖t−Fm‖².

    Features are used as given (no centering or scaling), as in the paper. When D >= n the iteration can
    run off to α → 0 or β → ∞ (F interpolates the targets); the maximum is then found by a 1-D search over
    α/β with α profiled out, including the noise-free limit (``beta = inf``), and ``converged`` records
    whether the fixed point itself settled. The published code instead stops after a few updates.
    """
    X = _features(F)
    labels = _labels(y, X.shape[0], what="LogME")
    n, D = X.shape
    U, s, _ = np.linalg.svd(X, full_matrices=False)
    s2 = s**2
    T = _one_hot(labels)
    proj = U.T @ T
    out = [
        _logme_single(s2, proj[:, k], float(T[:, k] @ T[:, k]), n, D, tol, max_iter)
        for k in range(T.shape[1])
    ]
    ev, al, be, it, conv = (np.array(v) for v in zip(*out, strict=True))
    return LogMEResult(ev.astype(np.float64), al, be, it.astype(np.int64), conv.astype(bool))


def logme(F: ArrayLike, y: ArrayLike) -> float:
    """LogME (You et al. 2021): mean over classes of the per-sample log evidence (higher = better)."""
    return logme_details(F, y).score


# --------------------------------------------------------------------------------------------------
# H-score
# --------------------------------------------------------------------------------------------------


def _class_mean_scatter(X: FloatArray, labels: IntArray) -> tuple[FloatArray, FloatArray]:
    """Centered features and cov(E[F|y]) = Σ_c (n_c/n)(μ_c − μ)(μ_c − μ)ᵀ (the between-class covariance)."""
    Xc = X - X.mean(axis=0)
    counts = np.bincount(labels).astype(np.float64)
    means = (_one_hot(labels).T @ Xc) / counts[:, None]
    weighted = means * np.sqrt(counts / X.shape[0])[:, None]
    return Xc, weighted.T @ weighted


def h_score(F: ArrayLike, y: ArrayLike, shrinkage: bool | float = False) -> float:
    """H-score (Bao et al. 2019, ICIP): tr(cov(F)⁺ cov(E[F|y])); ``shrinkage`` = Ledoit-Wolf regularised
    variant of Ibrahim et al. (2022, ICLR) for D ≳ n (True: estimated intensity; float: fixed intensity).

    Covariances use 1/n. Without shrinkage the score lies in [0, C − 1] and is invariant to invertible
    linear maps of F; with shrinkage cov(F) becomes (1−a)Σ + a·tr(Σ)/D·I and cov(E[F|y]) is scaled by
    (1−a), which keeps the same bounds.
    """
    X = _features(F)
    labels = _labels(y, X.shape[0], what="H-score")
    n, D = X.shape
    Xc, between = _class_mean_scatter(X, labels)
    cov = Xc.T @ Xc / n
    if shrinkage is False:
        return float(np.trace(np.linalg.pinv(cov, hermitian=True) @ between))
    if shrinkage is True:
        a = float(ledoit_wolf_shrinkage(Xc, assume_centered=True))
    else:
        a = float(shrinkage)
        if not 0.0 <= a <= 1.0:
            raise PerceptAlignError(f"shrinkage must be a bool or a float in [0, 1], got {shrinkage!r}.")
    mu = np.trace(cov) / D
    shrunk = (1.0 - a) * cov + a * mu * np.eye(D)
    if a == 0.0:
        inv_between = np.linalg.pinv(shrunk, hermitian=True) @ between
    else:
        inv_between = scipy.linalg.solve(shrunk, between, assume_a="pos")
    return float((1.0 - a) * np.trace(inv_between))


# --------------------------------------------------------------------------------------------------
# NCE and LEEP (from the LM's own next-token distribution)
# --------------------------------------------------------------------------------------------------


def nce(source_labels: ArrayLike, y: ArrayLike) -> float:
    """NCE (Tran et al. 2019, ICCV): −H(Y | Z) of the empirical joint of source label Z (here the LM's
    argmax next token at the last position) and target label Y. Always ≤ 0; 0 when Z determines Y.
    """
    z = np.asarray(source_labels)
    if z.ndim != 1 or z.dtype.kind not in "iu":
        raise PerceptAlignError(
            f"source labels must be a 1-D integer array (argmax token ids), got {z.dtype} {z.shape}."
        )
    labels = _labels(y, z.shape[0], what="NCE")
    _, zi = np.unique(z, return_inverse=True)
    zi = zi.reshape(-1)
    joint = np.zeros((int(zi.max()) + 1, int(labels.max()) + 1))
    np.add.at(joint, (zi, labels), 1.0)
    joint /= z.shape[0]
    pz = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)
    return float(np.sum(joint[nz] * np.log(cond[nz])))


def leep(source_probs: Any, y: ArrayLike) -> float:
    """LEEP (Nguyen et al. 2020, ICML): mean log of the expected empirical predictor
    Σ_z P̂(y|z) θ_z(x), with θ the LM's next-token distribution at the last position. Always ≤ 0.

    ``source_probs`` is n × vocab, dense (any float dtype) or scipy.sparse (e.g. renormalised top-k).
    """
    labels_raw = np.asarray(y)
    if labels_raw.ndim != 1:
        raise PerceptAlignError(f"labels must be a 1-D array, got shape {labels_raw.shape}.")
    n = labels_raw.shape[0]
    labels = _labels(labels_raw, n, what="LEEP")
    joint: FloatArray | None = None  # (C, Z): n·P̂(y, z)
    start = 0
    for block in _prob_blocks(source_probs, n):
        part = _one_hot_c(labels[start : start + block.shape[0]], int(labels.max()) + 1).T @ block
        joint = part if joint is None else joint + part
        start += block.shape[0]
    assert joint is not None
    pz = joint.sum(axis=0, keepdims=True)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P̂(y | z)
    log_eep = []
    start = 0
    for block in _prob_blocks(source_probs, n):
        rows = labels[start : start + block.shape[0]]
        log_eep.append(np.log(np.einsum("nz,nz->n", block, cond[rows])))
        start += block.shape[0]
    return float(np.mean(np.concatenate(log_eep)))


def _argmax_tokens(source_probs: Any, n: int) -> IntArray:
    """Argmax token per row, block by block (the NCE source label)."""
    return np.concatenate([b.argmax(axis=1) for b in _prob_blocks(source_probs, n)]).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# GBC
# --------------------------------------------------------------------------------------------------


def _pca(X: FloatArray, dim: int) -> FloatArray:
    """Project centered features on their top ``dim`` principal directions (SVD)."""
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    return Xc @ vt[:dim].T


def gbc(F: ArrayLike, y: ArrayLike, pca_dim: int = 64, covariance: str = "diagonal") -> float:
    """GBC (Pándy et al. 2022, CVPR): −Σ_{i≠j} BC(c_i, c_j), Bhattacharyya coefficients between
    per-class Gaussians (``diagonal`` or ``spherical`` covariance) after PCA to ``pca_dim``.

    Range [−C(C−1), 0]: 0 when classes do not overlap, −C(C−1) when all classes coincide.
    """
    if covariance not in ("diagonal", "spherical"):
        raise PerceptAlignError(f"covariance must be 'diagonal' or 'spherical', got {covariance!r}.")
    if int(pca_dim) < 1:
        raise PerceptAlignError(f"pca_dim must be a positive integer, got {pca_dim!r}.")
    X = _features(F)
    labels = _labels(y, X.shape[0], min_per_class=2, what="GBC")
    Z = _pca(X, min(int(pca_dim), X.shape[1], X.shape[0]))
    C = int(labels.max()) + 1
    means = np.stack([Z[labels == c].mean(axis=0) for c in range(C)])
    var = np.stack([Z[labels == c].var(axis=0) for c in range(C)])
    if covariance == "spherical":
        var = np.repeat(var.mean(axis=1, keepdims=True), Z.shape[1], axis=1)
    # A floor keeps directions with zero spread inside a class from making log-determinants infinite.
    var = var + 1e-12 * max(float(Z.var(axis=0).mean()), 1e-300)
    total = 0.0
    for i in range(C):
        for j in range(i + 1, C):
            avg = 0.5 * (var[i] + var[j])
            dist = 0.125 * np.sum((means[i] - means[j]) ** 2 / avg) + 0.5 * np.sum(
                np.log(avg) - 0.5 * (np.log(var[i]) + np.log(var[j]))
            )
            total += 2.0 * np.exp(-dist)  # BC is symmetric: count (i, j) and (j, i)
    return float(-total)


# --------------------------------------------------------------------------------------------------
# TransRate
# --------------------------------------------------------------------------------------------------


def _half_logdet_identity_plus_gram(Z: FloatArray, scale: float) -> float:
    """½ logdet(I_D + scale·ZᵀZ), computed on the smaller of the two Gram matrices (Sylvester)."""
    G = Z @ Z.T if Z.shape[0] <= Z.shape[1] else Z.T @ Z
    _, logdet = np.linalg.slogdet(np.eye(G.shape[0]) + scale * G)
    return 0.5 * float(logdet)


def _transrate_inputs(F: ArrayLike, y: ArrayLike, eps: float, what: str) -> tuple[FloatArray, IntArray]:
    """Globally centered features and re-indexed labels, after the checks every TransRate variant needs."""
    if not (isinstance(eps, (int, float, np.floating, np.integer)) and np.isfinite(eps) and eps > 0):
        raise PerceptAlignError(f"`eps` must be a positive finite number, got {eps!r}; the default works.")
    X = _features(F)
    labels = _labels(y, X.shape[0], what=what)
    return X - X.mean(axis=0), labels


def transrate(F: ArrayLike, y: ArrayLike, eps: float = 1e-2) -> float:
    """TransRate as the paper defines it (Huang, Huang, Rong, Yang & Wei, "Frustratingly easy
    transferability estimation", ICML 2022, arXiv:2106.09362): the coding-rate estimate of
    I(Z; Y) = h(Z) − h(Z | Y),

        TrR = R(Z, ε) − R(Z | Y, ε),   R(Z, ε) = ½ logdet(I_d + d/(n ε²) ZᵀZ),
        R(Z | Y, ε) = Σ_c (n_c/n) · ½ logdet(I_d + d/(n_c ε²) Z_cᵀZ_c),

    Z the n × d globally centered features, Z_c its n_c rows of class c (not re-centered) — the coding
    rate and rate reduction of Ma et al. (2007) and Yu et al. (MCR², 2020) that the paper adopts.

    The class weights are p(y = c) = n_c/n, as in h(Z | Y) = Σ_c p(c) h(Z | Y = c); with them the score is
    ≥ 0 (logdet is concave and ZᵀZ/n = Σ_c (n_c/n) Z_cᵀZ_c/n_c) and exactly 0 when every class has the
    second moments of the whole set. ``eps`` is the distortion ε (default ε² = 1e-4). Invariant to
    translations, orthogonal maps of the features and relabelling of the classes; not to feature scale
    (nearly so when ε ≪ the feature spread, where logdet(I + sA) ≈ logdet(sA) and the scale cancels).
    ``transrate_release`` is the paper's code listing, which weights classes uniformly.
    """
    Z, labels = _transrate_inputs(F, y, eps, "TransRate")
    n, d = Z.shape
    whole = _half_logdet_identity_plus_gram(Z, d / (n * eps**2))
    conditional = 0.0
    for c in range(int(labels.max()) + 1):
        Zc = Z[labels == c]
        n_c = Zc.shape[0]
        conditional += n_c / n * _half_logdet_identity_plus_gram(Zc, d / (n_c * eps**2))
    return float(whole - conditional)


def transrate_release(F: ArrayLike, y: ArrayLike, eps: float = 1e-4) -> float:
    """TransRate as the paper's 10-line code listing computes it (the version benchmark suites copy):

        coding_rate(M) = ½ logdet(I_d + MᵀM/(m·eps)),  m = rows of M,
        TrR = coding_rate(Z) − (1/K) Σ_c coding_rate(Z_c),

    Z globally centered, Z_c its rows of class c, K the number of classes. ``eps`` stands for ε²/d of the
    definition (``transrate``), so on balanced classes ``transrate_release(F, y, ε²/d)`` equals
    ``transrate(F, y, ε)``. The UNIFORM class weights 1/K replace p(y = c) = n_c/n, so on imbalanced classes
    it is not a rate reduction: a small, spread-out class counts as much as a large one and the score can
    be negative. Kept to compare with numbers computed with that listing.

    Deviations from the listing: labels are re-indexed, so K counts the classes present (the listing's
    K = max(y) + 1 divides by zero on an absent label), and everything is float64 (the listing computes in
    the features' dtype). The authors' repository (Long-Kai/TransRate) is yet another computation
    (eigenvalues of ZᵀZ/n with n_c/n weights and optional normalisations), not reproduced here.
    """
    Z, labels = _transrate_inputs(F, y, eps, "TransRate")
    whole = _half_logdet_identity_plus_gram(Z, 1.0 / (Z.shape[0] * eps))
    K = int(labels.max()) + 1
    per_class = 0.0
    for c in range(K):
        Zc = Z[labels == c]
        per_class += _half_logdet_identity_plus_gram(Zc, 1.0 / (Zc.shape[0] * eps))
    return float(whole - per_class / K)


# --------------------------------------------------------------------------------------------------
# Label-free spectral metrics
# --------------------------------------------------------------------------------------------------


def rankme(F: ArrayLike, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023, ICML): exp entropy of the L1-normalised singular values of F (label-free).

    ≈ min(n, D) for isotropic features, 1 for rank-one features.
    """
    X = _features(F)
    return _entropy_effective_rank(np.linalg.svd(X, compute_uv=False), eps)


def alpha_req(F: ArrayLike, fit_range: tuple[int, int] | None = None) -> float:
    """α-ReQ (Agrawal et al. 2022, NeurIPS): α of the power law λ_i ∝ i^(−α) of the feature covariance
    eigenvalues, the negative least-squares slope of log λ_i on log i (label-free).

    ``fit_range`` = (first, last) 1-based eigenvalue indices to fit; default: all numerically non-zero.
    """
    X = _features(F)
    s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    lam = s**2 / X.shape[0]
    keep = lam > lam[0] * max(X.shape) * np.finfo(np.float64).eps if lam[0] > 0 else np.zeros_like(lam, bool)
    lam = lam[keep]
    idx = np.arange(1, lam.size + 1, dtype=np.float64)
    if fit_range is not None:
        first, last = int(fit_range[0]), int(fit_range[1])
        if not 1 <= first < last:
            raise PerceptAlignError(
                f"fit_range must be (first, last) with 1 <= first < last, got {fit_range}."
            )
        lam, idx = lam[first - 1 : last], idx[first - 1 : last]
    if lam.size < 2:
        raise PerceptAlignError(
            f"α-ReQ needs at least 2 non-zero covariance eigenvalues in the fit range, got {lam.size}; "
            "use more samples/features or a wider fit_range."
        )
    slope = np.polyfit(np.log(idx), np.log(lam), 1)[0]
    return float(-slope)


def lidar(F: ArrayLike, y: ArrayLike, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al. 2024, ICLR): effective rank (exp entropy) of the LDA matrix
    Σ_w^(−1/2) Σ_b Σ_w^(−1/2), Σ_w regularised by ``delta``·I.

    The paper's surrogate classes are augmentations of one input; here they are the task labels, so the
    score counts how many discriminative directions the classes span, at most C − 1. Class means and
    within-class covariances are averaged uniformly over classes, as in the paper.
    """
    if not delta >= 0 or not eps > 0:
        raise PerceptAlignError(f"delta must be >= 0 and eps > 0, got delta={delta!r}, eps={eps!r}.")
    X = _features(F)
    labels = _labels(y, X.shape[0], min_per_class=2, what="LiDAR")
    C = int(labels.max()) + 1
    D = X.shape[1]
    means = np.stack([X[labels == c].mean(axis=0) for c in range(C)])
    centered_means = means - means.mean(axis=0)
    between = centered_means.T @ centered_means / C
    within = np.zeros((D, D))
    for c in range(C):
        R = X[labels == c] - means[c]
        within += R.T @ R / R.shape[0]
    within = within / C + delta * np.eye(D)
    w, Q = np.linalg.eigh(within)
    if w.min() <= 0:
        raise PerceptAlignError(
            "the within-class covariance is singular; pass delta > 0 (e.g. 1e-4) to regularise it."
        )
    inv_sqrt = (Q / np.sqrt(w)) @ Q.T
    lam = np.clip(np.linalg.eigvalsh(inv_sqrt @ between @ inv_sqrt), 0.0, None)
    return _entropy_effective_rank(lam, eps)


# --------------------------------------------------------------------------------------------------
# Simple strong baselines
# --------------------------------------------------------------------------------------------------


def _folds(labels: IntArray, cv: int, seed: int) -> StratifiedKFold:
    if int(cv) < 2:
        raise PerceptAlignError(f"cv must be an integer >= 2, got {cv!r}.")
    return StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=seed)


def knn_accuracy(F: ArrayLike, y: ArrayLike, k: int = 5, cv: int = 5, seed: int = 0) -> float:
    """Out-of-fold accuracy of a Euclidean k-nearest-neighbour classifier (stratified ``cv`` folds)."""
    X = _features(F)
    labels = _labels(y, X.shape[0], min_per_class=int(cv), what=f"{cv}-fold kNN accuracy")
    if int(k) < 1:
        raise PerceptAlignError(f"k must be a positive integer, got {k!r}.")
    min_train = X.shape[0] - int(np.ceil(X.shape[0] / int(cv)))
    if int(k) > min_train:
        raise PerceptAlignError(f"k={k} exceeds the training-fold size {min_train}; use a smaller k.")
    pred = cross_val_predict(KNeighborsClassifier(n_neighbors=int(k)), X, labels, cv=_folds(labels, cv, seed))
    return float(np.mean(pred == labels))


def cv_logistic_accuracy(F: ArrayLike, y: ArrayLike, cv: int = 5, seed: int = 0) -> float:
    """Out-of-fold accuracy of standardize + L2 logistic regression (C = 1), the probe NTPS is meant to
    predict, on stratified ``cv`` folds."""
    X = _features(F)
    labels = _labels(y, X.shape[0], min_per_class=int(cv), what=f"{cv}-fold logistic accuracy")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    pred = cross_val_predict(model, X, labels, cv=_folds(labels, cv, seed))
    return float(np.mean(pred == labels))


def fisher_ratio(F: ArrayLike, y: ArrayLike) -> float:
    """Fisher trace ratio tr(S_b) / tr(S_w) of between- and within-class scatter (Fisher 1936)."""
    X = _features(F)
    labels = _labels(y, X.shape[0], what="Fisher ratio")
    Xc, between = _class_mean_scatter(X, labels)
    total = float(np.sum(Xc**2)) / X.shape[0]
    within = total - float(np.trace(between))  # S_t = S_b + S_w
    if within <= total * 1e-14:
        return float("inf")
    return float(np.trace(between) / within)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


class PeerMetric(NamedTuple):
    """A registered metric: ``function(features, labels, next_token_probs) -> float`` plus its needs."""

    function: Callable[[FloatArray, IntArray, Any], float]
    needs_labels: bool
    needs_lm_probs: bool
    higher_is_better: bool


def _r_logme(F: FloatArray, y: IntArray, P: Any) -> float:
    """LogME — You et al., ICML 2021."""
    return logme(F, y)


def _r_h_score(F: FloatArray, y: IntArray, P: Any) -> float:
    """H-score — Bao et al., ICIP 2019."""
    return h_score(F, y)


def _r_h_score_shrinkage(F: FloatArray, y: IntArray, P: Any) -> float:
    """Shrinkage H-score — Ibrahim, Ponomareva & Mazumder, ICLR 2022."""
    return h_score(F, y, shrinkage=True)


def _r_nce(F: FloatArray, y: IntArray, P: Any) -> float:
    """NCE — Tran, Nguyen & Hassner, ICCV 2019 (source label = argmax next token)."""
    return nce(_argmax_tokens(P, F.shape[0]), y)


def _r_leep(F: FloatArray, y: IntArray, P: Any) -> float:
    """LEEP — Nguyen, Hassner, Seeger & Archambeau, ICML 2020."""
    return leep(P, y)


def _r_gbc(F: FloatArray, y: IntArray, P: Any) -> float:
    """GBC — Pándy, Agostinelli, Uijlings, Ferrari & Mensink, CVPR 2022."""
    return gbc(F, y)


def _r_transrate(F: FloatArray, y: IntArray, P: Any) -> float:
    """TransRate, the paper's definition (n_c/n class weights) — Huang, Huang, Rong, Yang & Wei, ICML 2022."""
    return transrate(F, y)


def _r_transrate_release(F: FloatArray, y: IntArray, P: Any) -> float:
    """TransRate as the paper's code listing computes it (uniform class weights) — Huang et al., ICML 2022."""
    return transrate_release(F, y)


def _r_rankme(F: FloatArray, y: IntArray, P: Any) -> float:
    """RankMe — Garrido, Balestriero, Najman & LeCun, ICML 2023."""
    return rankme(F)


def _r_alpha_req(F: FloatArray, y: IntArray, P: Any) -> float:
    """α-ReQ — Agrawal, Mondal, Ghosh & Richards, NeurIPS 2022 (lower α = slower decay)."""
    return alpha_req(F)


def _r_lidar(F: FloatArray, y: IntArray, P: Any) -> float:
    """LiDAR — Thilak, Huang, Saremi, Dinh, Goh, Susskind & Littwin, ICLR 2024 (labels as classes)."""
    return lidar(F, y)


def _r_knn(F: FloatArray, y: IntArray, P: Any) -> float:
    """5-NN accuracy, 5-fold — Cover & Hart 1967."""
    return knn_accuracy(F, y)


def _r_fisher(F: FloatArray, y: IntArray, P: Any) -> float:
    """Fisher trace ratio — Fisher 1936."""
    return fisher_ratio(F, y)


def _r_logistic(F: FloatArray, y: IntArray, P: Any) -> float:
    """Cross-validated logistic-probe accuracy (standardize + L2, C = 1)."""
    return cv_logistic_accuracy(F, y)


# higher_is_better for α-ReQ: Agrawal et al. find that generalisation peaks near α ≈ 1 (not monotone);
# registered as lower-is-better because larger α means fewer effective dimensions.
PEER_METRICS: dict[str, PeerMetric] = {
    "logme": PeerMetric(_r_logme, True, False, True),
    "h_score": PeerMetric(_r_h_score, True, False, True),
    "h_score_shrinkage": PeerMetric(_r_h_score_shrinkage, True, False, True),
    "nce": PeerMetric(_r_nce, True, True, True),
    "leep": PeerMetric(_r_leep, True, True, True),
    "gbc": PeerMetric(_r_gbc, True, False, True),
    "transrate": PeerMetric(_r_transrate, True, False, True),
    "transrate_release": PeerMetric(_r_transrate_release, True, False, True),
    "rankme": PeerMetric(_r_rankme, False, False, True),
    "alpha_req": PeerMetric(_r_alpha_req, False, False, False),
    "lidar": PeerMetric(_r_lidar, True, False, True),
    "knn_accuracy": PeerMetric(_r_knn, True, False, True),
    "fisher_ratio": PeerMetric(_r_fisher, True, False, True),
    "cv_logistic_accuracy": PeerMetric(_r_logistic, True, False, True),
}


def compute_peer_metrics(
    F: ArrayLike,
    y: ArrayLike | None,
    *,
    next_token_probs: Any = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Compute several peer metrics on the same features, labels and next-token distribution.

    ``metrics=None`` computes every metric whose inputs are available (LM-probability metrics only when
    ``next_token_probs`` is given, label metrics only when ``y`` is given); naming a metric whose input
    is missing is an error rather than a silent skip.
    """
    X = _features(F)
    if metrics is None:
        names = [
            name
            for name, m in PEER_METRICS.items()
            if (not m.needs_lm_probs or next_token_probs is not None)
            and (not m.needs_labels or y is not None)
        ]
    else:
        names = list(metrics)
        unknown = [m for m in names if m not in PEER_METRICS]
        if unknown:
            raise PerceptAlignError(f"unknown peer metrics {unknown}; choose from {sorted(PEER_METRICS)}.")
    labels: IntArray | None = None
    if y is not None:
        labels = np.asarray(y)
        if labels.ndim != 1 or labels.shape[0] != X.shape[0]:
            raise PerceptAlignError(
                f"labels must be 1-D with one entry per feature row ({X.shape[0]}), got shape {labels.shape}."
            )
    probs = next_token_probs  # validated block by block inside LEEP / NCE (may be huge or sparse)
    if probs is not None and (len(getattr(probs, "shape", ())) != 2 or probs.shape[0] != X.shape[0]):
        raise PerceptAlignError(
            f"next_token_probs must have shape (n_samples={X.shape[0]}, vocab_size), "
            f"got {getattr(probs, 'shape', None)}."
        )
    out: dict[str, float] = {}
    for name in names:
        spec = PEER_METRICS[name]
        if spec.needs_labels and labels is None:
            raise PerceptAlignError(f"metric {name!r} needs labels; pass y.")
        if spec.needs_lm_probs and probs is None:
            raise PerceptAlignError(
                f"metric {name!r} needs the LM's next-token probabilities at the last position; "
                "pass next_token_probs (n_samples × vocab_size)."
            )
        out[name] = spec.function(X, labels, probs)  # type: ignore[arg-type]
    return out

"""NTPS subspaces, scores and the linear-setting bounds (method notes: docs/ntps.md, "Definitions").

Everything here is float64 numpy, except the published estimator (``reference_ntps``), reproduced in
float32 as published. Statistics may arrive as torch tensors or numpy arrays of any float
dtype; they are converted once at the boundary. The two subspaces are generalized eigenproblems of the form
(M Mᵀ, B) with a possibly rank-deficient second-moment matrix B. They are solved by whitening B and
taking an SVD of the whitened factor, never by forming M Mᵀ, because squaring the factor squares its
condition number and destroys the small generalized eigenvalues that the score depends on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

from perceptalign.io import PerceptAlignError

__all__ = [
    "DEFAULT_FRACTIONS",
    "NTPSResult",
    "Subspace",
    "autoregressive_subspace",
    "generalized_top_eigenvectors",
    "linear_setting_bounds",
    "ntps_all_layers",
    "ntps_for_layer",
    "orthonormal_basis",
    "orthonormal_projection_score",
    "perception_subspace",
    "projection_score",
    "reference_ntps",
]

_EPS = float(np.finfo(np.float64).eps)

#: The published sweep of k as fractions of a rank: 0.05, 0.10, …, 0.95 as exact two-decimal floats
#: (``np.arange(0.05, 1, 0.05)`` would give 0.15000000000000002 and friends).
DEFAULT_FRACTIONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))

# B must be a second-moment matrix; eigenvalues below −_PSD_SLACK·λ_max mean it is not one
# (float32-accumulated statistics can be slightly indefinite, so the slack is generous; such
# directions are dropped by the whitening anyway).
_PSD_SLACK = 1e-4
# Relative asymmetry tolerated in B before refusing it (rounding of separately accumulated entries).
_SYM_RTOL = 1e-5


# --------------------------------------------------------------------------------------------------
# input handling


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """Convert a torch tensor / array-like to a finite float64 2-D numpy array, or explain what is wrong."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PerceptAlignError(
            f"{name} could not be read as a float matrix ({exc}); pass a numeric numpy array or torch tensor."
        ) from exc
    if arr.ndim != 2:
        raise PerceptAlignError(
            f"{name} must be a 2-D matrix, got shape {arr.shape}; pass the d×d / d×C "
            "statistic itself, not a batch or a flattened vector."
        )
    if arr.size == 0:
        raise PerceptAlignError(
            f"{name} is empty (shape {arr.shape}); recompute the statistics on non-empty data."
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise PerceptAlignError(
            f"{name} contains {bad} NaN/inf entries; the statistics are corrupt — "
            "recompute them (in float64) and check the hidden states for overflow."
        )
    return arr


def _check_square(B: np.ndarray, name: str) -> None:
    if B.shape[0] != B.shape[1]:
        raise PerceptAlignError(
            f"{name} must be square, got shape {B.shape}; pass the d×d second-moment matrix."
        )


def _check_pair(M: np.ndarray, B: np.ndarray, m_name: str, b_name: str) -> None:
    _check_square(B, b_name)
    if M.shape[0] != B.shape[0]:
        raise PerceptAlignError(
            f"{m_name} has {M.shape[0]} rows but {b_name} is {B.shape[0]}×{B.shape[1]}; "
            "both must come from the same layer of the same model."
        )


def _symmetrized(B: np.ndarray, name: str) -> np.ndarray:
    scale = float(np.max(np.abs(B)))
    if float(np.max(np.abs(B - B.T))) > _SYM_RTOL * max(scale, np.finfo(np.float64).tiny):
        raise PerceptAlignError(
            f"{name} is not symmetric; it must be a second-moment matrix such as M_xx "
            "or C0 (did you pass C1 or M_xy in its place?)."
        )
    return 0.5 * (B + B.T)


# --------------------------------------------------------------------------------------------------
# generalized eigen-solver


@dataclass
class Subspace:
    """Top generalized eigenvectors of (M Mᵀ, B).

    ``vectors`` has B-orthonormal columns (Vᵀ B V = I, B including any ridge) in DESCENDING eigenvalue order;
    ``values`` are the eigenvalues σ² of the whitened SVD. Only the first ``rank`` columns carry information:
    the rest have (numerically) zero eigenvalue and are an arbitrary basis of a degenerate space.
    """

    vectors: np.ndarray
    values: np.ndarray
    rank: int
    whitened_rank: int = 0
    """Number of directions of B kept by the whitening (dimension of the solved problem)."""


def _whitener(B: np.ndarray, rtol: float | None, ridge: float, name: str) -> tuple[np.ndarray, float]:
    """W = Q_r Λ_r^{-1/2} over the numerically positive directions of B (+ ridge), and √(λ_max/λ_min,kept).

    The cut-off is RELATIVE (λ > λ_max·rtol, rtol = d·eps by default) so that it is invariant to the scale
    of the hidden states; an absolute cut-off such as 1e-8 keeps noise for small activations and discards
    signal for large ones.
    """
    d = B.shape[0]
    if ridge < 0 or not math.isfinite(ridge):
        raise PerceptAlignError(f"ridge must be a finite number ≥ 0, got {ridge}.")
    if rtol is not None and not (0 <= rtol < 1):
        raise PerceptAlignError(
            f"rtol must be in [0, 1), got {rtol}; it is the eigenvalue cut-off relative to λ_max."
        )
    B = _symmetrized(B, name)
    if ridge > 0:
        # Ridge relative to the mean eigenvalue trace(B)/d, so that one ridge value means the same for
        # every layer and every model size regardless of the activation scale.
        B = B + (ridge * float(np.trace(B)) / d) * np.eye(d)
    lam, Q = np.linalg.eigh(B)
    lam_max = float(lam[-1])
    if lam_max <= 0:
        raise PerceptAlignError(
            f"{name} has no positive eigenvalue (it is zero or negative definite); "
            "the statistics hold no data — check that the texts are non-empty (and, "
            "for C0, that some have at least two tokens)."
        )
    if float(lam[0]) < -_PSD_SLACK * lam_max:
        raise PerceptAlignError(
            f"{name} is not positive semidefinite (λ_min/λ_max = "
            f"{lam[0] / lam_max:.3g}); it must be an uncentered second-moment matrix "
            "such as M_xx or C0."
        )
    factor = d * _EPS if rtol is None else rtol
    keep = lam > lam_max * factor
    lam_k, Q_k = lam[keep], Q[:, keep]
    W = Q_k / np.sqrt(lam_k)
    return W, math.sqrt(lam_max / float(lam_k[0]))


def generalized_top_eigenvectors(
    M: Any, B: Any, *, rtol: float | None = None, ridge: float = 0.0
) -> Subspace:
    """Top generalized eigenvectors of (M Mᵀ, B) by whitening B and an SVD of Wᵀ M; M Mᵀ is never formed.

    B = QΛQᵀ; directions with λ ≤ λ_max·(rtol or d·eps) are dropped (they are rounding noise, and for
    N < d data an exact null space), so the problem is solved on range(B): components of M in the dropped
    space are invisible. ``ridge`` adds ridge·trace(B)/d·I to B first. With W = Q_r Λ_r^{-1/2} and
    Wᵀ M = u s vᵀ the eigenvectors are W u (B-orthonormal) with eigenvalues s², descending.

    ``rank`` counts s_i > s_max·max(r, m)·eps·√(λ_max/λ_min,kept): numpy's matrix-rank rule, widened by the
    conditioning of the whitening, because an error of eps·‖M‖ in M is amplified up to λ_min^{-1/2} by W while
    s_max is only guaranteed to be ≥ λ_max^{-1/2}·‖M‖-scale.
    """
    M_ = _as_matrix(M, "M")
    B_ = _as_matrix(B, "B")
    _check_pair(M_, B_, "M", "B")
    return _solve(M_, B_, rtol=rtol, ridge=ridge, b_name="B")


def _solve(M: np.ndarray, B: np.ndarray, *, rtol: float | None, ridge: float, b_name: str) -> Subspace:
    W, cond_sqrt = _whitener(B, rtol, ridge, b_name)
    u, s, _ = np.linalg.svd(W.T @ M, full_matrices=False)
    r = W.shape[1]
    if s.size == 0 or s[0] == 0.0:
        rank = 0
    else:
        tol = float(s[0]) * max(r, M.shape[1]) * _EPS * cond_sqrt
        rank = int(np.count_nonzero(s > tol))
    return Subspace(vectors=W @ u, values=s**2, rank=rank, whitened_rank=r)


def perception_subspace(M_xx: Any, M_xy: Any, *, rtol: float | None = None, ridge: float = 0.0) -> Subspace:
    """Perception subspace U: generalized eigenvectors of (M_xy M_xyᵀ, M_xx).

    Only the first ``rank`` (≤ C) columns are informative; their span is the column space of M_xx⁻¹ M_xy, the
    least-squares linear probe.
    """
    M_xx_ = _as_matrix(M_xx, "M_xx")
    M_xy_ = _as_matrix(M_xy, "M_xy")
    _check_pair(M_xy_, M_xx_, "M_xy", "M_xx")
    return _solve(M_xy_, M_xx_, rtol=rtol, ridge=ridge, b_name="M_xx")


def autoregressive_subspace(C0: Any, C1: Any, *, rtol: float | None = None, ridge: float = 0.0) -> Subspace:
    """Autoregressive subspace V: generalized eigenvectors of (C1 C1ᵀ, C0).

    C1 C1ᵀ / C0 come from predicting the next hidden state linearly from the running prefix sum.
    """
    C0_ = _as_matrix(C0, "C0")
    C1_ = _as_matrix(C1, "C1")
    _check_pair(C1_, C0_, "C1", "C0")
    if C1_.shape != C0_.shape:
        raise PerceptAlignError(
            f"C1 has shape {C1_.shape} but C0 has {C0_.shape}; both must be d×d from one layer."
        )
    return _solve(C1_, C0_, rtol=rtol, ridge=ridge, b_name="C0")


# --------------------------------------------------------------------------------------------------
# scores


def orthonormal_basis(A: Any, *, rtol: float | None = None) -> np.ndarray:
    """Orthonormal basis of span(A) from an SVD, dropping singular values ≤ s_max·(rtol or max(shape)·eps).

    SVD rather than unpivoted QR so that dependent or zero columns cannot inflate the basis.
    """
    A_ = _as_matrix(A, "A")
    if A_.shape[1] == 0:
        return np.zeros((A_.shape[0], 0))
    u, s, _ = np.linalg.svd(A_, full_matrices=False)
    if s[0] == 0.0:
        return np.zeros((A_.shape[0], 0))
    factor = max(A_.shape) * _EPS if rtol is None else rtol
    return u[:, s > s[0] * factor]


def _scores_inputs(U: Any, V: Any) -> tuple[np.ndarray, np.ndarray]:
    U_ = _as_matrix(U, "U")
    V_ = _as_matrix(V, "V")
    if U_.shape[0] != V_.shape[0]:
        raise PerceptAlignError(
            f"U has {U_.shape[0]} rows but V has {V_.shape[0]}; both must live in "
            "the same d-dimensional hidden space."
        )
    return U_, V_


def projection_score(U: Any, V: Any) -> float:
    """‖P_V U‖²_F / ‖U‖²_F, P_V the orthogonal projector onto span(V) (rank-revealing: V may be deficient).

    In [0, 1]; 1 iff span(U) ⊂ span(V), 0 iff they are orthogonal. Columns of U weigh by their squared norm,
    which for B-orthonormal U favours low-variance directions (see ``orthonormal_projection_score``).
    """
    U_, V_ = _scores_inputs(U, V)
    total = float(np.sum(U_**2))
    if total == 0.0:
        raise PerceptAlignError(
            "U is zero, so the projection score is undefined; the perception subspace "
            "is empty (check that M_xy is non-zero)."
        )
    Q = orthonormal_basis(V_)
    return min(1.0, float(np.sum((Q.T @ U_) ** 2)) / total)


def orthonormal_projection_score(U: Any, V: Any) -> float:
    """‖P_V Q_U‖²_F / k_U with Q_U an orthonormal basis of span(U): the mean cos² of the principal angles.

    Depends on span(U) only, not on how its columns are scaled.
    """
    U_, V_ = _scores_inputs(U, V)
    Q_u = orthonormal_basis(U_)
    if Q_u.shape[1] == 0:
        raise PerceptAlignError(
            "U is zero, so the projection score is undefined; the perception subspace "
            "is empty (check that M_xy is non-zero)."
        )
    Q_v = orthonormal_basis(V_)
    return min(1.0, float(np.sum((Q_v.T @ Q_u) ** 2)) / Q_u.shape[1])


# --------------------------------------------------------------------------------------------------
# NTPS for one layer


@dataclass
class NTPSResult:
    """NTPS of one layer for a sweep of k_V (one entry per fraction or per absolute k).

    ``ntps``: default definition, ‖P_{V_k} U‖²/‖U‖² with U the rank(M_xy) informative, M_xx-orthonormal
    perception directions. ``ntps_orthonormal``: the same with U orthonormalised (mean cos² of the
    principal angles). ``ntps_probe``: ‖P_{V_k} W*‖²/‖W*‖² with W* = M_xx⁻¹M_xy the least-squares probe —
    the quantity for which the linear-setting bounds hold (``linear_setting_bounds``). ``ntps_reference``:
    the PUBLISHED selection (``reference_ntps``; ill-posed, for comparison with published numbers only),
    None when not computed.
    """

    fractions: list[float] | None
    ks: list[int]
    ntps: np.ndarray
    ntps_orthonormal: np.ndarray
    ntps_reference: np.ndarray | None
    k_u: int
    rank_v: int
    ntps_probe: np.ndarray | None = None


def _validate_fractions(fractions: Sequence[float]) -> list[float]:
    fr = [float(f) for f in fractions]
    if not fr:
        raise PerceptAlignError("fractions is empty; pass at least one fraction in (0, 1], e.g. 0.5.")
    bad = [f for f in fr if not (0.0 < f <= 1.0)]
    if bad:
        raise PerceptAlignError(
            f"fractions must lie in (0, 1]; got {bad}. Use absolute ks for explicit sizes."
        )
    return fr


def _ks_from_fractions(fractions: Sequence[float], rank: int) -> list[int]:
    """k = max(1, floor(f·rank)); rounded to 9 decimals first so 0.29·100 gives 29, not 28."""
    return [max(1, math.floor(round(f * rank, 9))) for f in fractions]


def _validate_ks(ks: Sequence[int], rank_v: int) -> list[int]:
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not float(k).is_integer():
            raise PerceptAlignError(f"ks must be integers, got {k!r}.")
        k_int = int(k)
        if not 1 <= k_int <= rank_v:
            raise PerceptAlignError(
                f"k = {k_int} is outside 1..{rank_v}: the autoregressive subspace of "
                f"this layer has numerical rank {rank_v}. Pass ks within that range "
                "or use fractions."
            )
        out.append(k_int)
    if not out:
        raise PerceptAlignError("ks is empty; pass at least one k ≥ 1 (or use fractions).")
    return out


def _require_two_classes(M_xy: np.ndarray) -> None:
    nonzero = int(np.count_nonzero(np.any(M_xy != 0.0, axis=0)))
    if nonzero == 0:
        raise PerceptAlignError(
            "M_xy is all zero, so there is no perception subspace (rank 0); the labels "
            "were not accumulated — check the label column and that the data are "
            "non-empty."
        )
    if nonzero < 2:
        raise PerceptAlignError(
            f"M_xy has {nonzero} non-zero class column(s) out of {M_xy.shape[1]}: the "
            "data contain a single class, so NTPS is meaningless; use a split with at "
            "least two classes."
        )


def _layer_matrices(M_xx: Any, M_xy: Any, C0: Any, C1: Any) -> tuple[np.ndarray, ...]:
    M_xx_ = _as_matrix(M_xx, "M_xx")
    M_xy_ = _as_matrix(M_xy, "M_xy")
    C0_ = _as_matrix(C0, "C0")
    C1_ = _as_matrix(C1, "C1")
    _check_pair(M_xy_, M_xx_, "M_xy", "M_xx")
    _check_pair(C1_, C0_, "C1", "C0")
    d = M_xx_.shape[0]
    if C0_.shape != (d, d) or C1_.shape != (d, d):
        raise PerceptAlignError(
            f"M_xx is {d}×{d} but C0 is {C0_.shape} and C1 is {C1_.shape}; all "
            "statistics of a layer must share the hidden size d."
        )
    _require_two_classes(M_xy_)
    return M_xx_, M_xy_, C0_, C1_


def ntps_for_layer(
    M_xx: Any,
    M_xy: Any,
    C0: Any,
    C1: Any,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    ks: Sequence[int] | None = None,
    rtol: float | None = None,
    ridge: float = 0.0,
    reference: bool = True,
) -> NTPSResult:
    """NTPS of one layer for every k_V of the sweep, with both subspaces solved ONCE.

    U = the r_y = rank(M_xy) top generalized eigenvectors of (M_xy M_xyᵀ, M_xx); V_k = the top k_V of
    (C1 C1ᵀ, C0) with k_V = max(1, floor(f·r_V)), r_V the numerical rank of the autoregressive problem, or the
    absolute ``ks`` (1 ≤ k ≤ r_V) when given. Because the columns of V are ordered, one Householder QR of V
    gives nested orthonormal bases (span Q[:, :k] = span V[:, :k]) and every k costs a cumulative sum.
    ``reference=False`` skips the (slow, ill-posed) published estimator; with absolute ``ks`` its entries
    for a k above its own kept rank (``reference_ntps``) are NaN.
    """
    M_xx_, M_xy_, C0_, C1_ = _layer_matrices(M_xx, M_xy, C0, C1)
    U_sub = _solve(M_xy_, M_xx_, rtol=rtol, ridge=ridge, b_name="M_xx")
    if U_sub.rank == 0:
        raise PerceptAlignError(
            "M_xy has numerical rank 0 within the range of M_xx: the class means carry "
            "no direction; check the labels and that M_xy and M_xx come from the same "
            "data."
        )
    V_sub = _solve(C1_, C0_, rtol=rtol, ridge=ridge, b_name="C0")
    if V_sub.rank == 0:
        raise PerceptAlignError(
            "C1 has numerical rank 0: no next-token structure was accumulated; check "
            "that the texts have at least two tokens."
        )
    k_u, rank_v = U_sub.rank, V_sub.rank
    if ks is None:
        frs: list[float] | None = _validate_fractions(fractions)
        k_list = _ks_from_fractions(frs, rank_v)
    else:
        frs = None
        k_list = _validate_ks(ks, rank_v)

    U = U_sub.vectors[:, :k_u]
    Q_v, _ = scipy.linalg.qr(V_sub.vectors[:, :rank_v], mode="economic", check_finite=False)
    proj = Q_v.T @ U  # row j: components of the U columns along the j-th nested direction of V
    idx = np.asarray(k_list) - 1

    col_energy = np.cumsum(proj**2, axis=0)  # (r_V, k_u), cumulative over k
    ntps = np.minimum(1.0, col_energy.sum(axis=1)[idx] / float(np.sum(U**2)))
    # W* = M_xx⁻¹ M_xy = U diag(s) vᵀ, so ‖P W*‖² = Σ_i s_i² ‖P U_i‖²: the probe weights columns by σ².
    s2 = U_sub.values[:k_u]
    ntps_probe = np.minimum(1.0, (col_energy @ s2)[idx] / float(np.sum(U**2, axis=0) @ s2))
    Q_u = orthonormal_basis(U)
    ntps_orth = np.minimum(1.0, np.cumsum(np.sum((Q_v.T @ Q_u) ** 2, axis=1))[idx] / Q_u.shape[1])

    ref = None
    if reference:
        ref = _reference_from_matrices(
            M_xx_, M_xy_, C0_, C1_, fractions=frs, ks=k_list if frs is None else None, strict=False
        )
    return NTPSResult(
        fractions=frs,
        ks=k_list,
        ntps=ntps,
        ntps_orthonormal=ntps_orth,
        ntps_reference=ref,
        k_u=k_u,
        rank_v=rank_v,
        ntps_probe=ntps_probe,
    )


# --------------------------------------------------------------------------------------------------
# the published selection

# Absolute eigenvalue cut-off of the published whitening (K_sweep.py, nullspace_eig_generalized: tol=1e-8).
_PUBLISHED_TOL = 1e-8
# The published default sweep is np.arange(0.05, 1.0, 0.05), whose floats carry arange's rounding
# (0.7000000000000001, …); int(f·r) turns that into one more column for some ranks (0.7·180 → 126, not 125).
# Fractions of DEFAULT_FRACTIONS are therefore replaced by the published floats.
_PUBLISHED_SWEEP: dict[float, float] = {
    f: float(a) for f, a in zip(DEFAULT_FRACTIONS, np.arange(0.05, 1.0, 0.05), strict=True)
}


def _float32(name: str, M: np.ndarray) -> np.ndarray:
    """The float32 copy the published code works on; refuse values float32 cannot hold."""
    with np.errstate(over="ignore"):  # reported below, with the fix
        out = M.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise PerceptAlignError(
            f"`{name}` overflows float32 (largest |entry| {float(np.max(np.abs(M))):.3g}), and the published "
            "NTPS computes in float32; rescale the hidden states or use the default NTPS."
        )
    return out


def _published_solve(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The published null-space generalized solver, in float32: X = W·y with W = Q_r·diag(λ_r^{-1/2}) over
    the eigenpairs of B with λ > 1e-8 (absolute), y the ascending eigenvectors of Wᵀ A W; r = X.shape[1].

    The same calls in the same order as the published code (eigh, inv of the diagonal, matmuls), so the
    float32 rounding is reproduced too.
    """
    lam, Q = scipy.linalg.eigh(B)
    keep = lam > _PUBLISHED_TOL
    if not np.any(keep):  # nothing survives the cut-off: an empty basis, so every score is 0/0 or 0
        return np.zeros((B.shape[0], 0), dtype=B.dtype)
    W = Q[:, keep] @ np.linalg.inv(np.sqrt(np.diag(lam[keep])))
    _, y = scipy.linalg.eigh(W.T @ A @ W)
    return W @ y


def _published_score(U_k: np.ndarray, V_k: np.ndarray) -> float:
    """‖P U_k‖²_F / ‖U_k‖²_F with P = V_k·pinv(V_k), in float32 as published (empty U_k: 0/0 = NaN)."""
    P = V_k @ np.linalg.pinv(V_k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.linalg.norm(P @ U_k, "fro") ** 2 / np.linalg.norm(U_k, "fro") ** 2)


def _reference_from_matrices(
    M_xx: np.ndarray,
    M_xy: np.ndarray,
    C0: np.ndarray,
    C1: np.ndarray,
    *,
    fractions: Sequence[float] | None,
    ks: Sequence[int] | None,
    strict: bool = True,
) -> np.ndarray:
    """The published scores for each fraction (or absolute k); ``strict=False`` gives NaN for a k beyond
    the published kept rank r_V instead of raising (``ntps_for_layer`` validates ks against its own rank)."""
    Mxx, Mxy = _float32("M_xx", M_xx), _float32("M_xy", M_xy)
    B0, B1 = _float32("C0", C0), _float32("C1", C1)
    U = _published_solve(Mxy @ Mxy.T, Mxx)
    V = _published_solve(B1 @ B1.T, B0)
    r_u, r_v = U.shape[1], V.shape[1]
    if ks is None:
        fr = [_PUBLISHED_SWEEP.get(f, f) for f in _validate_fractions(fractions or ())]
        pairs: list[tuple[int, int] | None] = [(int(f * r_u), int(f * r_v)) for f in fr]
    else:
        pairs = []
        for k in ks:
            if isinstance(k, bool) or not float(k).is_integer():
                raise PerceptAlignError(f"ks must be integers, got {k!r}.")
            k_int = int(k)
            if 1 <= k_int <= r_v:
                pairs.append((min(k_int, r_u), k_int))
            elif strict or k_int < 1:
                raise PerceptAlignError(
                    f"`ks` contains {k_int}, outside 1..{r_v}: the published solver keeps r_V = {r_v} "
                    "eigenvalues of C0 above its absolute cut-off 1e-8. Pass ks within that range."
                )
            else:
                pairs.append(None)
        if not pairs:
            raise PerceptAlignError("ks is empty; pass at least one k ≥ 1 (or use fractions).")
    cache: dict[tuple[int, int], float] = {}
    out = np.full(len(pairs), np.nan)
    for i, pair in enumerate(pairs):
        if pair is None:
            continue
        if pair not in cache:
            cache[pair] = _published_score(U[:, : pair[0]], V[:, : pair[1]])
        out[i] = cache[pair]
    return out


def reference_ntps(
    M_xx: Any,
    M_xy: Any,
    C0: Any,
    C1: Any,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    ks: Sequence[int] | None = None,
) -> np.ndarray:
    """The PUBLISHED NTPS estimator (Cheng et al. 2025, K_sweep.py, dense path), reproduced exactly so that
    published numbers can be compared; do not use it to rank layers or models.

    Steps, all in float32 as published: for (A, B) = (M_xy M_xyᵀ, M_xx) → U and (C1 C1ᵀ, C0) → V, B is
    eigendecomposed, eigenvalues ≤ 1e-8 (absolute) are dropped, the r kept ones whitened
    (W = Q_r diag(λ_r^{-1/2})), and X = W y with y the ascending eigenvectors of Wᵀ A W; r_U, r_V are the
    kept ranks (the column counts of U and V).
    For each fraction f: U_k = the first int(f·r_U) columns of U, V_k = the first int(f·r_V) of V,
    P = V_k pinv(V_k), score = ‖P U_k‖²_F / ‖U_k‖²_F. int(f·r_U) = 0 gives NaN (0/0, as published);
    int(f·r_V) = 0 with a non-empty U_k gives 0 (P = 0). Not clipped to [0, 1], as published: float32
    rounding can put a score a few ulps above 1. Fractions of ``DEFAULT_FRACTIONS`` are evaluated
    at the published np.arange floats (0.7 as 0.7000000000000001), so int(f·r) matches column for column.
    Absolute ``ks`` (not in the published code) take the first k columns of both, 1 ≤ k ≤ r_V; a k above
    r_U takes all r_U columns of U (what the published slicing U[:, :k] does).

    Known defects, which is why the default NTPS (``ntps_for_layer``) exists:

    * Bottom of both spectra. eigh is ascending, so the first columns are the SMALLEST generalized
      eigenvalues. M_xy M_xyᵀ has rank ≤ C, so U carries label information only in its last rank(M_xy)
      columns; every U_k with int(f·r_U) ≤ r_U − rank(M_xy) lies inside a degenerate (zero) eigenspace whose
      basis LAPACK picks from rounding: the score is an artefact of that arbitrary basis.
    * The cut-off is absolute, so the estimator is not scale invariant: multiplying the hidden states by s
      multiplies B by s² and moves eigenvalues across 1e-8, changing r_U, r_V, every int(f·r) and the score.
    * Singular B (N < d, dead units) does NOT crash (no Cholesky; the cut-off drops what it can), but in
      float32 its null eigenvalues come back as rounding noise of either sign, ~1e-9–1e-7·‖B‖: once
      ‖B‖ ≳ 1 (hidden states of LLMs: ‖B‖ ≫ 1) the positive ones, up to about half, exceed 1e-8 and are
      kept, whitened by λ^{-1/2} into large spurious directions (N = 10 texts, d = 24: r_U = 14 at unit
      scale, the true rank 10 after scaling the hidden states by 2⁻¹⁰).
    * float32 throughout: the degenerate eigenvectors and pinv(V_k) (condition number up to
      (λ_max/1e-8)^{1/2}) carry float32 rounding into the score.
    """
    M_xx_, M_xy_, C0_, C1_ = _layer_matrices(M_xx, M_xy, C0, C1)
    return _reference_from_matrices(
        M_xx_, M_xy_, C0_, C1_, fractions=fractions if ks is None else None, ks=ks
    )


# --------------------------------------------------------------------------------------------------
# all layers


def _stat(obj: Any, key: str, layer: int) -> Any:
    if isinstance(obj, Mapping):
        if key in obj:
            return obj[key]
    elif hasattr(obj, key):
        return getattr(obj, key)
    raise PerceptAlignError(
        f"statistics of layer {layer} lack {key!r}; each layer needs M_xx, M_xy, C0 and C1."
    )


def _json_list(values: np.ndarray | None) -> list[float | None] | None:
    if values is None:
        return None
    return [None if not math.isfinite(float(v)) else float(v) for v in values]


def ntps_all_layers(
    stats: Mapping[int, Any],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    ks: Sequence[int] | None = None,
    rtol: float | None = None,
    ridge: float = 0.0,
    reference: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """NTPS of every layer of ``stats`` (layer → object/mapping with M_xx, M_xy, C0, C1), JSON-ready.

    Keys: layers, fractions (None with absolute ks), ks / ntps / ntps_orthonormal / ntps_probe /
    ntps_reference (lists over layers of lists over k; reference None when skipped, NaN entries → None),
    k_u and rank_v (per layer). ``progress(done, total)`` is called after each layer.
    """
    if not stats:
        raise PerceptAlignError("no layer statistics given; compute statistics for at least one layer first.")
    layers = sorted(int(k) for k in stats)
    total = len(layers)
    shape: tuple[int, int] | None = None
    out: dict[str, Any] = {
        "layers": layers,
        "fractions": None if ks is not None else _validate_fractions(fractions),
        "ks": [],
        "ntps": [],
        "ntps_orthonormal": [],
        "ntps_probe": [],
        "ntps_reference": [] if reference else None,
        "k_u": [],
        "rank_v": [],
    }
    by_int = {int(k): v for k, v in stats.items()}
    for done, layer in enumerate(layers, start=1):
        obj = by_int[layer]
        mats = [_stat(obj, key, layer) for key in ("M_xx", "M_xy", "C0", "C1")]
        mats = [
            _as_matrix(m, f"{key} (layer {layer})")
            for m, key in zip(mats, ("M_xx", "M_xy", "C0", "C1"), strict=True)
        ]
        this_shape = mats[1].shape
        if shape is not None and this_shape != shape:
            raise PerceptAlignError(
                f"layer {layer} has M_xy of shape {this_shape} but earlier layers "
                f"{shape}; all layers must come from one model (same d) and one label "
                "set (same C)."
            )
        shape = this_shape
        try:
            res = ntps_for_layer(
                *mats, fractions=fractions, ks=ks, rtol=rtol, ridge=ridge, reference=reference
            )
        except PerceptAlignError as exc:
            raise PerceptAlignError(f"layer {layer}: {exc}") from exc
        out["ks"].append(res.ks)
        out["ntps"].append(_json_list(res.ntps))
        out["ntps_orthonormal"].append(_json_list(res.ntps_orthonormal))
        out["ntps_probe"].append(_json_list(res.ntps_probe))
        if reference:
            out["ntps_reference"].append(_json_list(res.ntps_reference))
        out["k_u"].append(res.k_u)
        out["rank_v"].append(res.rank_v)
        if progress is not None:
            progress(done, total)
    return out


# --------------------------------------------------------------------------------------------------
# theory: linear setting


def linear_setting_bounds(X: Any, Y: Any, P: Any) -> dict[str, float]:
    """Bounds on the excess MSE of a linear probe restricted to an encoder subspace (docs/ntps.md,
    "Definitions").

    Σ = XᵀX/N (uncentered), W* = Σ⁻¹Σ_xy (the least-squares solution, computed by lstsq on X), P an orthogonal
    projector (d×d, symmetric, idempotent). The restricted predictor sees P x only, so its coefficients are
    B = P G; its best excess loss over the unrestricted optimum is min_B tr((B − W*)ᵀ Σ (B − W*)). Taking
    B = P W* and bounding Σ between λ_min I and λ_max I gives

        λ_min(Σ)·‖W*‖²_F·(1 − NTPS) ≤ excess ≤ λ_max(Σ)·‖W*‖²_F·(1 − NTPS),   NTPS := ‖P W*‖²_F / ‖W*‖²_F,

    since ‖(I − P) W*‖² = ‖W*‖²(1 − NTPS) for an ORTHOGONAL P. That NTPS is the projection score of the probe
    W* itself (``ntps_probe`` of ``ntps_for_layer`` when P projects onto V_k); with Σ = I all three are equal.
    MSE is the mean over samples of the squared Euclidean error summed over outputs; ``excess_loss`` is the
    difference of the two fitted in-sample MSEs, computed stably as ‖X(B̂ − W*)‖²_F / N (Pythagoras).
    """
    X_ = _as_matrix(X, "X")
    Y_raw = Y.detach().cpu().double().numpy() if hasattr(Y, "detach") else Y
    Y_arr = np.asarray(Y_raw, dtype=np.float64)
    Y_ = _as_matrix(Y_arr[:, None] if Y_arr.ndim == 1 else Y_arr, "Y")
    P_ = _as_matrix(P, "P")
    n, d = X_.shape
    if Y_.shape[0] != n:
        raise PerceptAlignError(f"X has {n} rows but Y has {Y_.shape[0]}; pass one target row per sample.")
    if P_.shape != (d, d):
        raise PerceptAlignError(f"P must be {d}×{d} (a projector on the {d} input features), got {P_.shape}.")
    p_scale = max(1.0, float(np.linalg.norm(P_)))
    if (np.linalg.norm(P_ - P_.T) > 1e-8 * p_scale) or (np.linalg.norm(P_ @ P_ - P_) > 1e-8 * p_scale):
        raise PerceptAlignError(
            "P must be an orthogonal projector (symmetric and idempotent); build it "
            "as Q Qᵀ from an orthonormal basis Q (e.g. subspace.orthonormal_basis)."
        )
    sv = np.linalg.svd(X_, compute_uv=False)
    lam = sv**2 / n
    if n < d or lam[-1] <= lam[0] * d * _EPS:
        raise PerceptAlignError(
            f"Σ = XᵀX/N is singular (N = {n}, d = {d}); the bounds need Σ ≻ 0: use "
            "N ≥ d samples with linearly independent features."
        )
    W_star = np.linalg.lstsq(X_, Y_, rcond=None)[0]
    w_norm2 = float(np.sum(W_star**2))
    if w_norm2 == 0.0:
        raise PerceptAlignError(
            "W* = Σ⁻¹Σ_xy is zero (Y is orthogonal to every feature), so NTPS is undefined."
        )
    p_lam, p_vec = np.linalg.eigh(0.5 * (P_ + P_.T))
    Q_p = p_vec[:, p_lam > 0.5]
    if Q_p.shape[1]:
        G = np.linalg.lstsq(X_ @ Q_p, Y_, rcond=None)[0]
        B_hat = Q_p @ G
    else:
        B_hat = np.zeros_like(W_star)
    excess = float(np.sum((X_ @ (B_hat - W_star)) ** 2)) / n
    ntps = min(1.0, float(np.sum((Q_p.T @ W_star) ** 2)) / w_norm2)
    gap = max(0.0, 1.0 - ntps)
    return {
        "lower": float(lam[-1]) * w_norm2 * gap,
        "upper": float(lam[0]) * w_norm2 * gap,
        "excess_loss": excess,
        "ntps": ntps,
    }

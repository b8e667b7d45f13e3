"""Tests of the published NTPS estimator (``reference_ntps``, the ``ntps_reference`` table).

Source: the authors' K_sweep.py (github.com/Yu-AngCheng/NTPS, commit 0f877f7, identical to 1d2a433 for
that file), default dense path: ``nullspace_eig_generalized`` and the ``fraction_k`` loop of
``alignment_score``. ``_transcribed`` below restates those steps one by one in plain numpy/scipy float32.

Tolerances. The estimator takes the BOTTOM of both spectra, where U lies in a degenerate eigenspace whose
basis LAPACK picks from rounding, so it is discontinuous at the last bit: a transcription that rounds
differently (float64, numpy's eigh driver, another whitening order) disagrees by up to ~0.1, not by an
epsilon. The transcription therefore makes the SAME float32 LAPACK/BLAS calls on the same float32 inputs
and is expected to agree to the bit; ``EXACT`` = 1e-6 (≈ 10 float32 ulps of a score ≤ 1) is a guard for
harmless output conversions, far below any selection error (one column more or less moves the score
by ~1e-2 in these cases: 0.7289 vs 0.7194 at 63 vs 62 of 90 columns). The independent float64 checks
(``_full_fraction_score``) use ``FLOAT32`` = 1e-5: the score at f = 1 depends only on the kept
eigenvectors and eigenvalues of M_xx and C0, whose float32 errors are ~κ·6e-8 with κ ≲ 1e2 here
(measured disagreement ≤ 3e-7).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.subspace import DEFAULT_FRACTIONS, ntps_for_layer, reference_ntps

EXACT = 1e-6
FLOAT32 = 1e-5
CUTOFF = 1e-8  # the published absolute eigenvalue cut-off


# ------------------------------------------------------------------------------------------- helpers


def _stats(seed: int, n: int, d: int, n_classes: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Per-text moments (docs/ntps.md, "Definitions") of random hidden-state sequences multiplied by
    ``scale``: M_xx, M_xy scale as scale², scale and C0, C1 as scale² — the same texts at another scale."""
    rng = np.random.default_rng(seed)
    means = 0.7 * rng.standard_normal((n_classes, d))
    mix = rng.standard_normal((d, d)) / math.sqrt(d)
    labels = rng.integers(0, n_classes, n)
    labels[:n_classes] = np.arange(n_classes)
    M_xx, M_xy = np.zeros((d, d)), np.zeros((d, n_classes))
    C0, C1 = np.zeros((d, d)), np.zeros((d, d))
    for y in labels:
        L = int(rng.integers(2, 10))
        H = np.empty((L, d))
        h = rng.standard_normal(d)
        for t in range(L):
            h = 0.6 * mix @ h + rng.standard_normal(d) + means[y]
            H[t] = h
        H *= scale
        x = H.mean(axis=0)
        M_xx += np.outer(x, x)
        M_xy[:, y] += x
        S = np.cumsum(H, axis=0)
        C0 += S[:-1].T @ S[:-1]
        C1 += S[:-1].T @ H[1:]
    return {"M_xx": M_xx / n, "M_xy": M_xy / n, "C0": C0 / n, "C1": C1 / n}


def _null_space_solver(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Published generalized solver, step by step in float32: eigh(B) ascending; keep λ > 1e-8; W = Q_kept
    diag(λ_kept)^{-1/2} (inverse of the diagonal square root); eigh(Wᵀ A W) ascending; X = W y."""
    lam, Q = scipy.linalg.eigh(B)
    kept = [j for j in range(lam.shape[0]) if lam[j] > CUTOFF]
    inv_sqrt = np.linalg.inv(np.sqrt(np.diag(lam[kept])))
    W = Q[:, kept] @ inv_sqrt
    A_white = W.T @ A @ W
    _, y = scipy.linalg.eigh(A_white)
    return W @ y


def _published_bases(s: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """U from (M_xy M_xyᵀ, M_xx) and V from (C1 C1ᵀ, C0), every matrix cast to float32 first."""
    M_xx, M_xy, C0, C1 = (s[k].astype(np.float32) for k in ("M_xx", "M_xy", "C0", "C1"))
    return _null_space_solver(M_xy @ M_xy.T, M_xx), _null_space_solver(C1 @ C1.T, C0)


def _score(U_k: np.ndarray, V_k: np.ndarray) -> float:
    P = V_k @ np.linalg.pinv(V_k)
    with np.errstate(invalid="ignore"):
        return float(np.linalg.norm(P @ U_k, "fro") ** 2 / np.linalg.norm(U_k, "fro") ** 2)


def _transcribed(s: dict[str, np.ndarray], fraction_k: np.ndarray) -> np.ndarray:
    """The published fraction loop: the first int(f·r) columns of each basis, r its own column count."""
    U, V = _published_bases(s)
    out = []
    for f in fraction_k:
        n_u = int(f * U.shape[1])
        n_v = int(f * V.shape[1])
        out.append(_score(U[:, :n_u], V[:, :n_v]))
    return np.array(out)


PUBLISHED_SWEEP = np.arange(0.05, 1.0, 0.05)  # the published default fraction_k, floats as arange makes them


def _full_fraction_score(s: dict[str, np.ndarray]) -> float:
    """Independent float64 value at f = 1: U_k = W_U y spans the kept range of M_xx with ‖U_k‖² and ‖P U_k‖²
    independent of the orthogonal y, so score = Σ_j λ_j⁻¹ ‖P_V q_j‖² / Σ_j λ_j⁻¹ over the kept eigenpairs
    (λ_j, q_j) of M_xx, with P_V the orthogonal projector onto the kept eigenvectors of C0."""
    lam_u, Q_u = scipy.linalg.eigh(s["M_xx"].astype(np.float32))
    lam_v, Q_v = scipy.linalg.eigh(s["C0"].astype(np.float32))
    keep_u, keep_v = lam_u > CUTOFF, lam_v > CUTOFF
    q_u, w = Q_u[:, keep_u].astype(np.float64), 1.0 / lam_u[keep_u].astype(np.float64)
    basis_v, _ = np.linalg.qr(Q_v[:, keep_v].astype(np.float64))
    captured = np.sum((basis_v.T @ q_u) ** 2, axis=0)
    return float(np.sum(w * captured) / np.sum(w))


# (seed, texts, d, classes, scale): full rank; larger d with C = 3; N < d with rounding-noise directions
# above the cut-off; the same texts scaled by 2⁻¹⁰ so that the noise falls below it; eigenvalues of M_xx
# straddling 1e-8 (4 of 16 dropped).
CASES = [
    (1, 200, 12, 2, 1.0),
    (2, 300, 40, 3, 1.0),
    (3, 10, 24, 2, 1.0),
    (3, 10, 24, 2, 2.0**-10),
    (4, 200, 16, 3, 2.0**-12),
]


# ----------------------------------------------------------------------------- (a) the published steps


@pytest.mark.parametrize("case", CASES)
def test_matches_a_transcription_of_the_published_steps(case: tuple[int, int, int, int, float]) -> None:
    s = _stats(*case)
    got = reference_ntps(**s, fractions=DEFAULT_FRACTIONS)
    want = _transcribed(s, PUBLISHED_SWEEP)
    np.testing.assert_allclose(got, want, rtol=0, atol=EXACT, equal_nan=True)
    per_layer = ntps_for_layer(**s).ntps_reference  # the table column is the same computation
    assert per_layer is not None
    np.testing.assert_array_equal(per_layer, got)


@pytest.mark.parametrize("case", CASES)
def test_full_fraction_matches_an_independent_float64_formula(case: tuple[int, int, int, int, float]) -> None:
    s = _stats(*case)
    got = reference_ntps(**s, fractions=(1.0,))[0]
    assert got == pytest.approx(_full_fraction_score(s), abs=FLOAT32)


def test_rank_deficient_case_has_a_genuinely_lower_score_at_full_fraction() -> None:
    # Few texts of few tokens: C0 is rank deficient and its kept range misses part of M_xx's range, so the
    # f = 1 score is strictly below 1 — the closed form is then a real check, not 1 = 1.
    s = _stats(5, 3, 20, 2, 2.0**-6)
    _, V = _published_bases(s)
    assert V.shape[1] < 20
    got = reference_ntps(**s, fractions=(1.0,))[0]
    assert got < 0.95
    assert got == pytest.approx(_full_fraction_score(s), abs=FLOAT32)


def test_published_sweep_floats_decide_the_column_count() -> None:
    # 0.7 as a two-decimal float is 0.69999999999999996, the published arange gives 0.7000000000000001;
    # at rank 90 int() turns that into 62 vs 63 columns. The reference must use the published float.
    i = DEFAULT_FRACTIONS.index(0.7)
    assert int(0.7 * 90) == 62 and int(PUBLISHED_SWEEP[i] * 90) == 63
    s = _stats(6, 300, 90, 2)
    U, V = _published_bases(s)
    assert U.shape[1] == V.shape[1] == 90
    got = reference_ntps(**s, fractions=(0.7,))[0]
    assert got == pytest.approx(_transcribed(s, PUBLISHED_SWEEP[[i]])[0], abs=EXACT)
    assert abs(got - _transcribed(s, np.array([0.7]))[0]) > 1e-3  # one column fewer: 0.7194 vs 0.7289


# ------------------------------------------------------------------------ (b) the absolute cut-off


def test_scaling_the_hidden_states_changes_the_kept_rank_and_the_score() -> None:
    # Powers of two scale every float32 entry exactly, so as long as the same eigenvalues pass 1e-8 the
    # published score is unchanged to the bit; once the scale pushes eigenvalues of M_xx below the ABSOLUTE
    # cut-off, r_U drops and every int(f·r_U) and the score change. The default NTPS does not move.
    unit, same, small = (_stats(4, 200, 16, 3, sc) for sc in (1.0, 2.0**-11, 2.0**-12))
    ranks = [_published_bases(x)[0].shape[1] for x in (unit, same, small)]
    assert ranks[0] == ranks[1] == 16 and ranks[2] < 16
    ref_unit, ref_same, ref_small = (reference_ntps(**x) for x in (unit, same, small))
    np.testing.assert_allclose(ref_same, ref_unit, rtol=0, atol=EXACT, equal_nan=True)
    assert np.nanmax(np.abs(ref_small - ref_unit)) > 0.05
    ntps_unit = ntps_for_layer(**unit, reference=False).ntps
    ntps_small = ntps_for_layer(**small, reference=False).ntps
    np.testing.assert_allclose(ntps_small, ntps_unit, rtol=1e-9)  # float64, relative tolerance


def test_singular_b_keeps_rounding_noise_at_unit_scale_only() -> None:
    # N = 10 texts, d = 24: rank(M_xx) = 10. At unit scale float32 rounding noise of the 14 null
    # eigenvalues exceeds 1e-8 for some of them, which the published cut-off keeps; scaled by 2⁻¹⁰, the noise
    # falls below the cut-off and exactly the true rank survives. No crash either way.
    unit, scaled = _stats(3, 10, 24, 2, 1.0), _stats(3, 10, 24, 2, 2.0**-10)
    r_unit, r_scaled = _published_bases(unit)[0].shape[1], _published_bases(scaled)[0].shape[1]
    assert r_scaled == 10 < r_unit
    for ref in (reference_ntps(**unit), reference_ntps(**scaled)):  # int(0.05·r_U) = 0 only at f = 0.05
        assert math.isnan(ref[0]) and np.all(np.isfinite(ref[1:]))


# -------------------------------------------------------------------------- (c) empty selections


def test_empty_u_selection_is_nan_and_empty_v_selection_is_zero() -> None:
    s = _stats(4, 200, 16, 3)  # r_U = 16: int(0.05·16) = 0 columns of U → 0/0
    assert math.isnan(reference_ntps(**s, fractions=(0.05,))[0])
    assert math.isnan(_transcribed(s, PUBLISHED_SWEEP[:1])[0])
    # C0 of rank 2 (noise below 1e-8 at this scale): at f = 0.25 U has int(0.25·12) = 3 columns, V none,
    # so P = 0 and the published score is 0, not NaN.
    base = _stats(1, 200, 12, 2)
    G = np.random.default_rng(7).standard_normal((12, 2))
    s0 = {**base, "C0": 1e-3 * G @ G.T}
    U, V = _published_bases(s0)
    assert (U.shape[1], V.shape[1]) == (12, 2)
    got = reference_ntps(**s0, fractions=(0.25, 0.5))
    np.testing.assert_allclose(got, _transcribed(s0, np.array([0.25, 0.5])), atol=EXACT)
    assert got[0] == 0.0 and got[1] > 0.0  # int(0.5·2) = 1 column of V


# ------------------------------------------------------------------------------------ (d) absolute ks


def test_absolute_ks_take_the_first_k_columns_of_each() -> None:
    s = _stats(3, 10, 24, 2, 2.0**-10)  # r_U = 10, r_V = 24
    U, V = _published_bases(s)
    assert (U.shape[1], V.shape[1]) == (10, 24)
    ks = [1, 5, 10, 17, 24]
    want = [_score(U[:, :k], V[:, :k]) for k in ks]  # k > r_U: the slice holds all r_U columns
    np.testing.assert_allclose(reference_ntps(**s, ks=ks), want, rtol=0, atol=EXACT)
    assert reference_ntps(**s, ks=[17])[0] != reference_ntps(**s, ks=[10])[0]  # V still grows


def test_absolute_ks_outside_the_kept_rank_are_refused_or_nan_in_the_table() -> None:
    s = _stats(3, 10, 24, 2, 2.0**-10)
    for bad, match in (([0], "outside 1..24"), ([25], "outside 1..24"), ([2.5], "integers"), ([], "empty")):
        with pytest.raises(PerceptAlignError, match=match):
            reference_ntps(**s, ks=bad)
    # Tiny hidden states: C0's eigenvalues fall below the absolute cut-off, so the published r_V is below
    # the rank the default NTPS validates ks against; the table marks those k as NaN instead of failing.
    tiny = _stats(4, 200, 16, 3, 2.0**-16)
    _, V = _published_bases(tiny)
    r_v = V.shape[1]
    assert r_v < 16
    res = ntps_for_layer(**tiny, ks=[1, 16])
    assert res.ntps_reference is not None
    assert math.isnan(res.ntps_reference[1]) and res.rank_v == 16
    with pytest.raises(PerceptAlignError, match="ks"):
        reference_ntps(**tiny, ks=[16])


def test_float32_overflow_is_refused() -> None:
    s = _stats(1, 200, 12, 2)
    with pytest.raises(PerceptAlignError, match="float32"):
        reference_ntps(**{**s, "C0": s["C0"] * 1e38})

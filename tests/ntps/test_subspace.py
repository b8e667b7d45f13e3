"""Tests of the NTPS generalized-eigen solver, the scores and the linear-setting bounds.

Tolerances: the random problems are small (d ≤ 40) and well conditioned (κ(B) ≲ 1e4) unless stated, so
float64 results of two different but backward-stable routes agree to ~1e-12; 1e-9 leaves three orders of
margin without letting a real error (≥ 1e-6) through.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.subspace import (
    DEFAULT_FRACTIONS,
    NTPSResult,
    autoregressive_subspace,
    generalized_top_eigenvectors,
    linear_setting_bounds,
    ntps_all_layers,
    ntps_for_layer,
    orthonormal_basis,
    orthonormal_projection_score,
    perception_subspace,
    projection_score,
)

TOL = 1e-9


# ------------------------------------------------------------------------------------------- helpers


def _projector(A: np.ndarray) -> np.ndarray:
    """Orthogonal projector onto span(A) by the pseudo-inverse (independent of the module's SVD basis)."""
    return A @ np.linalg.pinv(A)


def _spd(rng: np.random.Generator, d: int, cond: float = 100.0) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * np.logspace(0, -math.log10(cond), d)) @ Q.T


def _sequences(
    rng: np.random.Generator, n: int, d: int, n_classes: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Variable-length 'hidden state' sequences with a class-dependent mean and some temporal structure."""
    means = 0.7 * rng.standard_normal((n_classes, d))
    mix = rng.standard_normal((d, d)) / math.sqrt(d)
    labels = rng.integers(0, n_classes, n)
    labels[:n_classes] = np.arange(n_classes)  # every class present
    seqs = []
    for y in labels:
        L = int(rng.integers(2, 12))
        H = np.empty((L, d))
        h = rng.standard_normal(d)
        for t in range(L):
            h = 0.6 * mix @ h + rng.standard_normal(d) + means[y]
            H[t] = h
        seqs.append(H)
    return seqs, labels


def _stats(seqs: list[np.ndarray], labels: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Direct per-sequence moments of docs/ntps.md, "Definitions" (a slow independent reference of
    statistics.py)."""
    d = seqs[0].shape[1]
    M_xx, M_xy = np.zeros((d, d)), np.zeros((d, n_classes))
    C0, C1 = np.zeros((d, d)), np.zeros((d, d))
    for H, y in zip(seqs, labels, strict=True):
        x = H.mean(axis=0)
        M_xx += np.outer(x, x)
        M_xy[:, y] += x
        S = np.cumsum(H, axis=0)
        C0 += S[:-1].T @ S[:-1]
        C1 += S[:-1].T @ H[1:]
    n = len(seqs)
    return {"M_xx": M_xx / n, "M_xy": M_xy / n, "C0": C0 / n, "C1": C1 / n}


def _layer(seed: int, n: int = 60, d: int = 16, n_classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seqs, labels = _sequences(rng, n, d, n_classes)
    return _stats(seqs, labels, n_classes)


def _transformed(seed: int, A: np.ndarray, n: int = 60, d: int = 16) -> dict[str, np.ndarray]:
    """Statistics of the same texts with every hidden state h replaced by A h."""
    rng = np.random.default_rng(seed)
    seqs, labels = _sequences(rng, n, d, 3)
    return _stats([H @ A.T for H in seqs], labels, 3)


# ------------------------------------------------------------------------------------------- solver


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solver_matches_scipy_generalized_eigh(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d, m = 12, 4
    M, B = rng.standard_normal((d, m)), _spd(rng, d)
    sub = generalized_top_eigenvectors(M, B)
    lam, vec = scipy.linalg.eigh(M @ M.T, B)  # ascending, the independent slow route
    np.testing.assert_allclose(sub.values, lam[::-1][:m], rtol=TOL)
    assert sub.rank == m and sub.vectors.shape == (d, m)
    # Random M gives distinct eigenvalues, so each eigenvector is unique up to sign: compare projectors.
    for j in range(m):
        np.testing.assert_allclose(_projector(sub.vectors[:, [j]]), _projector(vec[:, [d - 1 - j]]), atol=TOL)
    # And the defining equation holds column by column.
    resid = M @ (M.T @ sub.vectors) - (B @ sub.vectors) * sub.values
    assert np.max(np.abs(resid)) < TOL * np.max(sub.values)


def test_b_orthonormal_descending_and_rank() -> None:
    rng = np.random.default_rng(3)
    d = 15
    M, B = rng.standard_normal((d, d)), _spd(rng, d, cond=1e4)
    sub = generalized_top_eigenvectors(M, B)
    np.testing.assert_allclose(sub.vectors.T @ B @ sub.vectors, np.eye(d), atol=1e-8)  # κ=1e4 costs ~4 digits
    assert np.all(np.diff(sub.values) <= 0)
    assert sub.rank == d and sub.whitened_rank == d


def test_numerical_rank_of_the_factor() -> None:
    rng = np.random.default_rng(4)
    d = 10
    B = _spd(rng, d)
    low = rng.standard_normal((d, 2)) @ rng.standard_normal((2, 5))  # exact rank 2, 5 columns
    sub = generalized_top_eigenvectors(low, B)
    assert sub.rank == 2
    assert sub.values[2] < 1e-20 * sub.values[0]  # the rest is rounding noise, far below the kept spectrum
    zero_col = np.column_stack([rng.standard_normal(d), np.zeros(d)])
    assert generalized_top_eigenvectors(zero_col, B).rank == 1


def test_rank_survives_ill_conditioned_b() -> None:
    rng = np.random.default_rng(40)
    B = _spd(rng, 30, cond=1e12)
    M = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 3))  # exact rank 2
    sub = generalized_top_eigenvectors(M, B)
    assert sub.whitened_rank == 30 and sub.rank == 2


def test_components_of_m_outside_range_b_are_invisible() -> None:
    rng = np.random.default_rng(41)
    X = rng.standard_normal((6, 15))
    B = X.T @ X / 6
    M_in = X.T @ rng.standard_normal((6, 2))
    null = scipy.linalg.null_space(X)  # 15×9, orthogonal to range(B)
    a = generalized_top_eigenvectors(M_in, B)
    b = generalized_top_eigenvectors(M_in + null @ rng.standard_normal((9, 2)), B)
    np.testing.assert_allclose(b.values, a.values, rtol=1e-8)
    np.testing.assert_allclose(_projector(b.vectors), _projector(a.vectors), atol=1e-8)


def test_rank_deficient_b_matches_range_restricted_problem() -> None:
    rng = np.random.default_rng(5)
    n, d, c = 8, 20, 3
    X = rng.standard_normal((n, d))
    Y = rng.standard_normal((n, c))
    B, M = X.T @ X / n, X.T @ Y / n  # N < d: B has rank 8, range(M) ⊂ range(B)
    sub = generalized_top_eigenvectors(M, B)
    assert sub.whitened_rank == n
    # Independent route 1: restrict to an orthonormal basis Z of range(B) where B is positive definite.
    Z = scipy.linalg.orth(X.T)
    lam, y = scipy.linalg.eigh(Z.T @ M @ M.T @ Z, Z.T @ B @ Z)
    np.testing.assert_allclose(sub.values, lam[::-1][:c], rtol=1e-8)
    for j in range(c):
        np.testing.assert_allclose(_projector(sub.vectors[:, [j]]), _projector(Z @ y[:, [-1 - j]]), atol=1e-8)
    # Independent route 2: the non-zero eigenvalues of pinv(B) M Mᵀ.
    pinv_vals = np.sort(np.linalg.eigvals(np.linalg.pinv(B) @ M @ M.T).real)[::-1][:c]
    np.testing.assert_allclose(sub.values, pinv_vals, rtol=1e-7)  # non-symmetric eig: a few digits less


def test_ridge_is_relative_to_mean_eigenvalue() -> None:
    rng = np.random.default_rng(6)
    X = rng.standard_normal((5, 12))
    B, M = X.T @ X / 5, rng.standard_normal((12, 2))
    ridge = 0.1
    sub = generalized_top_eigenvectors(M, B, ridge=ridge)
    B_r = B + ridge * np.trace(B) / 12 * np.eye(12)
    assert sub.whitened_rank == 12
    np.testing.assert_allclose(sub.vectors.T @ B_r @ sub.vectors, np.eye(2), atol=TOL)
    lam = scipy.linalg.eigh(M @ M.T, B_r, eigvals_only=True)
    np.testing.assert_allclose(sub.values, lam[::-1][:2], rtol=1e-8)


def test_rtol_controls_the_whitening_cutoff() -> None:
    rng = np.random.default_rng(7)
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    B = (Q * np.array([1.0, 0.5, 0.1, 1e-3, 1e-6, 1e-9])) @ Q.T
    M = rng.standard_normal((6, 2))
    assert generalized_top_eigenvectors(M, B).whitened_rank == 6
    assert generalized_top_eigenvectors(M, B, rtol=1e-4).whitened_rank == 4


def test_subspace_helpers_accept_torch_and_match_numpy() -> None:
    s = _layer(8)
    u_np = perception_subspace(s["M_xx"], s["M_xy"])
    u_t = perception_subspace(torch.from_numpy(s["M_xx"]), torch.from_numpy(s["M_xy"]))
    np.testing.assert_array_equal(u_np.values, u_t.values)
    v = autoregressive_subspace(s["C0"], s["C1"])
    ref = scipy.linalg.eigh(s["C1"] @ s["C1"].T, s["C0"], eigvals_only=True)[::-1]
    np.testing.assert_allclose(v.values, ref, rtol=1e-7)  # κ(C0) ~1e3 and C1C1ᵀ squares it: ~7 digits left


# ------------------------------------------------------------------------------------------- scores


@pytest.mark.parametrize("seed", range(4))
def test_projection_scores_match_independent_formulas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = 14
    U, V = rng.standard_normal((d, 3)), rng.standard_normal((d, 6))
    s = projection_score(U, V)
    expected = np.sum((_projector(V) @ U) ** 2) / np.sum(U**2)
    assert 0.0 <= s <= 1.0
    assert s == pytest.approx(expected, abs=TOL)
    cos2 = np.cos(scipy.linalg.subspace_angles(U, V)) ** 2  # principal angles, an independent route
    assert orthonormal_projection_score(U, V) == pytest.approx(cos2.mean(), abs=TOL)


def test_projection_score_extremes_and_rank_deficient_v() -> None:
    rng = np.random.default_rng(9)
    d = 10
    V = rng.standard_normal((d, 4))
    U_in = V @ rng.standard_normal((4, 2))
    assert projection_score(U_in, V) == pytest.approx(1.0, abs=TOL)
    assert orthonormal_projection_score(U_in, V) == pytest.approx(1.0, abs=TOL)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    assert projection_score(Q[:, 4:6], Q[:, :4]) == pytest.approx(0.0, abs=TOL)
    # Duplicated and zero columns must not inflate the projector (a naive inverse of VᵀV would fail here).
    V_dup = np.column_stack([V, V[:, :2], np.zeros(d)])
    U = rng.standard_normal((d, 3))
    assert projection_score(U, V_dup) == pytest.approx(projection_score(U, V), abs=TOL)


def test_scores_invariant_to_change_of_basis_of_v() -> None:
    rng = np.random.default_rng(10)
    U, V = rng.standard_normal((12, 3)), rng.standard_normal((12, 5))
    R = rng.standard_normal((5, 5)) + 3 * np.eye(5)  # invertible
    assert projection_score(U, V @ R) == pytest.approx(projection_score(U, V), abs=TOL)
    orth = orthonormal_projection_score(U, V)
    assert orthonormal_projection_score(U, V @ R) == pytest.approx(orth, abs=TOL)
    # The orthonormal variant depends on span(U) only; the default one weighs U's columns by their norm.
    S = np.diag([10.0, 1.0, 0.1])
    assert orthonormal_projection_score(U @ S, V) == pytest.approx(orth, abs=TOL)
    assert abs(projection_score(U @ S, V) - projection_score(U, V)) > 1e-3


def test_orthonormal_basis_drops_dependent_columns() -> None:
    rng = np.random.default_rng(11)
    A = rng.standard_normal((9, 3))
    Q = orthonormal_basis(np.column_stack([A, A @ rng.standard_normal((3, 2))]))
    assert Q.shape == (9, 3)
    np.testing.assert_allclose(Q.T @ Q, np.eye(3), atol=TOL)
    np.testing.assert_allclose(Q @ Q.T, _projector(A), atol=TOL)


# ------------------------------------------------------------------------------------------- NTPS of a layer


def test_default_fractions_are_exact_decimals() -> None:
    assert len(DEFAULT_FRACTIONS) == 19
    assert all(f == float(f"{f:.2f}") for f in DEFAULT_FRACTIONS)
    np.testing.assert_allclose(np.diff(DEFAULT_FRACTIONS), 0.05, atol=1e-12)
    assert DEFAULT_FRACTIONS[0] == 0.05 and DEFAULT_FRACTIONS[-1] == 0.95


@pytest.mark.parametrize("seed", [12, 13])
def test_ntps_for_layer_matches_direct_per_k_computation(seed: int) -> None:
    s = _layer(seed)
    res = ntps_for_layer(**s, reference=False)
    assert isinstance(res, NTPSResult)
    U_sub = perception_subspace(s["M_xx"], s["M_xy"])
    V_sub = autoregressive_subspace(s["C0"], s["C1"])
    assert res.k_u == U_sub.rank == 3 and res.rank_v == V_sub.rank == 16
    assert res.ks == [max(1, math.floor(round(f * 16, 9))) for f in DEFAULT_FRACTIONS]
    U = U_sub.vectors[:, : res.k_u]
    W_star = np.linalg.solve(s["M_xx"], s["M_xy"])  # the least-squares probe, independently
    for i, k in enumerate(res.ks):
        Vk = V_sub.vectors[:, :k]
        assert res.ntps[i] == pytest.approx(projection_score(U, Vk), abs=1e-8)
        assert res.ntps_orthonormal[i] == pytest.approx(orthonormal_projection_score(U, Vk), abs=1e-8)
        assert res.ntps_probe is not None
        assert res.ntps_probe[i] == pytest.approx(projection_score(W_star, Vk), abs=1e-8)
    for arr in (res.ntps, res.ntps_orthonormal, res.ntps_probe):
        assert np.all((arr >= 0) & (arr <= 1))
        assert np.all(np.diff(arr) >= -1e-12)  # nested V_k: monotone non-decreasing in k_V


def test_full_rank_v_contains_everything() -> None:
    s = _layer(14)
    res = ntps_for_layer(**s, ks=[16], reference=False)
    assert res.fractions is None and res.ks == [16]
    assert res.ntps[0] == pytest.approx(1.0, abs=1e-9)
    assert res.ntps_orthonormal[0] == pytest.approx(1.0, abs=1e-9)


def test_u_spans_least_squares_probe() -> None:
    s = _layer(15)
    U = perception_subspace(s["M_xx"], s["M_xy"])
    W_star = np.linalg.solve(s["M_xx"], s["M_xy"])
    np.testing.assert_allclose(_projector(U.vectors[:, : U.rank]), _projector(W_star), atol=1e-8)


def test_n_smaller_than_d_matches_range_restricted_solution() -> None:
    rng = np.random.default_rng(16)
    seqs, labels = _sequences(rng, 10, 40, 2)  # 10 texts in 40 dimensions: M_xx has rank 10
    s = _stats(seqs, labels, 2)
    res = ntps_for_layer(**s, ks=[1, 5, 20], reference=False)
    X = np.stack([H.mean(axis=0) for H in seqs])
    Z = scipy.linalg.orth(X.T)
    _, y = scipy.linalg.eigh(Z.T @ s["M_xy"] @ s["M_xy"].T @ Z, Z.T @ s["M_xx"] @ Z)
    U_ref = Z @ y[:, ::-1][:, : res.k_u]
    V = autoregressive_subspace(s["C0"], s["C1"]).vectors
    for i, k in enumerate([1, 5, 20]):
        assert res.ntps[i] == pytest.approx(projection_score(U_ref, V[:, :k]), abs=1e-7)


@pytest.mark.parametrize("c", [-3.7, 1e-3, 250.0])
def test_ntps_invariant_to_rescaling_hidden_states(c: float) -> None:
    base = ntps_for_layer(**_layer(17), reference=False)
    scaled = ntps_for_layer(**_transformed(17, c * np.eye(16)), reference=False)
    assert scaled.ks == base.ks and scaled.k_u == base.k_u
    for a, b in (
        (scaled.ntps, base.ntps),
        (scaled.ntps_orthonormal, base.ntps_orthonormal),
        (scaled.ntps_probe, base.ntps_probe),
    ):
        np.testing.assert_allclose(a, b, atol=1e-9)


def test_ntps_invariant_to_orthogonal_maps_of_hidden_states() -> None:
    Q, _ = np.linalg.qr(np.random.default_rng(18).standard_normal((16, 16)))
    base = ntps_for_layer(**_layer(19), reference=False)
    rotated = ntps_for_layer(**_transformed(19, Q), reference=False)
    np.testing.assert_allclose(rotated.ntps, base.ntps, atol=1e-9)
    np.testing.assert_allclose(rotated.ntps_orthonormal, base.ntps_orthonormal, atol=1e-9)


def test_general_invertible_map_of_hidden_states() -> None:
    """What h → A h (A invertible, not c·orthogonal) does — and why NTPS is NOT invariant to it.

    U: (A M_xy M_xyᵀ Aᵀ, A M_xx Aᵀ) is a congruence, so eigenvalues are unchanged and U → A⁻ᵀ U.
    V: C1 → A C1 Aᵀ makes C1 C1ᵀ → A C1 (AᵀA) C1ᵀ Aᵀ, not a congruence: the next state h_{t+1} is measured
    in the Euclidean metric, so V's eigenvalues themselves change. And even for U alone the orthogonal
    projector of the score does not commute with A⁻ᵀ. NTPS is invariant only to c·orthogonal maps.
    """
    rng = np.random.default_rng(20)
    Q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    A = (Q * np.logspace(-1, 1, 16)) @ Q.T + 0.3 * rng.standard_normal((16, 16))
    s, t = _layer(21), _transformed(21, A)
    a, b = perception_subspace(s["M_xx"], s["M_xy"]), perception_subspace(t["M_xx"], t["M_xy"])
    np.testing.assert_allclose(b.values[:3], a.values[:3], rtol=1e-6)  # κ(A)≈1e2 enters squared: ~1e-8 here
    A_inv_t = np.linalg.inv(A).T
    for j in range(3):  # distinct eigenvalues: compare 1-D spans
        np.testing.assert_allclose(
            _projector(b.vectors[:, [j]]), _projector(A_inv_t @ a.vectors[:, [j]]), atol=1e-6
        )
    va, vb = autoregressive_subspace(s["C0"], s["C1"]), autoregressive_subspace(t["C0"], t["C1"])
    assert np.max(np.abs(vb.values / va.values - 1)) > 0.1
    base = ntps_for_layer(**s, reference=False)
    mapped = ntps_for_layer(**t, reference=False)
    assert np.max(np.abs(mapped.ntps - base.ntps)) > 1e-3


# ------------------------------------------------------------------------------------------- all layers


class _LayerStats:
    def __init__(self, d: dict[str, np.ndarray]) -> None:
        self.M_xx, self.M_xy, self.C0, self.C1 = d["M_xx"], d["M_xy"], d["C0"], d["C1"]


def test_ntps_all_layers_is_json_ready_and_matches_per_layer() -> None:
    stats = {2: _layer(25), 0: _LayerStats(_layer(26))}
    calls: list[tuple[int, int]] = []
    out = ntps_all_layers(stats, progress=lambda done, total: calls.append((done, total)))
    text = json.dumps(out, allow_nan=False)  # plain lists and None only
    assert json.loads(text)["layers"] == [0, 2]
    assert calls == [(1, 2), (2, 2)]
    assert out["fractions"] == list(DEFAULT_FRACTIONS)
    per = ntps_for_layer(**_layer(25))
    np.testing.assert_allclose(out["ntps"][1], per.ntps, atol=0)
    np.testing.assert_allclose(out["ntps_orthonormal"][1], per.ntps_orthonormal, atol=0)
    assert per.ntps_reference is not None
    np.testing.assert_array_equal(np.array(out["ntps_reference"][1], dtype=float), per.ntps_reference)
    assert out["ntps_reference"][1][0] is None  # int(0.05·16) = 0: the published selection is empty
    assert out["ks"][1] == per.ks and out["k_u"] == [3, 3] and out["rank_v"] == [16, 16]


def test_ntps_all_layers_absolute_ks_and_torch_float32() -> None:
    s = _layer(27)
    t32 = {k: torch.from_numpy(v).float() for k, v in s.items()}
    out = ntps_all_layers({5: t32}, ks=[1, 4, 16], reference=False)
    assert out["fractions"] is None and out["ntps_reference"] is None and out["ks"] == [[1, 4, 16]]
    res64 = ntps_for_layer(**{k: v.double().numpy() for k, v in t32.items()}, ks=[1, 4, 16], reference=False)
    np.testing.assert_allclose(out["ntps"][0], res64.ntps, atol=0)


# ------------------------------------------------------------------------------------------- theory


def _random_projector(rng: np.random.Generator, d: int, p: int) -> np.ndarray:
    Q, _ = np.linalg.qr(rng.standard_normal((d, p)))
    return Q @ Q.T


@pytest.mark.parametrize("seed", range(3))
def test_linear_setting_bounds_hold_for_random_sigma(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, d, c = 400, 8, 3
    X = rng.standard_normal((n, d)) @ (rng.standard_normal((d, d)) + np.diag(np.logspace(0, 1, d)))
    Y = X @ rng.standard_normal((d, c)) + 0.5 * rng.standard_normal((n, c))
    W_star = np.linalg.solve(X.T @ X, X.T @ Y)
    for p in (1, 3, 6):
        P = _random_projector(rng, d, p)
        b = linear_setting_bounds(X, Y, P)
        slack = 1e-9 * b["upper"]
        assert b["lower"] - slack <= b["excess_loss"] <= b["upper"] + slack
        assert b["lower"] < b["upper"]  # anisotropic Σ: the bounds are not tight here
        # The excess is the difference of two fitted MSEs (naive route, no Pythagoras).
        Qp = scipy.linalg.orth(P)
        G = np.linalg.lstsq(X @ Qp, Y, rcond=None)[0]
        mse_r = np.mean(np.sum((Y - X @ Qp @ G) ** 2, axis=1))
        mse_u = np.mean(np.sum((Y - X @ W_star) ** 2, axis=1))
        assert b["excess_loss"] == pytest.approx(mse_r - mse_u, rel=1e-7)  # difference of O(1) numbers
        expected = np.linalg.norm(P @ W_star) ** 2 / np.linalg.norm(W_star) ** 2
        assert b["ntps"] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("p", [0, 2, 5, 8])
def test_linear_setting_bounds_are_tight_when_sigma_is_identity(p: int) -> None:
    rng = np.random.default_rng(30 + p)
    n, d = 200, 8
    Q, _ = np.linalg.qr(rng.standard_normal((n, d)))
    X = math.sqrt(n) * Q  # XᵀX/N = I exactly (to rounding)
    Y = rng.standard_normal((n, 2)) + X @ rng.standard_normal((d, 2))
    P = _random_projector(rng, d, p) if p else np.zeros((d, d))
    b = linear_setting_bounds(X, Y, P)
    scale = max(b["upper"], 1e-300)
    assert abs(b["lower"] - b["excess_loss"]) <= 1e-10 * scale + 1e-14
    assert abs(b["upper"] - b["excess_loss"]) <= 1e-10 * scale + 1e-14
    if p == d:
        assert b["ntps"] == pytest.approx(1.0, abs=TOL) and b["excess_loss"] == pytest.approx(0.0, abs=1e-12)
    if p == 0:
        assert b["ntps"] == 0.0


def test_ntps_probe_is_the_score_of_the_bounds() -> None:
    """With X = sentence vectors and Y = one-hot labels, M_xx = XᵀX/N, M_xy = XᵀY/N: the bound's NTPS for P
    onto V_k is ntps_probe of the layer, which ties the theory to the statistics."""
    rng = np.random.default_rng(31)
    seqs, labels = _sequences(rng, 60, 16, 3)
    s = _stats(seqs, labels, 3)
    X = np.stack([H.mean(axis=0) for H in seqs])
    Y = np.eye(3)[labels]
    res = ntps_for_layer(**s, ks=[4], reference=False)
    V = autoregressive_subspace(s["C0"], s["C1"]).vectors[:, :4]
    b = linear_setting_bounds(X, Y, _projector(V))
    assert res.ntps_probe is not None
    assert b["ntps"] == pytest.approx(res.ntps_probe[0], abs=1e-8)


# ------------------------------------------------------------------------------------------- errors


def test_errors_for_bad_statistics() -> None:
    s = _layer(32)
    bad = dict(s, M_xx=s["M_xx"].copy())
    bad["M_xx"][0, 0] = np.nan
    with pytest.raises(PerceptAlignError, match="NaN/inf"):
        ntps_for_layer(**bad)
    bad = dict(s, C1=s["C1"].copy())
    bad["C1"][1, 2] = np.inf
    with pytest.raises(PerceptAlignError, match="NaN/inf"):
        ntps_all_layers({0: bad})
    with pytest.raises(PerceptAlignError, match="all zero"):
        ntps_for_layer(**dict(s, M_xy=np.zeros_like(s["M_xy"])))
    single = np.zeros_like(s["M_xy"])
    single[:, 1] = s["M_xy"][:, 1]
    with pytest.raises(PerceptAlignError, match="single class"):
        ntps_for_layer(**dict(s, M_xy=single))
    with pytest.raises(PerceptAlignError, match="rows"):
        ntps_for_layer(**dict(s, M_xy=s["M_xy"][:-1]))
    with pytest.raises(PerceptAlignError, match="hidden size"):
        ntps_for_layer(**dict(s, C0=s["C0"][:-1, :-1], C1=s["C1"][:-1, :-1]))
    with pytest.raises(PerceptAlignError, match="not symmetric"):
        ntps_for_layer(**dict(s, C0=s["C1"]))
    with pytest.raises(PerceptAlignError, match="positive semidefinite"):
        ntps_for_layer(**dict(s, M_xx=-s["M_xx"] + 0.1 * np.eye(16)))
    with pytest.raises(PerceptAlignError, match="no positive eigenvalue"):
        ntps_for_layer(**dict(s, C0=np.zeros((16, 16))))
    with pytest.raises(PerceptAlignError, match="2-D"):
        ntps_for_layer(**dict(s, M_xy=s["M_xy"][:, 0]))
    with pytest.raises(PerceptAlignError, match="ridge"):
        ntps_for_layer(**s, ridge=-1.0)
    with pytest.raises(PerceptAlignError, match="rtol"):
        generalized_top_eigenvectors(s["M_xy"], s["M_xx"], rtol=2.0)


def test_errors_for_bad_k_and_fractions() -> None:
    s = _layer(33)
    with pytest.raises(PerceptAlignError, match=r"outside 1\.\.16"):
        ntps_for_layer(**s, ks=[0])
    with pytest.raises(PerceptAlignError, match=r"outside 1\.\.16"):
        ntps_for_layer(**s, ks=[17])
    with pytest.raises(PerceptAlignError, match="integers"):
        ntps_for_layer(**s, ks=[2.5])  # type: ignore[list-item]
    with pytest.raises(PerceptAlignError, match="empty"):
        ntps_for_layer(**s, ks=[])
    with pytest.raises(PerceptAlignError, match=r"\(0, 1\]"):
        ntps_for_layer(**s, fractions=[0.0, 0.5])
    with pytest.raises(PerceptAlignError, match=r"\(0, 1\]"):
        ntps_for_layer(**s, fractions=[1.5])


def test_errors_for_all_layers_inputs() -> None:
    with pytest.raises(PerceptAlignError, match="no layer"):
        ntps_all_layers({})
    s = _layer(34)
    with pytest.raises(PerceptAlignError, match="lack 'C1'"):
        ntps_all_layers({0: {k: v for k, v in s.items() if k != "C1"}})
    other = _layer(35, d=12)
    with pytest.raises(PerceptAlignError, match="one model"):
        ntps_all_layers({0: s, 1: other}, reference=False)
    single = dict(s, M_xy=np.column_stack([s["M_xy"][:, 0], np.zeros(16), np.zeros(16)]))
    with pytest.raises(PerceptAlignError, match=r"layer 3: .*single class"):
        ntps_all_layers({3: single})


def test_errors_for_scores_and_bounds() -> None:
    rng = np.random.default_rng(36)
    with pytest.raises(PerceptAlignError, match="rows"):
        projection_score(rng.standard_normal((5, 2)), rng.standard_normal((6, 2)))
    with pytest.raises(PerceptAlignError, match="U is zero"):
        projection_score(np.zeros((5, 2)), rng.standard_normal((5, 2)))
    with pytest.raises(PerceptAlignError, match="U is zero"):
        orthonormal_projection_score(np.zeros((5, 2)), rng.standard_normal((5, 2)))
    X, Y = rng.standard_normal((50, 4)), rng.standard_normal(50)
    with pytest.raises(PerceptAlignError, match="orthogonal projector"):
        linear_setting_bounds(X, Y, rng.standard_normal((4, 4)))
    with pytest.raises(PerceptAlignError, match="4×4"):
        linear_setting_bounds(X, Y, np.eye(3))
    with pytest.raises(PerceptAlignError, match="rows"):
        linear_setting_bounds(X, Y[:-1], np.eye(4))
    with pytest.raises(PerceptAlignError, match="singular"):
        linear_setting_bounds(X[:3], Y[:3], np.eye(4))
    with pytest.raises(PerceptAlignError, match="zero"):
        linear_setting_bounds(X, np.zeros(50), np.eye(4))

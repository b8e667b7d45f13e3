"""Drift-diffusion models fitted by maximum likelihood with PyDDM: the reaction-time baseline for RTify.

Why a module of its own: the first baseline always simulated a fixed 2 % lapse and was the bare
three-parameter model, which cannot produce the slow errors the human random-dot data show at every
coherence. A fair baseline needs the standard extensions, fitted, and a principled choice among them:

* :class:`DDMConfig` declares one variant: constant or exponentially collapsing bound B(t) = B·exp(−t/τ_B),
  optional across-trial variability of drift (sv, normal), start point (sz, uniform) and non-decision time
  (st0, uniform), and an optional *fitted* uniform lapse (never a fixed one);
* :class:`DDM` fits a variant (``fit``), simulates it (``simulate``), scores it against held-out trials
  (``score``) and reports its log-likelihood, AIC and BIC on the training trials;
* :func:`fit_ddm_variants` fits the declared variants (:data:`DDM_VARIANTS`) and selects one by BIC or
  AIC on the training trials only;
* :class:`DDMBaseline` keeps the old constructor for the simple model.

Conventions (noise σ = 1): evidence dX = v dt + dW between ±B(t), upper bound = correct, drift
v = k·condition (or one drift per condition); start point uniform on [−sz/2, sz/2]; non-decision time
uniform on [t0, t0 + st0], so t0 is the *shortest* non-decision time and one box t0 ∈ [0, t0_max] bounds
the fastest possible response of every method alike.

Numerics: PyDDM's implicit (backward-Euler, C) solver for every variant, never the analytical one, so all
likelihoods carry the same discretisation and their AIC/BIC are comparable. The solver works in units of
the starting bound (bound 1, noise 1/B, drift v/B): B is then continuous (PyDDM rounds an off-grid constant
bound up to its x grid, which makes the likelihood a step function of B) and ``dx`` is a fraction of B.
The first-passage mass of each solver step is taken as spread uniformly over that step, so the model's RT
density is piecewise constant on the dt grid; shifting it by a non-decision time is then an exact linear
split between neighbouring steps (the likelihood is continuous in t0 and st0) and ``simulate`` samples
exactly the density that was fitted. Drift variability is integrated by quadrature (:func:`_drift_mixtures`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeResult, minimize

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.metrics import fit_quality
from perceptalign.rtify.trials import conditions as table_conditions
from perceptalign.rtify.trials import default_t0_max, validate_trials

BoundKind = Literal["constant", "collapsing"]
LapseKind = Literal["none", "fitted"]
DriftKind = Literal["linear", "per_condition"]
Criterion = Literal["bic", "aic"]

# A model bin with no probability would make the log-likelihood −inf (e.g. a response faster than t0
# without a lapse); 1e-10 per bin keeps it finite and stiffly penalised without acting as a lapse (its total
# mass over all bins is < 1e-7).
_MASS_FLOOR = 1e-10
_SV_GH_NODES = 7  # Gauss–Hermite nodes per condition for small drift variability (sv < 0.5)
# Parameter boxes in σ = 1 units (B and sz, k·condition in evidence units per s; times in s).
_B_RANGE = (0.25, 4.0)
_TAU_B_RANGE = (0.05, 20.0)  # searched on the rate 1/τ_B; 20 s is a practically constant bound
_SV_MAX = 5.0
_SZ_REL_MAX = 0.9  # start-point half-width as a fraction of B: the start range stays inside the bounds
_ST0_MAX = 0.5
_LAPSE_MAX = 0.3
# Values that free parameters start from when no fit supplies them: inside the box, away from the
# symmetric points sv = 0 and sz = 0 where the likelihood's gradient vanishes.
_NEUTRAL = {"sv": 1.0, "tau_B": 2.0, "sz_rel": 0.3, "st0": 0.1, "lapse": 0.02}
# The same parameters at the values that make a richer variant reduce to a nested one.
_NESTED = {"sv": 0.0, "tau_B": _TAU_B_RANGE[1], "sz_rel": 0.0, "st0": 0.0, "lapse": 0.0}


def _condition_key(value: Any) -> float | str:
    """Conditions compare as floats when numeric (as in validated trial tables), else as strings."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _import_pyddm() -> Any:
    try:
        import pyddm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PerceptAlignError(
            "the drift-diffusion baseline needs PyDDM: pip install perceptalign[ddm] (or pip install pyddm)."
        ) from exc
    return pyddm


@contextlib.contextmanager
def _quiet_pyddm() -> Iterator[None]:
    """PyDDM logs grid warnings and renormalisations at INFO/WARNING; library code stays silent."""
    logger = logging.getLogger("pyddm")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


# --------------------------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------------------------


def _whole_steps(total: float, step: float) -> bool:
    ratio = total / step
    return abs(ratio - round(ratio)) < 1e-6


@dataclass(frozen=True)
class DDMConfig:
    """One drift-diffusion variant and how it is solved and fitted (validated on construction).

    Model: ``bound`` ("constant" or "collapsing", B(t) = B·exp(−t/τ_B)); ``drift_variability`` (sv),
    ``start_variability`` (sz), ``t0_variability`` (st0); ``lapse`` ("none" or "fitted": a uniform-RT,
    random-choice mixture whose weight is fitted); ``drift`` ("linear": v = k·condition, conditions must be
    numeric; "per_condition": one drift per condition, only fitted conditions can be simulated).

    Fit: ``t0_max`` is the upper end of the box t0 ∈ [0, t0_max] (s), the one box every method shares; None
    means min(0.8 s, median training RT). ``condition_on_response`` (default) makes the likelihood
    conditional on a response within ``max_time_s``, right for tables that only contain responses (human
    data); False counts undecided trials with P(no response) and ``simulate`` then returns undecided trials.
    ``n_starts`` seeded random starting points are screened next to the data-driven ones and the
    ``n_local`` best are refined by L-BFGS-B (``max_iter`` iterations each): deterministic given ``seed``.

    Solver: ``dt`` (s) and ``dx`` (fraction of the starting bound; 1/dx must be whole) of PyDDM's implicit
    solver, RTs simulated up to ``max_time_s`` (a whole number of dt steps, above the slowest RT); mean
    drifts are boxed to |v| ≤ ``drift_max``. Backward Euler with step dt is the DDM with each decision
    time τ blurred by Poisson noise of variance dt·τ (SD 0.07 s at τ = 0.5 s, dt = 0.01). Measured: on the
    human training data the variants with st0 reach the same maximum log-likelihood at dt = 0.01 as at
    0.005 (within 3 of ~25,600) with parameters within 2 %, and dx = 0.005 changes it by < 1; the simple
    model, which has no other timing variability, gains ~150 from the blur. In recovery from simulated
    data, dt = 0.01 biases t0 by +15–17 ms, k by +4–12 % and B by up to −4 %; dt = 0.005 halves that
    (twice the time): use it when the parameters themselves are interpreted.
    """

    bound: BoundKind = "constant"
    drift_variability: bool = False
    start_variability: bool = False
    t0_variability: bool = False
    lapse: LapseKind = "none"
    t0_max: float | None = None
    drift: DriftKind = "linear"
    dt: float = 0.01
    dx: float = 0.01
    max_time_s: float = 2.5
    condition_on_response: bool = True
    drift_max: float = 20.0
    n_starts: int = 8
    n_local: int = 2
    max_iter: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        def fail(param: str, problem: str, fix: str) -> None:
            raise PerceptAlignError(f"DDMConfig: `{param}` {problem}; {fix}.")

        choices = {
            "bound": ("constant", "collapsing"),
            "lapse": ("none", "fitted"),
            "drift": ("linear", "per_condition"),
        }
        fixes = {
            "bound": "use 'collapsing' for B(t) = B·exp(−t/τ_B)",
            "lapse": "a fixed lapse weight is not offered (it biases the fit); use 'fitted' or 'none'",
            "drift": "use 'linear' (v = k·condition) or 'per_condition'",
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(name, f"must be one of {list(allowed)}, got {getattr(self, name)!r}", fixes[name])
        for name in ("drift_variability", "start_variability", "t0_variability", "condition_on_response"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                fail(name, f"must be True or False, got {getattr(self, name)!r}", "pass a bool")
        for name in ("dt", "dx", "max_time_s", "drift_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(name, f"must be a finite number, got {value!r}", "pass a float")
        if self.t0_max is not None and (
            isinstance(self.t0_max, bool)
            or not isinstance(self.t0_max, (int, float))
            or not math.isfinite(self.t0_max)
            or self.t0_max <= 0
        ):
            fail(
                "t0_max",
                f"must be a number of seconds > 0 (the upper end of the non-decision-time box), got "
                f"{self.t0_max!r}",
                "pass e.g. t0_max=0.8, or None for min(0.8 s, median training RT)",
            )
        if not 0 < self.dt <= 0.05:
            fail("dt", f"must be in (0, 0.05] s, got {self.dt}", "use 0.01 (fast) or 0.005 (finer)")
        if not (0 < self.dx <= 0.05 and _whole_steps(1.0, self.dx)):
            fail(
                "dx",
                f"must be in (0, 0.05] and split the starting bound (1 in solver units) into whole steps, "
                f"got {self.dx}",
                "use 0.01, 0.005 or 0.02",
            )
        if not (self.max_time_s >= 10 * self.dt and _whole_steps(self.max_time_s, self.dt)):
            fail(
                "max_time_s",
                f"must be at least 10 steps of dt={self.dt} and a whole number of them, "
                f"got {self.max_time_s}",
                "use e.g. 2.5 (s), above the slowest RT in the data",
            )
        if self.drift_max <= 0:
            fail("drift_max", f"must be > 0, got {self.drift_max}", "use e.g. 20 (evidence units per s)")
        ints = {
            "n_starts": (0, 10_000, "use e.g. 8"),
            "n_local": (1, 100, "use 1 or 2"),
            "max_iter": (1, 100_000, "use e.g. 200"),
            "seed": (0, 2**32 - 1, "use a non-negative integer"),
        }
        for name, (lo, hi, fix) in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                fail(name, f"must be an integer in [{lo}, {hi}], got {value!r}", fix)

    def nests(self, other: DDMConfig) -> bool:
        """True if ``other`` is this variant with some features switched off (a collapsing bound with
        τ_B at its upper limit stands in for a constant one), so this variant can only fit better."""
        if self.drift != other.drift or (self.bound == "constant" and other.bound == "collapsing"):
            return False
        flags = ("drift_variability", "start_variability", "t0_variability")
        if any(getattr(other, f) and not getattr(self, f) for f in flags):
            return False
        return not (other.lapse == "fitted" and self.lapse == "none")


#: The declared variants that :func:`fit_ddm_variants` compares by default (lapse fitted except "simple").
DDM_VARIANTS: dict[str, DDMConfig] = {
    "simple": DDMConfig(),
    "constant_sv_sz_st0": DDMConfig(
        drift_variability=True, start_variability=True, t0_variability=True, lapse="fitted"
    ),
    "collapsing_sv": DDMConfig(bound="collapsing", drift_variability=True, lapse="fitted"),
    "collapsing_sv_sz_st0": DDMConfig(
        bound="collapsing",
        drift_variability=True,
        start_variability=True,
        t0_variability=True,
        lapse="fitted",
    ),
}


# --------------------------------------------------------------------------------------------------------
# PyDDM components (defined on first use: PyDDM is an optional dependency).
# --------------------------------------------------------------------------------------------------------


def _nondecision_kernel(t0: float, st0: float, dt: float) -> tuple[int, np.ndarray]:
    """Weights of moving a step's mass forward by j steps, for j = first, first + 1, ….

    A step's mass spread uniformly over its step and shifted by s seconds lands on the two nearest steps
    with linear weights Λ(j − s/dt) (Λ the unit triangle); averaging over s ~ U[t0, t0 + st0] gives
    (G(j − a) − G(j − b)) / (b − a) with G the triangle's CDF, a = t0/dt, b = (t0 + st0)/dt.
    """
    a, b = t0 / dt, (t0 + st0) / dt
    first = math.floor(a)
    j = np.arange(first, math.ceil(b) + 2, dtype=float)
    if b - a < 1e-9:
        weights = np.clip(1.0 - np.abs(j - a), 0.0, None)
    else:

        def cdf(u: np.ndarray) -> np.ndarray:
            u = np.clip(u, -1.0, 1.0)
            return np.where(u <= 0, 0.5 * (1 + u) ** 2, 1 - 0.5 * (1 - u) ** 2)

        weights = (cdf(j - a) - cdf(j - b)) / (b - a)
    return first, weights


def _shift(mass: np.ndarray, first: int, weights: np.ndarray) -> np.ndarray:
    """Mass moved forward by the kernel; what passes the end of the window is lost (no response in time)."""
    out = np.zeros_like(mass)
    if first < len(mass):
        full = np.convolve(mass, weights)
        out[first:] = full[: len(mass) - first]
    return out


@functools.lru_cache(maxsize=1)
def _components() -> dict[str, type]:
    """PyDDM component classes of this module's parameterisation (solver units: starting bound = 1)."""
    pyddm = _import_pyddm()

    class DriftLinear(pyddm.Drift):
        name = "(k·condition + sv·node) / B"
        required_parameters: ClassVar[list[str]] = ["k", "sv", "B"]
        required_conditions: ClassVar[list[str]] = ["condition", "sv_node"]

        def get_drift(self, conditions: Mapping[str, Any], **kwargs: Any) -> float:
            return (self.k * float(conditions["condition"]) + self.sv * conditions["sv_node"]) / self.B

    class NoiseScaled(pyddm.Noise):
        name = "1 / B"
        required_parameters: ClassVar[list[str]] = ["B"]

        def get_noise(self, **kwargs: Any) -> float:
            return 1.0 / self.B

    class BoundExponential(pyddm.Bound):
        name = "exp(−t / tau_B)"
        required_parameters: ClassVar[list[str]] = ["tau_B"]

        def get_bound(self, t: float, **kwargs: Any) -> float:
            return math.exp(-t / self.tau_B)

    class ICUniformSmooth(pyddm.InitialCondition):
        """Uniform start on [−sz_rel, sz_rel] (bound = 1) with fractional edge cells: continuous in sz_rel."""

        name = "uniform start point, half-width sz_rel"
        required_parameters: ClassVar[list[str]] = ["sz_rel"]

        def get_IC(self, x: np.ndarray, dx: float, **kwargs: Any) -> np.ndarray:
            half = float(self.sz_rel)
            if half < 0.5 * dx:
                pdf = np.zeros(len(x))
                pdf[(len(x) - 1) // 2] = 1.0
                return pdf
            pdf = np.clip(np.minimum(x + 0.5 * dx, half) - np.maximum(x - 0.5 * dx, -half), 0.0, None)
            return pdf / pdf.sum()

    class OverlayNonDecisionLapse(pyddm.Overlay):
        """Non-decision time U[t0, t0 + st0] (exact on the step grid), then a uniform-RT lapse mixture."""

        name = "uniform non-decision time and lapse"
        required_parameters: ClassVar[list[str]] = ["t0", "st0", "lapse"]

        def apply(self, solution: Any) -> Any:
            dt = solution.dt
            first, weights = _nondecision_kernel(float(self.t0), float(self.st0), dt)
            upper = _shift(np.asarray(solution.choice_upper, dtype=float), first, weights)
            lower = _shift(np.asarray(solution.choice_lower, dtype=float), first, weights)
            lapse = float(self.lapse)
            if lapse > 0:
                per_step = 0.5 * lapse / (len(upper) - 1)
                upper[1:] = (1 - lapse) * upper[1:] + per_step
                lower[1:] = (1 - lapse) * lower[1:] + per_step
            return pyddm.Solution(upper, lower, solution.model, solution.conditions)

    return {
        "DriftLinear": DriftLinear,
        "NoiseScaled": NoiseScaled,
        "BoundExponential": BoundExponential,
        "ICUniformSmooth": ICUniformSmooth,
        "Overlay": OverlayNonDecisionLapse,
    }


def _drift_per_condition_class(pyddm: Any, conds: Sequence[float | str]) -> type:
    index = {c: i for i, c in enumerate(conds)}
    names = [f"drift_{i}" for i in range(len(conds))]

    def get_drift(self: Any, conditions: Mapping[str, Any], **kwargs: Any) -> float:
        own = getattr(self, names[index[_condition_key(conditions["condition"])]])
        return (own + self.sv * conditions["sv_node"]) / self.B

    return type(
        "DriftPerCondition",
        (pyddm.Drift,),
        {
            "name": "(drift[condition] + sv·node) / B",
            "required_parameters": [*names, "sv", "B"],
            "required_conditions": ["condition", "sv_node"],
            "get_drift": get_drift,
        },
    )


def _build_model(
    pyddm: Any, config: DDMConfig, values: Mapping[str, Any], conds: Sequence[float | str]
) -> Any:
    """A PyDDM model whose entries are numbers or ``pyddm.Fittable`` ranges (keyed by internal names)."""
    parts = _components()
    if config.drift == "linear":
        drift = parts["DriftLinear"](k=values["k"], sv=values["sv"], B=values["B"])
    else:
        cls = _drift_per_condition_class(pyddm, conds)
        drift = cls(**{n: values[n] for n in cls.required_parameters})
    if config.bound == "collapsing":
        bound = parts["BoundExponential"](tau_B=values["tau_B"])
    else:
        bound = pyddm.BoundConstant(B=1.0)
    with _quiet_pyddm():  # (PyDDM warns about dt or dx above 0.01)
        return pyddm.Model(
            name="perceptalign DDM",
            drift=drift,
            noise=parts["NoiseScaled"](B=values["B"]),
            bound=bound,
            IC=parts["ICUniformSmooth"](sz_rel=values["sz_rel"]),
            overlay=parts["Overlay"](t0=values["t0"], st0=values["st0"], lapse=values["lapse"]),
            dx=config.dx,
            dt=config.dt,
            T_dur=config.max_time_s,
        )


# --------------------------------------------------------------------------------------------------------
# Likelihood.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    """Trials binned on the solver's step grid: a trial at rt lies in step ceil(rt/dt) = ((i−1)dt, i·dt]."""

    conds: list[float | str]
    upper: np.ndarray  # (conditions, steps) counts of correct responses
    lower: np.ndarray  # (conditions, steps) counts of errors
    undecided: np.ndarray  # (conditions,) trials without a response
    n_trials: int


def _csolve() -> Any:
    """PyDDM's compiled implicit solver, or None (then solves go through a ``Model``, in Python)."""
    try:
        from pyddm import csolve
    except ImportError:  # pragma: no cover - depends on how PyDDM was built
        return None
    return csolve


class _Solver:
    """First-passage masses per solver step (upper, lower) for any drift, with the model's noise, bound and
    start distribution, before the overlay.

    PyDDM's ``Model.solve_numerical_c`` recomputes the bound over the whole time grid, twice, in Python for
    every solve, which costs more than the compiled solve itself when drift variability needs many solves;
    here bound, noise and start distribution come from the model's components once per parameter set and
    PyDDM's compiled solver gets them directly. Without it, a ``Model`` with the same components solves.
    """

    def __init__(self, model: Any, conditions: Mapping[str, Any]):
        self.model, self.csolve = model, _csolve()
        noise_part, bound_part = model.get_dependence("noise"), model.get_dependence("bound")
        self.noise = float(noise_part.get_noise(x=0.0, t=0.0, conditions=conditions))
        if self.csolve is None:
            pyddm = _import_pyddm()
            self.bare = pyddm.Model(
                drift=pyddm.DriftConstant(drift=0.0),
                noise=noise_part,
                bound=bound_part,
                IC=model.get_dependence("IC"),
                dx=model.dx,
                dt=model.dt,
                T_dur=model.T_dur,
            )
            return
        self.n_steps = len(model.t_domain())
        if bound_part._uses_t():
            bounds = [bound_part.get_bound(t=t, conditions=conditions) for t in model.t_domain()]
            self.bound, self.bound_type = np.array(bounds, dtype=float), 1
        else:
            self.bound = np.array([bound_part.get_bound(t=0.0, conditions=conditions)], dtype=float)
            self.bound_type = 0
        x_domain = model.x_domain(conditions=conditions)
        self.start = model.get_dependence("IC").get_IC(x_domain, model.dx, conditions=conditions)

    def __call__(self, drift: float) -> tuple[np.ndarray, np.ndarray]:
        model = self.model
        if self.csolve is None:
            self.bare.get_dependence("drift").drift = drift
            solution = self.bare.solve_numerical_implicit()
            return np.asarray(solution.choice_upper, float), np.asarray(solution.choice_lower, float)
        res = self.csolve.implicit_time(
            np.array([drift]),
            0,
            np.array([self.noise]),
            0,
            self.bound,
            self.bound_type,
            self.start,
            model.T_dur,
            model.dt,
            model.dx,
            self.n_steps,
        )
        return np.clip(res[0] * model.dt, 0.0, None), np.clip(res[1] * model.dt, 0.0, None)


def _gauss_hermite_mixtures(
    solve: _Solver, means: Sequence[float], spread: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    nodes, weights = np.polynomial.hermite_e.hermegauss(_SV_GH_NODES)
    weights = weights / weights.sum()
    out = []
    for m in means:
        parts = [solve(m + spread * z) for z in nodes]
        upper = sum(w * p[0] for w, p in zip(weights, parts, strict=True))
        lower = sum(w * p[1] for w, p in zip(weights, parts, strict=True))
        out.append((np.asarray(upper), np.asarray(lower)))
    return out


def _grid_mixtures(
    solve: _Solver, means: Sequence[float], spread: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    step = min(0.5 * spread, 0.5 * solve.noise)
    grid = step * np.arange(math.ceil((max(abs(m) for m in means) + 5.0 * spread) / step) + 1)
    signed = np.concatenate([-grid[:0:-1], grid])  # −v_G … −v_1, v_0 … v_G

    def weights(m: float) -> np.ndarray:
        z = np.abs(signed - m) / spread
        taper = np.clip((z - 4.5) / 0.5, 0.0, 1.0)
        w = np.exp(-0.5 * z**2) * (1.0 - taper**2 * (3.0 - 2.0 * taper))  # smoothly 0 from 5 sd on
        return w / w.sum()

    all_weights = [weights(m) for m in means]
    n = len(grid)
    needed = np.abs(np.stack(all_weights)).max(axis=0) > 0
    needed = needed[n - 1 :] | np.concatenate([[False], needed[: n - 1][::-1]])  # by |v|
    zero = np.zeros(len(solve.model.t_domain()))
    solved = [solve(float(v)) if use else (zero, zero) for v, use in zip(grid, needed, strict=True)]
    upper, lower = np.array([p[0] for p in solved]), np.array([p[1] for p in solved])
    up_signed = np.concatenate([lower[:0:-1], upper])  # drift −v: the mirror image of +v
    lo_signed = np.concatenate([upper[:0:-1], lower])
    return [(w @ up_signed, w @ lo_signed) for w in all_weights]


def _drift_mixtures(
    solve: _Solver, means: Sequence[float], spread: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Masses averaged over drift ~ N(mean, spread²) for each mean (solver units), without the overlay.

    Small spreads (sv < 0.4 in σ = 1 units): 7 Gauss–Hermite nodes per condition. Larger ones need many
    nodes, because the densities of neighbouring drifts differ sharply (7 nodes per condition are off by
    ~80 log-likelihood units on the human training data at sv = 2). Then one grid of drifts, spaced
    min(0.5·sv, 0.5·σ) and covering every condition's mean ± 5 sv, is solved once and shared by all
    conditions, halved by symmetry (drift −v gives the mirror image of +v), with trapezoid weights of each
    condition's normal density (tapered smoothly to 0 between 4.5 and 5 sd, so that grid points entering
    or leaving the range do not make the likelihood jump). Between sv = 0.4 and 0.5 the two are blended
    linearly: the likelihood stays continuous in every parameter, which the gradient-based search needs.
    Measured on the human training data against a 241-node reference: within 0.2 log-likelihood units
    for sv from 0.05 to 5, constant and collapsing bounds.
    """
    if spread <= 0:
        return [solve(m) for m in means]
    relative = spread / solve.noise  # sv in σ = 1 units
    if relative <= 0.4:
        return _gauss_hermite_mixtures(solve, means, spread)
    if relative >= 0.5:
        return _grid_mixtures(solve, means, spread)
    alpha = (relative - 0.4) / 0.1
    low, high = _gauss_hermite_mixtures(solve, means, spread), _grid_mixtures(solve, means, spread)
    return [
        ((1 - alpha) * a[0] + alpha * b[0], (1 - alpha) * a[1] + alpha * b[1])
        for a, b in zip(low, high, strict=True)
    ]


def _masses(
    model: Any, config: DDMConfig, conds: Sequence[float | str]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-step probabilities of a correct / error response in each condition (sv mixed in, overlay applied).

    The overlay (non-decision time, lapse) is linear in the masses, so it is applied once per condition to
    the drift mixture.
    """
    pyddm = _import_pyddm()
    drift_part = model.get_dependence("drift")
    where = [{"condition": c, "sv_node": 0.0} for c in conds]
    means = [float(drift_part.get_drift(x=0.0, t=0.0, conditions=w)) for w in where]
    spread = 0.0
    if config.drift_variability:
        unit = float(drift_part.get_drift(x=0.0, t=0.0, conditions={**where[0], "sv_node": 1.0}))
        spread = abs(unit - means[0])
    mixtures = _drift_mixtures(_Solver(model, where[0]), means, spread)
    overlay = model.get_dependence("overlay")
    out = []
    for w, (upper, lower) in zip(where, mixtures, strict=True):
        shifted = overlay.apply(pyddm.Solution(upper, lower, model, w))
        up = np.clip(np.nan_to_num(np.asarray(shifted.choice_upper, float), nan=0.0, posinf=0.0), 0.0, None)
        lo = np.clip(np.nan_to_num(np.asarray(shifted.choice_lower, float), nan=0.0, posinf=0.0), 0.0, None)
        out.append((up, lo))
    return out


def _log_likelihood(model: Any, config: DDMConfig, data: _Data) -> float:
    """Σ log density (per second) of the trials; conditional on responding in time if so configured."""
    total = 0.0
    for i, (upper, lower) in enumerate(_masses(model, config, data.conds)):
        n_resp = float(data.upper[i].sum() + data.lower[i].sum())
        total += float(data.upper[i] @ np.log(np.maximum(upper, _MASS_FLOOR)))
        total += float(data.lower[i] @ np.log(np.maximum(lower, _MASS_FLOOR)))
        total -= n_resp * math.log(config.dt)
        responded = float(upper[1:].sum() + lower[1:].sum())
        if config.condition_on_response:
            total -= n_resp * math.log(max(responded, _MASS_FLOOR))
        elif data.undecided[i]:
            total += float(data.undecided[i]) * math.log(max(1.0 - responded, _MASS_FLOOR))
    return total


def _loss_class(pyddm: Any, config: DDMConfig, data: _Data) -> type:
    """PyDDM loss for ``fit_adjust_model``: negative log-likelihood of the binned trials (see module doc)."""

    class LossDDM(pyddm.LossFunction):
        name = "negative log-likelihood (perceptalign DDM)"

        def setup(self, **kwargs: Any) -> None:
            pass

        def loss(self, model: Any) -> float:
            return -_log_likelihood(model, config, data)

    return LossDDM


# --------------------------------------------------------------------------------------------------------
# Optimiser (handed to PyDDM's fit_adjust_model as its fitting method).
# --------------------------------------------------------------------------------------------------------


class _MultiStart:
    """Seeded multi-start L-BFGS-B in a unit box: deterministic given the seed.

    Each parameter maps linearly onto [0, 1], except τ_B, whose collapse *rate* 1/τ_B is linear: a nearly
    constant bound then sits at the edge of the box with a non-zero gradient instead of on a plateau of
    large τ_B where the search stalls. All starting points (data-driven ones first, then ``n_starts``
    uniform random ones) are evaluated; the ``n_local`` best are refined by L-BFGS-B with forward-difference
    gradients on the mean negative log-likelihood per trial.
    """

    def __init__(
        self,
        names: list[str],
        boxes: Mapping[str, tuple[float, float]],
        starts: list[dict[str, float]],
        config: DDMConfig,
        n_trials: int,
    ):
        self.names, self.boxes, self.starts = names, boxes, starts
        self.config, self.n_trials = config, n_trials
        self.n_evaluations = 0

    def __call__(
        self, fun: Callable[[Sequence[float]], float], x_0: Sequence[float], constraints: Any
    ) -> Any:
        lo = np.array([c[0] for c in constraints], dtype=float)
        hi = np.array([c[1] for c in constraints], dtype=float)
        expected = np.array([self.boxes[n] for n in self.names], dtype=float).reshape(-1, 2)
        if len(lo) != len(self.names) or not np.allclose(np.column_stack([lo, hi]), expected):
            # PyDDM hands parameters over in its own order (components, then their parameters); names
            # follow it (DDM._internal_names), and this catches a PyDDM version that changed it.
            raise PerceptAlignError(
                f"PyDDM passed parameter ranges {np.column_stack([lo, hi]).tolist()}, expected "
                f"{expected.tolist()} for {self.names}: this PyDDM version orders fitted parameters "
                "differently; please report."
            )
        rate = np.array([n == "tau_B" for n in self.names])
        # Rate scale: u = 0 at the longest τ_B (hi), u = 1 at the shortest (lo).
        start = np.where(rate, 1.0 / hi, lo)
        span = np.where(rate, 1.0 / np.where(rate, lo, 1.0) - 1.0 / hi, hi - lo)

        def to_x(u: np.ndarray) -> np.ndarray:
            value = start + np.clip(u, 0.0, 1.0) * span
            return np.clip(np.where(rate, 1.0 / np.where(rate, value, 1.0), value), lo, hi)

        def to_u(x: np.ndarray) -> np.ndarray:
            x = np.clip(x, lo, hi)
            return np.clip((np.where(rate, 1.0 / np.where(rate, x, 1.0), x) - start) / span, 0.0, 1.0)

        cache: dict[bytes, float] = {}

        def objective(u: np.ndarray) -> float:
            key = np.round(np.asarray(u, dtype=float), 12).tobytes()
            if key not in cache:
                self.n_evaluations += 1
                value = float(fun(list(to_x(u))))
                cache[key] = value / self.n_trials if math.isfinite(value) else 1e3
            return cache[key]

        rng = np.random.default_rng(self.config.seed)
        given = [to_u(np.array([s[n] for n in self.names], dtype=float)) for s in self.starts]
        given.append(to_u(np.asarray(x_0, dtype=float)))
        candidates: list[np.ndarray] = []
        for u in given + list(rng.random((self.config.n_starts, len(self.names)))):
            if not any(np.allclose(u, c, atol=1e-9) for c in candidates):
                candidates.append(u)
        scores = [objective(u) for u in candidates]
        order = np.argsort(scores, kind="stable")
        best: Any = None
        for idx in order[: self.config.n_local]:
            result = minimize(
                objective,
                candidates[idx],
                method="L-BFGS-B",
                bounds=[(0.0, 1.0)] * len(self.names),
                options={
                    "maxiter": self.config.max_iter,
                    "eps": 1e-5,
                    # total log-likelihood tolerance ≈ 0.01 (the objective is per trial)
                    "ftol": 0.01 / self.n_trials,
                    "gtol": 1e-6,
                },
            )
            if best is None or result.fun < best.fun:
                best = result
        return OptimizeResult(
            x=to_x(best.x),
            fun=best.fun * self.n_trials,
            message=str(best.message),
            nfev=self.n_evaluations,
        )


# --------------------------------------------------------------------------------------------------------
# The estimator.
# --------------------------------------------------------------------------------------------------------


def _ez_start(trials: pd.DataFrame, t0_max: float) -> dict[str, float]:
    """k, B and t0 from the EZ-diffusion equations (Wagenmakers et al. 2007) of the informative conditions.

    Only a starting point for the likelihood search: conditions with accuracy in [0.6, 0.97] give closed
    forms for drift, bound separation and mean decision time; their medians are used.
    """
    ks, bounds, t0s = [], [], []
    for cond in table_conditions(trials):
        sub = trials[trials["condition"] == cond]
        correct = sub["correct"].to_numpy(bool)
        p = float(correct.mean())
        rts = sub["rt_s"].to_numpy(float)[correct]
        key = _condition_key(cond)
        if isinstance(key, str) or key == 0 or not 0.6 <= p <= 0.97 or len(rts) < 10 or rts.var() <= 0:
            continue
        logit = math.log(p / (1 - p))
        x = logit * (logit * p**2 - logit * p + p - 0.5) / float(rts.var())
        if x <= 0:
            continue
        v = x**0.25
        a = logit / v
        mdt = (a / (2 * v)) * (1 - math.exp(-v * a)) / (1 + math.exp(-v * a))
        ks.append(v / abs(key))
        bounds.append(a / 2)
        t0s.append(float(rts.mean()) - mdt)
    fastest = float(trials["rt_s"].quantile(0.01))
    if not ks:
        conds = [abs(float(c)) for c in table_conditions(trials) if not isinstance(_condition_key(c), str)]
        scale = float(np.median([c for c in conds if c > 0])) if any(c > 0 for c in conds) else 1.0
        return {"k": 1.0 / scale, "B": 1.0, "t0": min(0.5 * fastest, 0.9 * t0_max)}
    t0 = float(np.clip(np.median(t0s), 0.0, min(fastest, 0.9 * t0_max)))
    return {"k": float(np.median(ks)), "B": float(np.median(bounds)), "t0": t0}


class DDM:
    """A drift-diffusion variant (:class:`DDMConfig`) fitted by maximum likelihood with PyDDM.

    After ``fit``: ``params_`` (σ = 1 units: ``k`` or ``drift_<condition>``, ``B``, and as configured
    ``tau_B``, ``sv``, ``sz`` (full width of the start range), ``t0`` (shortest non-decision time), ``st0``,
    ``lapse``), ``log_likelihood_``, ``aic_``, ``bic_`` (training trials; density per second),
    ``n_trials_``, ``fit_seconds_``, ``n_evaluations_``, ``t0_max_`` and the fitted PyDDM model ``model_``.
    """

    def __init__(self, config: DDMConfig | None = None):
        if config is not None and not isinstance(config, DDMConfig):
            raise PerceptAlignError(f"DDM expects a DDMConfig, got {type(config).__name__}.")
        self.config = config if config is not None else DDMConfig()

    # ---------------------------------------------------------------- parameters

    def _internal_names(self, n_conditions: int) -> list[str]:
        """Fitted parameters in PyDDM's order (drift component, noise, bound, IC, overlay)."""
        cfg = self.config
        names = ["k"] if cfg.drift == "linear" else [f"drift_{i}" for i in range(n_conditions)]
        if cfg.drift_variability:
            names.append("sv")
        names.append("B")
        if cfg.bound == "collapsing":
            names.append("tau_B")
        if cfg.start_variability:
            names.append("sz_rel")
        names.append("t0")
        if cfg.t0_variability:
            names.append("st0")
        if cfg.lapse == "fitted":
            names.append("lapse")
        return names

    @property
    def n_params(self) -> int:
        """Number of fitted parameters (what AIC and BIC charge for)."""
        if self.config.drift == "per_condition":
            self._check_fitted()
            return len(self._internal_names(len(self.conditions_)))
        return len(self._internal_names(0))

    def _box(self, name: str, t0_max: float, largest: float) -> tuple[float, float]:
        drift_max = self.config.drift_max
        if name == "k":
            return 0.0, drift_max / largest
        if name.startswith("drift_"):
            return -drift_max / 4, drift_max
        return {
            "sv": (0.0, _SV_MAX),
            "B": _B_RANGE,
            "tau_B": _TAU_B_RANGE,
            "sz_rel": (0.0, _SZ_REL_MAX),
            "t0": (0.0, t0_max),
            "st0": (0.0, _ST0_MAX),
            "lapse": (0.0, _LAPSE_MAX),
        }[name]

    def _to_internal(self, params: Mapping[str, float], conds: Sequence[float | str]) -> dict[str, float]:
        """User-facing parameters (``sz`` absolute, ``drift_<condition>``) to internal ones."""
        out = {str(k): float(v) for k, v in params.items()}
        if "sz" in out:
            out["sz_rel"] = out.pop("sz") / (2 * out.get("B", 1.0))
        for i, cond in enumerate(conds):
            if f"drift_{cond}" in out:
                out[f"drift_{i}"] = out.pop(f"drift_{cond}")
        return out

    def _to_public(self, internal: Mapping[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, value in internal.items():
            if name.startswith("drift_"):
                out[f"drift_{self.conditions_[int(name.split('_', 1)[1])]}"] = value
            elif name == "sz_rel":
                out["sz"] = 2 * value * internal["B"]
            else:
                out[name] = value
        return out

    # ---------------------------------------------------------------- data

    def _binned(self, trials: pd.DataFrame, *, fitting: bool) -> tuple[pd.DataFrame, _Data]:
        """Validated trials and their counts per condition and solver step (fit data or evaluation data)."""
        cfg = self.config
        what = "DDM training trials" if fitting else "DDM evaluation trials"
        table = validate_trials(trials, name=what)
        decided = table["decided"].to_numpy(bool) if "decided" in table.columns else np.ones(len(table), bool)
        if cfg.condition_on_response:
            table, decided = table[decided].reset_index(drop=True), np.ones(int(decided.sum()), bool)
            if len(table) == 0:
                raise PerceptAlignError(f"{what}: no trial has a response (all have decided=False).")
        conds = [_condition_key(c) for c in table_conditions(table)]
        if not fitting:
            for cond in conds:
                self._check_condition(cond)
        elif len(conds) < 2:
            raise PerceptAlignError(
                f"{what}: {len(conds)} condition(s) {conds}; drift, bound and non-decision time cannot be "
                "told apart from one condition: fit at least two conditions (e.g. two coherences)."
            )
        elif cfg.drift == "linear" and any(isinstance(c, str) for c in conds):
            raise PerceptAlignError(
                f"{what}: drift = k·condition needs numeric conditions, got {conds}; use "
                "DDMConfig(drift='per_condition') (DDMBaseline(per_condition_drift=True)) for labelled "
                "conditions."
            )
        elif cfg.drift == "linear" and all(c == 0 for c in conds):
            raise PerceptAlignError(
                f"{what}: all conditions are 0, so drift = k·condition cannot be fitted; give the condition "
                "strengths (e.g. coherence in %)."
            )
        slowest = float(table.loc[decided, "rt_s"].max()) if decided.any() else 0.0
        if slowest >= cfg.max_time_s:
            raise PerceptAlignError(
                f"{what}: RTs reach {slowest:.3f} s but the model is solved only up to "
                f"`max_time_s`={cfg.max_time_s} s (T_dur in PyDDM); raise `max_time_s` above the slowest RT."
            )
        n_steps = round(cfg.max_time_s / cfg.dt) + 1
        keys = np.array([_condition_key(c) for c in table["condition"]], dtype=object)
        steps = np.ceil(table["rt_s"].to_numpy(float) / cfg.dt - 1e-9).astype(np.int64)
        steps = np.clip(steps, 1, n_steps - 1)
        correct = table["correct"].to_numpy(bool)
        upper = np.zeros((len(conds), n_steps))
        lower = np.zeros((len(conds), n_steps))
        undecided = np.zeros(len(conds))
        for i, cond in enumerate(conds):
            mine = keys == cond
            upper[i] = np.bincount(steps[mine & decided & correct], minlength=n_steps)
            lower[i] = np.bincount(steps[mine & decided & ~correct], minlength=n_steps)
            undecided[i] = float((mine & ~decided).sum())
        return table, _Data(conds, upper, lower, undecided, len(table))

    # ---------------------------------------------------------------- fitting

    def fit(self, trials: pd.DataFrame, *, init: Mapping[str, float] | None = None) -> DDM:
        """Maximum-likelihood fit to a trials table (all conditions at once).

        ``init`` (public parameter names, e.g. another variant's ``params_``) adds a starting point; a
        parameter it lacks starts at a neutral value. The search is deterministic given ``config.seed``.
        """
        pyddm = _import_pyddm()
        cfg = self.config
        table, data = self._binned(trials, fitting=True)
        self.conditions_ = data.conds
        t0_max = cfg.t0_max if cfg.t0_max is not None else default_t0_max(table)
        numeric = [abs(float(c)) for c in data.conds if not isinstance(c, str)]
        largest = max(numeric) if numeric else 1.0
        names = self._internal_names(len(data.conds))
        boxes = {n: self._box(n, t0_max, largest) for n in names}

        ez = _ez_start(table, t0_max)
        default = {**_NEUTRAL, "B": ez["B"], "t0": ez["t0"]}
        for i, cond in enumerate(data.conds):
            default[f"drift_{i}"] = ez["k"] * float(cond) if not isinstance(cond, str) else 1.0
        default["k"] = ez["k"]
        if cfg.t0_variability:
            default["t0"] = max(0.0, ez["t0"] - 0.5 * _NEUTRAL["st0"])
        starts = [default]
        if init is not None:
            given = self._to_internal(init, data.conds)
            starts.insert(0, {**default, **given})
            starts.insert(1, {**default, **_NESTED, **given})  # the nested model's own optimum
        starts = [{n: float(np.clip(s.get(n, default[n]), *boxes[n])) for n in names} for s in starts]

        values: dict[str, Any] = {"sv": 0.0, "B": 1.0, "tau_B": 1.0, "sz_rel": 0.0, "st0": 0.0, "lapse": 0.0}
        for n in names:
            values[n] = pyddm.Fittable(minval=boxes[n][0], maxval=boxes[n][1], default=starts[0][n])
        model = _build_model(pyddm, cfg, values, data.conds)
        frame = pd.DataFrame(
            {
                "rt_s": table["rt_s"].to_numpy(float),
                "correct": table["correct"].to_numpy(int),
                "condition": [_condition_key(c) for c in table["condition"]],
            }
        )
        sample = pyddm.Sample.from_pandas_dataframe(
            frame, rt_column_name="rt_s", choice_column_name="correct"
        )
        optimiser = _MultiStart(names, boxes, starts, cfg, data.n_trials)
        start = time.perf_counter()
        with _quiet_pyddm():
            pyddm.fit_adjust_model(
                sample,
                model,
                fitting_method=optimiser,
                lossfunction=_loss_class(pyddm, cfg, data),
                verbose=False,
            )
            loglik = _log_likelihood(model, cfg, data)
        self.fit_seconds_ = time.perf_counter() - start
        self.n_evaluations_ = optimiser.n_evaluations
        self.model_ = model
        self.t0_max_ = t0_max
        self.n_trials_ = data.n_trials
        # (the constant bound's own B is the solver's bound 1, not the fitted scale B)
        flat = {
            n: float(v) for c, part in model.parameters().items() if c != "bound" for n, v in part.items()
        }
        flat.update({n: float(v) for n, v in model.parameters()["bound"].items() if n != "B"})
        self.params_ = self._to_public({n: flat[n] for n in names})
        self.log_likelihood_ = loglik
        self.aic_ = 2 * self.n_params - 2 * loglik
        self.bic_ = self.n_params * math.log(data.n_trials) - 2 * loglik
        return self

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, float],
        config: DDMConfig | None = None,
        conditions: Sequence[Any] | None = None,
    ) -> DDM:
        """A model with given parameters (public names, as in ``params_``) instead of fitted ones.

        For simulating known models and for re-evaluating a fit on another solver grid, e.g.
        ``DDM.from_params(fit.params_, replace(fit.config, dt=0.002, dx=0.002)).log_likelihood(trials)``.
        ``conditions`` is needed (and only used) for per-condition drifts.
        """
        pyddm = _import_pyddm()
        self = cls.__new__(cls)
        DDM.__init__(self, config)  # (DDMBaseline's own constructor takes keywords, not a config)
        conds = [_condition_key(c) for c in conditions] if conditions is not None else []
        names = self._internal_names(len(conds))
        given = self._to_internal(params, conds)
        missing = [n for n in names if n not in given]
        if missing:
            raise PerceptAlignError(
                f"DDM.from_params: missing parameter(s) {missing} for this configuration (it needs "
                f"{names}; sz is given as the full width 'sz', per-condition drifts as 'drift_<condition>')."
            )
        values = {**_NESTED, "tau_B": 1.0, **{n: given[n] for n in names}}
        self.conditions_ = conds
        self.model_ = _build_model(pyddm, self.config, values, conds)
        self.params_ = self._to_public({n: given[n] for n in names})
        return self

    # ---------------------------------------------------------------- use

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise PerceptAlignError(f"{type(self).__name__} is not fitted yet: call fit() first.")

    def _check_condition(self, condition: Any) -> float | str:
        self._check_fitted()
        cond = _condition_key(condition)
        if self.config.drift == "per_condition":
            if cond not in self.conditions_:
                raise PerceptAlignError(
                    f"condition {cond!r} was not fitted (one drift per condition): choose from "
                    f"{self.conditions_}."
                )
        elif isinstance(cond, str):
            raise PerceptAlignError(f"condition {cond!r} is not numeric; drift = k·condition needs a number.")
        return cond

    def drift(self, condition: Any) -> float:
        """Mean drift rate (σ = 1 units) of the fitted model in one condition."""
        cond = self._check_condition(condition)
        if self.config.drift == "per_condition":
            return self.params_[f"drift_{cond}"]
        return self.params_["k"] * float(cond)

    def _solve(self, condition: Any) -> tuple[np.ndarray, np.ndarray]:
        cond = self._check_condition(condition)
        with _quiet_pyddm():
            return _masses(self.model_, self.config, [cond])[0]

    def predicted_accuracy(self, condition: Any) -> float:
        """P(correct) among responses within ``max_time_s`` in one condition (lapses answer at chance)."""
        upper, lower = self._solve(condition)
        p_c, p_e = float(upper.sum()), float(lower.sum())
        return p_c / (p_c + p_e) if p_c + p_e > 0 else math.nan

    def simulate(self, conditions: Sequence[Any], n_per_condition: int, seed: int = 0) -> pd.DataFrame:
        """Trials drawn from the fitted RT density: columns condition, rt_s, correct, decided.

        A step of the solved density is drawn, then a time uniformly inside it (the density that was
        fitted). With ``condition_on_response`` (default) trials are drawn given a response within
        ``max_time_s``, as fitted; otherwise trials without one come back with ``decided=False`` and
        ``rt_s = max_time_s``. Reproducible by ``seed``.
        """
        self._check_fitted()
        if isinstance(n_per_condition, bool) or not isinstance(n_per_condition, (int, np.integer)):
            raise PerceptAlignError(f"n_per_condition must be an integer >= 1, got {n_per_condition!r}.")
        if n_per_condition < 1:
            raise PerceptAlignError(f"n_per_condition must be >= 1, got {n_per_condition}.")
        conds = [self._check_condition(c) for c in conditions]
        if not conds:
            raise PerceptAlignError("simulate needs at least one condition.")
        rng = np.random.default_rng(seed)
        cfg, n = self.config, int(n_per_condition)
        tables = []
        for cond in conds:
            upper, lower = self._solve(cond)
            steps = len(upper) - 1
            probs = np.concatenate([upper[1:], lower[1:]])
            if not cfg.condition_on_response:
                probs = np.append(probs, max(1.0 - probs.sum(), 0.0))
            if probs.sum() <= 0:
                raise PerceptAlignError(
                    f"the fitted model gives no response within max_time_s={cfg.max_time_s} s in condition "
                    f"{cond!r}; refit with a larger `max_time_s`."
                )
            draw = rng.choice(len(probs), size=n, p=probs / probs.sum())
            decided = draw < 2 * steps
            step = draw % steps + 1
            rt = np.where(decided, (step - rng.random(n)) * cfg.dt, cfg.max_time_s)
            tables.append(
                pd.DataFrame(
                    {
                        "condition": np.full(n, cond, dtype=object),
                        "rt_s": rt,
                        "correct": decided & (draw < steps),
                        "decided": decided,
                    }
                )
            )
        return validate_trials(pd.concat(tables, ignore_index=True), name="DDM simulated trials")

    def score(self, trials: pd.DataFrame, *, n_per_condition: int = 20_000, seed: int = 0) -> pd.DataFrame:
        """:func:`perceptalign.rtify.metrics.fit_quality` of ``n_per_condition`` simulated trials per
        condition of ``trials`` (e.g. the held-out test split) against those trials."""
        human = validate_trials(trials, name="DDM evaluation trials")
        return fit_quality(self.simulate(table_conditions(human), n_per_condition, seed), human)

    def log_likelihood(self, trials: pd.DataFrame) -> float:
        """Log-likelihood (density per second) of other trials, e.g. a held-out split, under the fit."""
        self._check_fitted()
        _, data = self._binned(trials, fitting=False)
        with _quiet_pyddm():
            return _log_likelihood(self.model_, self.config, data)


# --------------------------------------------------------------------------------------------------------
# Variant selection.
# --------------------------------------------------------------------------------------------------------


class DDMSelection(NamedTuple):
    """What :func:`fit_ddm_variants` returns: the selected fit, the comparison table and every fit."""

    best: DDM
    table: pd.DataFrame
    fits: dict[str, DDM]


def fit_ddm_variants(
    trials: pd.DataFrame,
    variants: Mapping[str, DDMConfig] | Sequence[str] | None = None,
    *,
    criterion: Criterion = "bic",
    t0_max: float | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DDMSelection:
    """Fit each declared variant to the training trials and select one by BIC (default) or AIC.

    ``variants``: names from :data:`DDM_VARIANTS`, or a mapping name → :class:`DDMConfig` (default: all of
    :data:`DDM_VARIANTS`). ``t0_max`` and ``overrides`` (other :class:`DDMConfig` fields, e.g. ``dt``,
    ``seed``) are applied to every variant, so all share one non-decision-time box and one solver grid.
    Variants are fitted from fewest to most parameters; each also starts from the best fit of a variant it
    nests (at the nested values and at neutral ones), so a richer variant never ends below a nested one.
    Selection uses the training trials only. The table has one row per variant: variant, n_params,
    loglik, aic, bic, fit_seconds, selected.
    """
    if criterion not in ("bic", "aic"):
        raise PerceptAlignError(f"`criterion` must be 'bic' or 'aic', got {criterion!r}.")
    if variants is None:
        chosen: dict[str, DDMConfig] = dict(DDM_VARIANTS)
    elif isinstance(variants, Mapping):
        chosen = dict(variants)
    else:
        unknown = [v for v in variants if v not in DDM_VARIANTS]
        if unknown or isinstance(variants, str):
            raise PerceptAlignError(
                f"unknown DDM variant(s) {unknown or variants!r}; choose from {list(DDM_VARIANTS)} or pass a "
                "mapping name -> DDMConfig."
            )
        chosen = {v: DDM_VARIANTS[v] for v in variants}
    if not chosen:
        raise PerceptAlignError("fit_ddm_variants needs at least one variant.")
    shared = dict(overrides or {})
    if t0_max is not None:
        shared["t0_max"] = t0_max
    try:
        configs = {name: replace(cfg, **shared) for name, cfg in chosen.items()}
    except TypeError as exc:
        raise PerceptAlignError(f"`overrides` must name DDMConfig fields: {exc}.") from exc
    order = sorted(configs, key=lambda n: (len(DDM(configs[n])._internal_names(2)), list(configs).index(n)))
    fits: dict[str, DDM] = {}
    for name in order:
        cfg = configs[name]
        nested = [f for f in fits.values() if cfg.nests(f.config)]
        init = max(nested, key=lambda f: f.log_likelihood_).params_ if nested else None
        fits[name] = DDM(cfg).fit(trials, init=init)
    rows = [
        {
            "variant": name,
            "n_params": fits[name].n_params,
            "loglik": fits[name].log_likelihood_,
            "aic": fits[name].aic_,
            "bic": fits[name].bic_,
            "fit_seconds": fits[name].fit_seconds_,
        }
        for name in configs
    ]
    table = pd.DataFrame(rows)
    best_name = str(table.loc[table[criterion].idxmin(), "variant"])
    table["selected"] = table["variant"] == best_name
    return DDMSelection(fits[best_name], table, {name: fits[name] for name in configs})


# --------------------------------------------------------------------------------------------------------
# The first baseline's interface.
# --------------------------------------------------------------------------------------------------------


class DDMBaseline(DDM):
    """The simple DDM (drift ∝ condition or one per condition, constant or collapsing bound, t₀) behind
    the first baseline's constructor, ``predict`` and ``neg_log_likelihood_``.

    What changed, and why: the first version always mixed in a fixed 2 % uniform lapse, which cost it
    0.006–0.016 s of W1 per condition and tripled W1 at 51.2 % coherence; there is no fixed lapse now
    (``lapse="fitted"`` fits one, ``mixture_coef`` is gone). It is solved and fitted like every
    :class:`DDM` variant (one numerical solver, seeded multi-start L-BFGS-B, ``max_iter`` iterations per
    start instead of differential-evolution generations). ``T_dur`` is ``max_time_s``.
    """

    def __init__(
        self,
        *,
        collapsing: bool = False,
        per_condition_drift: bool = False,
        lapse: LapseKind = "none",
        dt: float = 0.01,
        dx: float = 0.01,
        T_dur: float = 2.5,
        drift_max: float = 20.0,
        max_iter: int = 200,
        seed: int = 0,
        condition_on_response: bool = True,
        t0_max: float | None = None,
    ):
        super().__init__(
            DDMConfig(
                bound="collapsing" if collapsing else "constant",
                drift="per_condition" if per_condition_drift else "linear",
                lapse=lapse,
                dt=dt,
                dx=dx,
                max_time_s=T_dur,
                drift_max=drift_max,
                max_iter=max_iter,
                seed=seed,
                condition_on_response=condition_on_response,
                t0_max=t0_max,
            )
        )

    @property
    def neg_log_likelihood_(self) -> float:
        """Negative log-likelihood of the training trials at the fit."""
        self._check_fitted()
        return -self.log_likelihood_

    def predict(self, conditions: Sequence[Any], n_per_condition: int, seed: int = 0) -> pd.DataFrame:
        """Same as :meth:`DDM.simulate`."""
        return self.simulate(conditions, n_per_condition, seed)

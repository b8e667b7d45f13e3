"""Wong & Wang (2006) reduced decision model: the model, read top to bottom (machinery: ``wongwang_engine``).

Model. n populations (two in the published model), each with an NMDA gating variable S_i ∈ [0, 1] and an
Ornstein–Uhlenbeck noise current σ·z_i. Time t is in ms, currents in nA, rates in Hz:

    x_i(t)  = Σ_j J_ij S_j + I₀ + J_ext·drive_i(t) + σ·z_i(t)             input current
    H(x)    = (a x − b) / (1 − exp(−d (a x − b)))                          population rate
    dS_i/dt = −S_i/τ_S + (1 − S_i)·γ·H(x_i)/1000                           NMDA gating
    τ_A dz_i = −z_i dt + √τ_A dW_i                                          unit OU noise, Var z = 1/2

The two-population model has J = [[J₁₁, −J₁₂], [−J₁₂, J₁₁]] and drive = (1 + c/100, 1 − c/100) for a
coherence c in % while the stimulus is on (``stim_duration_s``), 0 after; ``WWDrive`` is that input stage
(optionally with a learnable scale w on c, for a network's logit in its place). Every constant, and
the starting values of the learnable J, J_ext, I₀, σ, θ and motor delay, is one field of
:class:`WWParams`.

Discretisation. The output grid has step dt (``dt_ms``, any value up to 50 ms); each output step is
integrated in m = ⌈dt / h_max⌉ internal steps of h = dt/m, with h_max = min(``max_substep_ms``, τ_A/2)
(1 ms by default). Internal step k (from t_k = k·h to t_k + h) does

    z_k     = ρ z_{k−1} + √((1 − ρ²)/2)·ξ_k,  ρ = e^{−h/τ_A},  z_{−1} = 0   exact OU transition
    x_k     = J S_k + I₀ + J_ext·drive(t_k) + σ z_k                          input at the START of the step
    S_{k+1} = S_k + h·(−S_k/τ_S + (1 − S_k)·γ·H(x_k)/1000)                   explicit Euler

with ξ_k standard normal, drawn as one ``randn((64, n, B))`` per 64 internal steps: the stream depends
on h only, so runs with the same seed and internal step (e.g. dt = 10 ms and dt = 1 ms, both h = 1 ms)
integrate the same trajectory. Why sub-steps: Euler holds z_k for the whole step, so the noise it
integrates over a step of length h has variance h²/2 instead of τ_A²(h/τ_A − 1 + e^{−h/τ_A}); at
h = 10 ms that is 3.1× too much (the published 26.67 ms: 7×), which made accuracy depend on dt (.78
at 6.4 % coherence at dt = 10 ms against .88 at 1 ms). At h ≤ τ_A/2 the excess is ≤ 17 % of the
variance over one step and behaviour is converged (halving h to 0.5 ms changes accuracy at 6.4 % by
< .001 and the mean decision time by < 2 ms, measured with 2·10⁴ trials). ``max_substep_ms=None``
restores the published single step per dt (for reproducing published numbers only).

Decisions (the RTify convention, :mod:`perceptalign.rtify.decision`). Trajectory index t holds S at
time (t + 1)·dt, i.e. after (t + 1)·m internal steps; S_{−1} := s0 at time 0. The decision step s is
the first index at which some population's S exceeds θ (strict); the winner is that population (ties:
larger overshoot, then lower index). The decision time in steps interpolates the winner's S linearly,

    t* = s + f,  f = (θ − S_{s−1}) / Δ,  Δ = S_s − S_{s−1} (clamped below by ``min_slope``),  t* ∈ [s, s + 1],

and RT = t*·dt + motor delay (:func:`perceptalign.rtify.decision.rt_seconds`). Its gradient is the
derivative of that interpolation (∂t*/∂θ = 1/Δ, ∂t*/∂S_s = −f/Δ, ∂t*/∂S_{s−1} = −(1 − f)/Δ). Trials
that never cross within ``max_time_s`` are undecided: t* = T (the number of output steps), ``decided``
False, zero gradient; they are reported (``no_decision_rate``), never dropped.

Gradients reach J, J_ext, I₀, σ and the input through the whole trajectory: by default through the
hand-written adjoint of the engine (``backward="adjoint"``), or through plain autograd of
:func:`reference_trajectory` (``backward="autograd"``, readable, slower, same noise). They are pathwise:
exact for each trajectory, but blind to the switches of the winner that moving these parameters causes
on some trials (the choice is settled by the symmetry breaking, not at θ), so the derivative of
P(correct) they give is 0; the fit (:mod:`perceptalign.rtify.experiments.rdm.wongwang_fit`) uses finite
differences on common random numbers for these parameters instead.
:meth:`WongWang2.trajectories` returns the differentiable (B, T, n) trajectories for an external
decision rule such as :func:`perceptalign.rtify.decision.first_passage` (``initial=model.s0``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.decision import Decision, rt_seconds
from perceptalign.rtify.wongwang_engine import (
    BLOCK,
    Consts,
    Crossings,
    Grid,
    Run,
    RunSpec,
    decide,
    make_grid,
    run_fast,
    substeps,
)

__all__ = [
    "WW_DEFAULTS",
    "WWDrive",
    "WWOutput",
    "WWParams",
    "WWTrajectories",
    "WongWang2",
    "WongWangN",
    "reference_trajectory",
    "wong_wang_rate",
]


# ------------------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class WWParams:
    """Every constant of the model and the starting values of the learnable ones (Wong & Wang 2006)."""

    a: float = 270.0  # Hz/nA
    b: float = 108.0  # Hz
    d: float = 0.154  # s
    gamma: float = 0.641
    tau_s_ms: float = 100.0  # NMDA decay
    tau_a_ms: float = 2.0  # AMPA (noise) time constant
    j_self: float = 0.2609  # nA, J₁₁ = J₂₂ (learnable)
    j_cross: float = 0.0497  # nA, J₁₂ = J₂₁, inhibitory: enters x with a minus sign (learnable)
    j_ext: float = 0.0156  # nA per unit drive (learnable)
    i0: float = 0.3255  # nA (learnable)
    sigma: float = 0.02  # nA, noise amplitude (learnable)
    threshold: float = 0.5  # θ on S (learnable)
    motor_delay_s: float = 0.1  # non-decision time added to the decision time (learnable on request)
    s0: float = 0.1  # S at time 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PerceptAlignError(f"WWParams.{name} must be a finite number, got {value!r}.")
        for name in ("a", "d", "gamma", "tau_s_ms", "tau_a_ms"):
            if getattr(self, name) <= 0:
                raise PerceptAlignError(f"WWParams.{name} must be positive, got {getattr(self, name)!r}.")


WW_DEFAULTS: dict[str, float] = asdict(WWParams())


# ---------------------------------------------------------------------------------------- rate H(x)
# |v| below this uses the Taylor series of g(v) = v/(1 − e^{−v}); the first omitted term (v⁸/1209600)
# is < 1e-14 relative there, and outside it the closed forms lose at most eps/0.1 to cancellation.
_SERIES_CUTOFF = 0.1


def _g_series(v: Tensor) -> Tensor:
    v2 = v * v
    return 1.0 + v / 2.0 + v2 / 12.0 - v2 * v2 / 720.0 + v2 * v2 * v2 / 30240.0


def _g_stable(v: Tensor) -> Tensor:
    """g(v) = v/(1 − e^{−v}) for any finite v, with finite gradients everywhere (autograd path).

    Both closed forms use e^{−|v|} ≤ 1 so nothing overflows: v > 0 gives v/(1 − e^{−v}) and v < 0 gives
    |v|e^{−|v|}/(1 − e^{−|v|}); |v| < cutoff uses the series. The discarded branches see a safe
    argument, so torch.where never routes a NaN/inf gradient.
    """
    small = v.abs() < _SERIES_CUTOFF
    v_big = torch.where(small, torch.ones_like(v), v)
    mag = v_big.abs()
    e = torch.exp(-mag)
    closed = torch.where(v_big > 0, mag, mag * e) / (-torch.expm1(-mag))
    v_small = torch.where(small, v, torch.zeros_like(v))
    return torch.where(small, _g_series(v_small), closed)


def wong_wang_rate(
    x: Tensor, a: float = WW_DEFAULTS["a"], b: float = WW_DEFAULTS["b"], d: float = WW_DEFAULTS["d"]
) -> Tensor:
    """Population rate H(x) = (a x − b)/(1 − exp(−d(a x − b))) in Hz, exact at and near a x = b.

    The formula is 0/0 at a x = b (limit 1/d) and its naive gradient overflows for very negative
    a x − b; this version is finite in value and gradient for every finite x.
    """
    return _g_stable(d * (a * x - b)) / d


# ------------------------------------------------------------------------------------ the recursion
def reference_trajectory(
    drive_frames: Tensor,
    J: Tensor,
    j_ext: Tensor,
    i0: Tensor,
    sigma: Tensor,
    *,
    params: WWParams,
    grid: Grid,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """The discretised model of the module docstring, one internal step at a time, in plain autograd.

    ``drive_frames`` (F, n, B); returns S after every internal step (T·m, n, B) and the unit OU noise z
    (T·m, n, B). The engine computes the same recursion (the same noise, bit for bit) much faster.
    """
    p = params
    h = grid.h_ms
    rho = math.exp(-h / p.tau_a_ms)
    cn = math.sqrt((1.0 - rho * rho) / 2.0)
    n_int = grid.n_internal
    _, n, batch = drive_frames.shape
    like = {"dtype": drive_frames.dtype, "device": drive_frames.device}
    with torch.no_grad():  # the noise: one randn per BLOCK internal steps, then the exact OU transition
        z_all = torch.empty((n_int, n, batch), **like)
        z_prev = torch.zeros((n, batch), **like)
        for k0 in range(0, n_int, BLOCK):
            xi = torch.randn((min(BLOCK, n_int - k0), n, batch), generator=generator, **like)
            for j in range(xi.shape[0]):
                z_prev = (xi[j] * cn).add_(z_prev, alpha=rho)
                z_all[k0 + j] = z_prev
    s = torch.full((n, batch), p.s0, **like)
    states = []
    for k in range(n_int):
        f = grid.frame_of_step[k]
        external = drive_frames[f] * j_ext if f >= 0 else 0.0
        x = J @ s + i0 + external + sigma * z_all[k]  # input current (nA), input at the step's start
        rate = wong_wang_rate(x, p.a, p.b, p.d)  # H(x) in Hz
        s = s + h * (-s / p.tau_s_ms + (1.0 - s) * p.gamma * rate / 1000.0)  # Euler step of dS/dt
        states.append(s)
    return torch.stack(states), z_all


# --------------------------------------------------------------------------------------- the input
class WWDrive(nn.Module):
    """The input stage of every Wong–Wang model: raw input → per-population drive frames (F, n, B).

    ``kind="coherence"`` (two populations): c in % → drive (1 + w·c/100, 1 − w·c/100); input (B,)
    (constant while the stimulus is on) or a time series (B, T_in). A network's logit can take the place
    of c, with a learnable scale w (``scale``; its value is the starting w). ``kind="populations"``:
    w·drive_i given per population, (B, n) or (B, T_in, n). Without ``scale``, w = 1 and nothing is learnt.
    """

    def __init__(
        self, n_pop: int, kind: Literal["coherence", "populations"], scale: float | None = None
    ) -> None:
        super().__init__()
        if kind not in ("coherence", "populations"):
            raise PerceptAlignError(f"drive kind must be 'coherence' or 'populations', got {kind!r}.")
        if kind == "coherence" and n_pop != 2:
            raise PerceptAlignError(
                "a coherence drive needs exactly two populations; use kind='populations'."
            )
        self.n_pop = n_pop
        self.kind = kind
        if scale is not None and not (math.isfinite(scale) and scale != 0):
            raise PerceptAlignError(f"the input scale w must be a finite non-zero number, got {scale!r}.")
        self.scale = None if scale is None else nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        if self.kind == "coherence":
            c = _check_input(x, "coherence_pct", "(B,) or (B, T_in)")
            if c.dim() not in (1, 2) or (c.dim() == 2 and c.shape[1] == 0):
                raise PerceptAlignError(
                    f"coherence_pct must have shape (B,) or (B, T_in), got {tuple(c.shape)}; for several "
                    "populations use WongWangN."
                )
            c = c.to(dtype) / 100.0
            if self.scale is not None:
                c = c * self.scale.to(dtype)
            c = c.unsqueeze(0) if c.dim() == 1 else c.t()  # (F, B)
            return torch.stack([1.0 + c, 1.0 - c], dim=1)
        n = self.n_pop
        drive = _check_input(x, "drive", f"(B, {n}) or (B, T_in, {n})")
        if drive.dim() not in (2, 3) or drive.shape[-1] != n or drive.shape[1] == 0:
            raise PerceptAlignError(
                f"drive must have shape (B, {n}) or (B, T_in, {n}), got {tuple(drive.shape)}."
            )
        drive = drive.to(dtype)
        if self.scale is not None:
            drive = drive * self.scale.to(dtype)
        return drive.t().unsqueeze(0) if drive.dim() == 2 else drive.permute(1, 2, 0)


# ------------------------------------------------------------------------------------------ outputs
@dataclass
class WWTrajectories:
    """Full-length trajectories of one batch: S (B, T, n); optionally the noise current σz and H (Hz).

    ``time_s[t]`` = (t + 1)·dt is the time at which ``S[:, t]`` holds; ``noise[:, t]`` and ``H[:, t]``
    belong to the last internal step of output step t (the one ending at ``time_s[t]``).
    """

    S: Tensor
    time_s: Tensor
    dt_ms: float
    noise: Tensor | None = None
    H: Tensor | None = None


@dataclass
class WWOutput:
    """Decisions of one batch. ``rt_s`` = t*·dt + motor delay, differentiable (interpolated crossing)."""

    rt_s: Tensor
    choice: Tensor
    decided: Tensor
    decision: Decision
    dt_ms: float
    n_steps: int
    trajectories: Tensor | None = field(default=None, repr=False)

    @property
    def no_decision_rate(self) -> float:
        """Fraction of trials that never crossed θ within the simulated time (their RT is censored)."""
        return self.decision.no_decision_rate


# --------------------------------------------------------------------------------------- the models
_MAX_DT_MS = 50.0
_CHECK_ROWS = 16  # output rows per crossing update on the autograd reference path


class _WongWangBase(nn.Module):
    """Parameters, grid, and the run → decision → RT pipeline shared by the two public models."""

    n_pop: int

    def __init__(
        self,
        params: WWParams,
        *,
        drive: WWDrive,
        dt_ms: float,
        max_time_s: float,
        stim_duration_s: float,
        max_substep_ms: float | None,
        learn_motor_delay: bool,
        backward: Literal["adjoint", "autograd"],
        min_slope: float,
    ) -> None:
        super().__init__()
        _check_grid_args(dt_ms, max_time_s, stim_duration_s)
        if backward not in ("adjoint", "autograd"):
            raise PerceptAlignError(f"backward must be 'adjoint' or 'autograd', got {backward!r}.")
        if not (isinstance(min_slope, (int, float)) and 0 < min_slope < math.inf):
            raise PerceptAlignError(
                f"min_slope must be a positive finite number, got {min_slope!r}; 1e-3 is the default."
            )
        if max_substep_ms is not None and not (
            isinstance(max_substep_ms, (int, float)) and 0 < max_substep_ms < math.inf
        ):
            raise PerceptAlignError(
                f"max_substep_ms must be a positive number of ms or None, got {max_substep_ms!r}."
            )
        self.params = params
        self.dt_ms = float(dt_ms)
        self.max_time_s = float(max_time_s)
        self.stim_duration_s = float(stim_duration_s)
        self.max_substep_ms = None if max_substep_ms is None else float(max_substep_ms)
        self.backward_mode = backward
        self.min_slope = float(min_slope)
        # Fixed constants, as plain floats (the hot loop folds them into a few scalars).
        self.a, self.b, self.d = params.a, params.b, params.d
        self.gamma, self.tau_s_ms, self.tau_a_ms = params.gamma, params.tau_s_ms, params.tau_a_ms
        self.s0 = params.s0
        self.drive = drive
        self.J_ext = nn.Parameter(torch.tensor(float(params.j_ext)))
        self.I0 = nn.Parameter(torch.tensor(float(params.i0)))
        self.sigma = nn.Parameter(torch.tensor(float(params.sigma)))
        self.threshold = nn.Parameter(torch.tensor(float(params.threshold)))
        if learn_motor_delay:
            self.motor_delay_s = nn.Parameter(torch.tensor(float(params.motor_delay_s)))
        else:
            self.register_buffer("motor_delay_s", torch.tensor(float(params.motor_delay_s)))

    def coupling(self) -> Tensor:
        """Recurrent coupling J (n, n): x_i = Σ_j J_ij S_j + …"""
        raise NotImplementedError

    @property
    def substep_cap_ms(self) -> float | None:
        """h_max = min(``max_substep_ms``, τ_A/2); None when sub-stepping is off."""
        return None if self.max_substep_ms is None else min(self.max_substep_ms, self.tau_a_ms / 2.0)

    def substeps(self, dt_ms: float | None = None) -> int:
        """Internal Euler steps per output step of ``dt_ms`` (default: the module's dt)."""
        return substeps(self.dt_ms if dt_ms is None else float(dt_ms), self.substep_cap_ms)

    # -- grid --------------------------------------------------------------------------------------
    def _grid(self, dt_ms: float, max_time_s: float, n_frames: int, frame_s: float | None) -> Grid:
        _check_grid_args(dt_ms, max_time_s, self.stim_duration_s)
        stim_ms = self.stim_duration_s * 1000.0
        if frame_s is None:
            frame_ms = stim_ms / n_frames if stim_ms > 0 else math.inf
        elif isinstance(frame_s, (int, float)) and 0 < frame_s < math.inf:
            frame_ms = frame_s * 1000.0
        else:
            raise PerceptAlignError(f"frame_s must be a positive number of seconds, got {frame_s!r}.")
        return make_grid(dt_ms, max_time_s, n_frames, frame_ms, stim_ms, self.substep_cap_ms)

    def _consts(self, h_ms: float) -> Consts:
        return Consts.of(
            a=self.a,
            b=self.b,
            d=self.d,
            gamma=self.gamma,
            tau_s_ms=self.tau_s_ms,
            tau_a_ms=self.tau_a_ms,
            h_ms=h_ms,
        )

    def _check_params(self) -> None:
        for name, p in (
            ("J", self.coupling()),
            ("J_ext", self.J_ext),
            ("I0", self.I0),
            ("sigma", self.sigma),
            ("threshold", self.threshold),
            ("motor_delay_s", self.motor_delay_s),
        ):
            if not torch.isfinite(p.detach()).all():
                raise PerceptAlignError(
                    f"Wong–Wang parameter {name} is not finite ({p.detach().tolist()}); training diverged: "
                    "lower the learning rate or clip gradients, and reload a good checkpoint."
                )

    # -- run → decision → RT -------------------------------------------------------------------------
    def _trajectory(
        self,
        frames: Tensor,
        *,
        dt_ms: float | None,
        max_time_s: float | None,
        frame_s: float | None,
        generator: torch.Generator | None,
        early_stop: bool,
        keep_trajectory: bool = True,
        keep_internal: bool = False,
    ) -> Run:
        """Integrate drive frames (F, n, B): output trajectory (T_eff, n, B) and crossings (see ``Run``).

        Without ``keep_trajectory`` (and outside autograd) only the decision windows are kept and
        ``traj`` is None: memory O(chunk·n·B) instead of O(T·n·B).
        """
        self._check_params()
        dt = self.dt_ms if dt_ms is None else float(dt_ms)
        tmax = self.max_time_s if max_time_s is None else float(max_time_s)
        grid = self._grid(dt, tmax, frames.shape[0], frame_s)
        if generator is not None and generator.device != frames.device:
            raise PerceptAlignError(
                f"the random generator lives on {generator.device} but the inputs on {frames.device}; "
                "create it with torch.Generator(device=inputs.device)."
            )
        dtype = frames.dtype
        params = (self.coupling().to(dtype), self.J_ext.to(dtype), self.I0.to(dtype), self.sigma.to(dtype))
        needs_grad = torch.is_grad_enabled() and (
            frames.requires_grad or any(p.requires_grad for p in params)
        )
        capture = not (needs_grad or keep_trajectory or keep_internal) and grid.n_steps >= 2
        crossings = Crossings(float(self.threshold.detach()), frames[:1], capture=capture)
        spec = RunSpec(grid, self._consts(grid.h_ms), self.s0, generator, crossings, early_stop)
        if needs_grad and self.backward_mode == "autograd":
            internal, z = reference_trajectory(
                frames, *params, params=self.params, grid=grid, generator=generator
            )
            m = grid.n_sub
            traj = internal[m - 1 :: m]
            with torch.no_grad():
                full = torch.cat([torch.full_like(traj[:1], self.s0), traj])
                for k0 in range(0, traj.shape[0], _CHECK_ROWS):
                    crossings.update(full[k0 : k0 + _CHECK_ROWS + 1], k0)
            states = torch.cat([torch.full_like(internal[:1], self.s0), internal]) if keep_internal else None
            return Run(traj, traj.shape[0], grid, crossings, states, z if keep_internal else None)
        return run_fast(
            frames,
            params,
            spec,
            needs_grad=needs_grad,
            keep_trajectory=keep_trajectory,
            keep_internal=keep_internal,
        )

    def _decide(self, run: Run, keep: bool) -> WWOutput:
        dtype = self.I0.dtype if run.traj is None else run.traj.dtype
        decision = decide(run, self.threshold.to(dtype), self.min_slope, self.s0)
        rt = rt_seconds(decision.tau, run.grid.dt_ms / 1000.0, self.motor_delay_s.to(decision.tau.dtype))
        return WWOutput(
            rt_s=rt,
            choice=decision.choice,
            decided=decision.decided,
            decision=decision,
            dt_ms=run.grid.dt_ms,
            n_steps=run.grid.n_steps,
            trajectories=run.traj.permute(2, 0, 1) if keep and run.traj is not None else None,
        )

    def _run(
        self,
        frames: Tensor,
        *,
        generator: torch.Generator | None,
        return_trajectories: bool,
        dt_ms: float | None = None,
        max_time_s: float | None = None,
        frame_s: float | None = None,
    ) -> WWOutput:
        run = self._trajectory(
            frames,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
            frame_s=frame_s,
            generator=generator,
            early_stop=not return_trajectories,
            keep_trajectory=return_trajectories,
        )
        return self._decide(run, return_trajectories)

    # -- public entry points ------------------------------------------------------------------------
    def forward(
        self,
        inputs: Tensor,
        *,
        generator: torch.Generator | None = None,
        return_trajectories: bool = False,
        frame_s: float | None = None,
        dt_ms: float | None = None,
        max_time_s: float | None = None,
    ) -> WWOutput:
        """Decisions and RTs for a batch of inputs; differentiable w.r.t. the parameters and the input.

        ``dt_ms`` / ``max_time_s`` override the module's output grid for this call (the internal step
        stays ≤ h_max). With ``return_trajectories`` the run is not stopped early.
        """
        return self._run(
            self.drive(inputs, self.I0.dtype),
            generator=generator,
            return_trajectories=return_trajectories,
            frame_s=frame_s,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
        )

    def inference(
        self,
        inputs: Tensor,
        *,
        generator: torch.Generator | None = None,
        dt_ms: float | None = None,
        max_time_s: float | None = None,
        frame_s: float | None = None,
        return_noise: bool = False,
        return_rate: bool = False,
    ) -> WWTrajectories:
        """Full-length trajectories (no early stop, no decision), e.g. for figures or custom readouts."""
        frames = self.drive(inputs, self.I0.dtype)
        keep = return_noise or return_rate
        run = self._trajectory(
            frames,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
            frame_s=frame_s,
            generator=generator,
            early_stop=False,
            keep_internal=keep,
        )
        traj, grid = run.traj, run.grid
        assert traj is not None
        dtype, m = traj.dtype, grid.n_sub
        noise = rate = None
        if keep:
            assert run.z is not None and run.internal is not None
            noise = self.sigma.to(dtype) * run.z[m - 1 :: m]  # the last internal step of each output step
        if return_rate:
            assert noise is not None and run.internal is not None
            off = torch.zeros_like(frames[:1])
            last = grid.frame_of_step[m - 1 :: m]
            index = torch.tensor([f if f >= 0 else frames.shape[0] for f in last], device=traj.device)
            external = torch.cat([frames, off])[index] * self.J_ext.to(dtype)
            s_pre = run.internal[m - 1 :: m][: traj.shape[0]]
            x = (
                torch.einsum("ij,tjb->tib", self.coupling().to(dtype), s_pre)
                + self.I0.to(dtype)
                + external
                + noise
            )
            rate = wong_wang_rate(x, self.a, self.b, self.d).permute(2, 0, 1)
        time_s = torch.arange(1, grid.n_steps + 1, dtype=dtype, device=traj.device) * (grid.dt_ms / 1000.0)
        return WWTrajectories(
            S=traj.permute(2, 0, 1),
            time_s=time_s,
            dt_ms=grid.dt_ms,
            noise=noise.permute(2, 0, 1) if return_noise and noise is not None else None,
            H=rate,
        )

    def trajectories(
        self,
        inputs: Tensor | float,
        n_trials: int | None = None,
        *,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        grad: bool = True,
        dt_ms: float | None = None,
        max_time_s: float | None = None,
        frame_s: float | None = None,
    ) -> Tensor:
        """S trajectories (B, T, n) on the output grid, full length, for an external decision rule.

        ``inputs`` is one condition (a coherence in % for :class:`WongWang2`, a drive (n,) for
        :class:`WongWangN`) repeated ``n_trials`` times, or a batch as :meth:`forward` takes it (then
        ``n_trials`` is None). The noise comes from ``generator`` or else from ``seed``: same seed, same
        trajectories as :meth:`forward` / :meth:`simulate`. With ``grad`` the result is differentiable
        w.r.t. J, J_ext, I₀, σ and the input (θ and the motor delay do not enter S); e.g.
        ``first_passage(S, model.threshold, mode="race", initial=model.s0)`` gives soft RT distributions,
        RT = :func:`~perceptalign.rtify.decision.rt_seconds` (time, dt, motor delay).
        """
        if n_trials is None and not isinstance(inputs, Tensor):
            raise PerceptAlignError(
                f"one condition ({inputs!r}) needs n_trials; pass a tensor for a batch of conditions."
            )
        batch = self._condition_batch(inputs, n_trials)
        gen = generator if generator is not None else self._generator(seed)
        with torch.set_grad_enabled(grad):
            run = self._trajectory(
                self.drive(batch, self.I0.dtype),
                dt_ms=dt_ms,
                max_time_s=max_time_s,
                frame_s=frame_s,
                generator=gen,
                early_stop=False,
            )
        assert run.traj is not None
        return run.traj.permute(2, 0, 1)

    @torch.no_grad()
    def simulate(
        self,
        condition: Tensor | float,
        n_trials: int,
        *,
        dt_ms: float | None = None,
        seed: int | None = 0,
        max_time_s: float | None = None,
        return_trajectories: bool = False,
    ) -> WWOutput:
        """``n_trials`` trials of one condition, reproducible from ``seed``."""
        self._check_trials(n_trials)
        return self._run(
            self.drive(self._condition_batch(condition, n_trials), self.I0.dtype),
            generator=self._generator(seed),
            return_trajectories=return_trajectories,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
        )

    def _condition_batch(self, condition: Tensor | float, n_trials: int | None) -> Tensor:
        raise NotImplementedError

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PerceptAlignError(f"seed must be an integer, got {seed!r}.")
        return torch.Generator(device=self.I0.device).manual_seed(seed)

    def _check_trials(self, n_trials: int) -> None:
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise PerceptAlignError(f"n_trials must be a positive integer, got {n_trials!r}.")


class WongWangN(_WongWangBase):
    """n-population Wong–Wang race: population i gets I_i = J_ext·drive_i; the first S_i above θ wins.

    ``drive`` is (B, n) (constant while the stimulus is on) or a time series (B, T_in, n) whose frames
    last ``frame_s`` seconds (default: ``stim_duration_s`` / T_in) and are held over the internal steps
    that start inside them (zero-order hold); after ``stim_duration_s`` the drive is 0.
    Learnable: J (n, n; diagonal self-excitation, negative off-diagonal inhibition), J_ext, I₀, σ, θ
    (the motor delay with ``learn_motor_delay``, the input scale w with ``input_scale``); a, b, d, γ,
    τ_S, τ_A, s0 are fixed (``params``). Keyword values override the matching ``params`` fields.
    ``backward='adjoint'`` (default) uses the memory-lean hand-written adjoint, ``'autograd'`` the plain
    per-step autograd graph of :func:`reference_trajectory` (slower, kept as a reference).
    """

    def __init__(
        self,
        n_pop: int = 2,
        *,
        J: Tensor | None = None,
        params: WWParams | None = None,
        dt_ms: float = 1.0,
        max_time_s: float = 2.0,
        stim_duration_s: float = 2.0,
        max_substep_ms: float | None = 1.0,
        j_ext: float | None = None,
        i0: float | None = None,
        sigma: float | None = None,
        threshold: float | None = None,
        motor_delay_s: float | None = None,
        learn_motor_delay: bool = False,
        input_scale: float | None = None,
        backward: Literal["adjoint", "autograd"] = "adjoint",
        min_slope: float = 1e-3,
    ) -> None:
        if isinstance(n_pop, bool) or not isinstance(n_pop, int) or n_pop < 1:
            raise PerceptAlignError(f"n_pop must be a positive integer, got {n_pop!r}.")
        params = _with_overrides(
            params, j_ext=j_ext, i0=i0, sigma=sigma, threshold=threshold, motor_delay_s=motor_delay_s
        )
        super().__init__(
            params,
            drive=WWDrive(n_pop, "populations", input_scale),
            dt_ms=dt_ms,
            max_time_s=max_time_s,
            stim_duration_s=stim_duration_s,
            max_substep_ms=max_substep_ms,
            learn_motor_delay=learn_motor_delay,
            backward=backward,
            min_slope=min_slope,
        )
        self.n_pop = n_pop
        if J is None:
            J = torch.full((n_pop, n_pop), -params.j_cross)
            J.fill_diagonal_(params.j_self)
        J = torch.as_tensor(J, dtype=torch.get_default_dtype())
        if J.shape != (n_pop, n_pop) or not torch.isfinite(J).all():
            raise PerceptAlignError(
                f"J must be a finite ({n_pop}, {n_pop}) matrix, got shape {tuple(J.shape)}."
            )
        self.J = nn.Parameter(J.clone())

    def coupling(self) -> Tensor:
        return self.J

    def _condition_batch(self, condition: Tensor | float, n_trials: int | None) -> Tensor:
        if n_trials is None:
            return condition  # type: ignore[return-value]  # a batch, checked by the drive stage
        self._check_trials(n_trials)
        drive = _check_input(condition, "drive", f"({self.n_pop},)")
        if drive.shape != (self.n_pop,):
            raise PerceptAlignError(
                f"simulate takes one condition: drive of shape ({self.n_pop},), got "
                f"{tuple(drive.shape)}; call forward() for a batch of conditions."
            )
        return drive.to(self.I0.device).expand(n_trials, self.n_pop)


class WongWang2(_WongWangBase):
    """Two-population Wong–Wang model driven by motion coherence c (%): I₁,₂ = J_ext(1 ± c/100).

    Population 1 (choice 0) receives the evidence for positive c, so choice 0 is correct when c > 0.
    x₁ = J₁₁S₁ − J₁₂S₂ + I₀ + I₁ + σz₁ (and symmetrically): ``J12`` is the (positive) inhibition.
    ``coherence_pct`` is (B,) (constant while the stimulus is on) or a time series (B, T_in) — a
    network's output can take the place of c, with a learnable scale w (``input_scale``). See
    :class:`WongWangN` for the learnable parameters and the input time grid.
    """

    n_pop = 2

    def __init__(
        self,
        *,
        params: WWParams | None = None,
        j11: float | None = None,
        j12: float | None = None,
        dt_ms: float = 1.0,
        max_time_s: float = 2.0,
        stim_duration_s: float = 2.0,
        max_substep_ms: float | None = 1.0,
        j_ext: float | None = None,
        i0: float | None = None,
        sigma: float | None = None,
        threshold: float | None = None,
        motor_delay_s: float | None = None,
        learn_motor_delay: bool = False,
        input_scale: float | None = None,
        backward: Literal["adjoint", "autograd"] = "adjoint",
        min_slope: float = 1e-3,
    ) -> None:
        params = _with_overrides(
            params,
            j_self=j11,
            j_cross=j12,
            j_ext=j_ext,
            i0=i0,
            sigma=sigma,
            threshold=threshold,
            motor_delay_s=motor_delay_s,
        )
        super().__init__(
            params,
            drive=WWDrive(2, "coherence", input_scale),
            dt_ms=dt_ms,
            max_time_s=max_time_s,
            stim_duration_s=stim_duration_s,
            max_substep_ms=max_substep_ms,
            learn_motor_delay=learn_motor_delay,
            backward=backward,
            min_slope=min_slope,
        )
        self.J11 = nn.Parameter(torch.tensor(float(params.j_self)))
        self.J12 = nn.Parameter(torch.tensor(float(params.j_cross)))

    def coupling(self) -> Tensor:
        row1 = torch.stack([self.J11, -self.J12])
        row2 = torch.stack([-self.J12, self.J11])
        return torch.stack([row1, row2])

    def _condition_batch(self, condition: Tensor | float, n_trials: int | None) -> Tensor:
        if n_trials is None:
            return condition  # type: ignore[return-value]  # a batch, checked by the drive stage
        self._check_trials(n_trials)
        if (
            isinstance(condition, bool)
            or not isinstance(condition, (int, float))
            or not math.isfinite(condition)
        ):
            raise PerceptAlignError(f"coherence_pct must be a finite number (percent), got {condition!r}.")
        return torch.full((n_trials,), float(condition), dtype=self.I0.dtype, device=self.I0.device)


# ------------------------------------------------------------------------------------------- checks
def _with_overrides(params: WWParams | None, **values: float | None) -> WWParams:
    base = WWParams() if params is None else params
    if not isinstance(base, WWParams):
        raise PerceptAlignError(f"params must be a WWParams, got {type(base).__name__}.")
    given = {k: float(v) for k, v in values.items() if v is not None}
    return replace(base, **given) if given else base


def _check_grid_args(dt_ms: float, max_time_s: float, stim_duration_s: float) -> None:
    if not (isinstance(dt_ms, (int, float)) and 0 < dt_ms <= _MAX_DT_MS):
        raise PerceptAlignError(
            f"dt_ms (the output step) must be in (0, {_MAX_DT_MS}] ms, got {dt_ms!r}; the model integrates "
            "in internal steps of at most 1 ms whatever the output step."
        )
    if not (isinstance(max_time_s, (int, float)) and max_time_s > 0 and math.isfinite(max_time_s)):
        raise PerceptAlignError(f"max_time_s must be a positive number of seconds, got {max_time_s!r}.")
    if not (
        isinstance(stim_duration_s, (int, float)) and stim_duration_s >= 0 and math.isfinite(stim_duration_s)
    ):
        raise PerceptAlignError(
            f"stim_duration_s must be a non-negative number of seconds, got {stim_duration_s!r}."
        )


def _check_input(value: Any, name: str, shapes: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise PerceptAlignError(
            f"{name} must be a torch.Tensor of shape {shapes}, got {type(value).__name__}."
        )
    if not value.is_floating_point():
        raise PerceptAlignError(
            f"{name} must be a floating-point tensor, got {value.dtype}; cast it with .float()."
        )
    if value.dim() > 0 and value.shape[0] == 0:
        raise PerceptAlignError(f"{name} has an empty batch; pass at least one trial.")
    if not torch.isfinite(value.detach()).all():
        raise PerceptAlignError(
            f"{name} contains NaN or infinite values; check the stimulus or network output."
        )
    return value

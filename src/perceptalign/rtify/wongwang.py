"""Wong–Wang (2006) reduced decision model as a fast, differentiable torch module.

Each population i carries an NMDA gating variable S_i and an Ornstein–Uhlenbeck noise current.
With x = J·S + I₀ + I_ext + σ·z the input current and H(x) = (a x − b)/(1 − exp(−d(a x − b))) Hz,

    S_{k+1} = S_k + dt·(−S_k/τ_S + (1 − S_k)·γ·H(x_k)/1000)            (explicit Euler, dt in ms)
    z_k     = z_{k−1}·e^{−dt/τ_A} + √((1 − e^{−2dt/τ_A})/2)·ξ_k         (exact OU update, z_{−1} = 0)

so the unit noise z has stationary variance 1/2 whatever dt is, and the noise current σz has σ²/2.
Within step k the noise is updated first and then drives the step, and the input is the one at the
START of the step (t_k = k·dt): stimulus on while t_k < ``stim_duration_s``, 0 after.

Time-index convention (shared by every output): trajectory index t holds S after t + 1 integration
steps, i.e. at time (t + 1)·dt. The decision step τ is the first index where a population's S
exceeds θ (``perceptalign.rtify.decision.first_crossing_multiclass``), so the reaction time is
RT = (τ + 1)·dt + motor delay. Trials that never cross within ``max_time_s`` are reported as
undecided (``decided`` False, ``no_decision_rate``), never dropped; their RT is the censoring time.

Why it is fast: the time loop (the hot path) runs in place in preallocated (n, B) buffers (B is the
contiguous axis, so every op is one vectorised sweep) with 8 sweeps per step and scalars passed as
0-dim tensors (a Python number costs a tensor wrap per op); the noise comes pre-scaled from the
generator; the 0/0 guard of H runs only when a chunk actually produced a NaN (the chunk is then replayed
with it, same values). Crossings are found every 16 steps, and a run that only needs decisions keeps a
rolling 17-step buffer plus each trial's 2-step window instead of the whole trajectory (no
O(T·n·B) memory to fault in), decides with elementwise ops on those windows, and stops as soon as every
trial has decided. Gradients do not go through autograd's per-step graph: a hand-written adjoint
(reverse-mode sweep of the Euler recursion) reads u and H from the forward sweep and evaluates H' with
a 4-op closed form plus a precomputed patch for the few entries near a x = b, so training memory is
four (T, n, B) tensors instead of ~15 saved tensors per step, and the backward sweep starts at the
latest step that actually receives a gradient (the latest decision).

Results are bit-identical to the straightforward ordering of the same float operations (one randn per
64 steps, noise update, u, g, S; tests pin the stream and the decisions); everything above only
removes redundant sweeps, conversions and memory traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.decision import Decision, _implicit_tau, first_crossing_multiclass

__all__ = [
    "WW_DEFAULTS",
    "WWOutput",
    "WWTrajectories",
    "WongWang2",
    "WongWangN",
    "wong_wang_rate",
]

# Wong & Wang (2006) reduced model, as listed in docs/rtify.md, "The Wong–Wang model".
WW_DEFAULTS: dict[str, float] = {
    "a": 270.0,  # Hz/nA
    "b": 108.0,  # Hz
    "d": 0.154,  # s
    "gamma": 0.641,
    "tau_s_ms": 100.0,
    "tau_a_ms": 2.0,
    "j_self": 0.2609,  # nA
    "j_cross": 0.0497,  # nA (inhibitory: enters x with a minus sign)
    "j_ext": 0.0156,  # nA per unit drive (drive = 1 ± c/100 in the two-population model)
    "i0": 0.3255,  # nA
    "sigma": 0.02,  # nA
    "threshold": 0.5,
    "motor_delay_s": 0.1,
    "s0": 0.1,
}

# |v| below this uses the Taylor series of g(v) = v/(1 − e^{−v}); the first omitted term (v⁸/1209600)
# is < 1e-14 relative there, and outside it the closed forms lose at most eps/0.1 to cancellation.
_SERIES_CUTOFF = 0.1
_SLOPE_CUTOFF = 0.02
# Steps per noise draw: fixed, because the noise stream (hence every seeded result) depends on it.
_BLOCK = 64
# Steps per crossing check / early-stopping point (divides _BLOCK): finding each new decision's first
# crossing costs O(_CHECK) per trial, and stopping overshoots by < _CHECK steps.
_CHECK = 16
_MAX_DT_MS = 50.0


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


def _slope_from_gain_(u: Tensor, g: Tensor, out: Tensor, small: Tensor, us: Tensor, p: Tensor) -> Tensor:
    """dg/dv at v = −u into ``out``, given g = g(v) (reference; ``small``/``us``/``p`` are scratch).

    Closed form g' = g(g + u − 1)/u (from g(v) − g(−v) = v) cancels near u = 0, so |u| < 0.02 uses the
    series 1/2 + v/6 − v³/180 (first omitted term v⁵/5040 < 1e-12 there; the closed form loses at most
    eps/0.02 outside). Blended arithmetically with a 0/1 mask so the unused branch stays finite. This
    defines the adjoint's slope values; the adjoint itself gets the same values cheaper from
    ``_slope_closed_`` plus ``_SlopePatch``.
    """
    torch.abs(u, out=us)
    torch.lt(us, _SLOPE_CUTOFF, out=small)
    torch.add(u, small, out=us)  # safe denominator where the series takes over
    torch.add(g, u, out=out).sub_(1.0).mul_(g).div_(us)
    torch.mul(u, small, out=us)
    torch.mul(us, us, out=p).mul_(-1.0 / 180.0).add_(1.0 / 6.0).mul_(us).neg_().add_(0.5)
    p.sub_(out).mul_(small)
    return out.add_(p)


def _slope_closed_(u: Tensor, g: Tensor, out: Tensor, one: Tensor) -> Tensor:
    """Closed form g'(v) = g(g + u − 1)/u at v = −u into ``out``: exact away from u = 0, NaN at u = 0.

    Same op sequence as the non-series entries of ``_slope_from_gain_`` (bit-identical there); the
    entries with |u| < ``_SLOPE_CUTOFF`` get ``_slope_series_values`` on top (see ``_SlopePatch``).
    """
    return torch.add(g, u, out=out).sub_(one).mul_(g).div_(u)


def _slope_series_values(u: Tensor, g: Tensor) -> Tensor:
    """g' for entries with |u| < cutoff, with ``_slope_from_gain_``'s exact arithmetic (mask = 1)."""
    closed = (g + u).sub_(1.0).mul_(g).div_(u + 1.0)  # its closed form on the shifted denominator
    series = (u * u).mul_(-1.0 / 180.0).add_(1.0 / 6.0).mul_(u).neg_().add_(0.5)
    return closed.add_(series.sub_(closed))  # closed + (series − closed), as the blend rounds it


class _SlopePatch:
    """The series-region entries of every step's g', found in one pass over the stored u.

    The blended ``_slope_from_gain_`` evaluates both branches on every entry (17 sweeps per step); the
    adjoint instead runs the 4-op closed form and overwrites the few entries with |u| < cutoff (the input
    current within 0.02/(a d) ≈ 5e-4 nA of b/a) by their precomputed values: bit-identical gradients.
    """

    def __init__(self, u_all: Tensor, g_all: Tensor) -> None:
        steps = u_all.shape[0]
        per_step = u_all[0].numel()
        flat_u = u_all.reshape(-1)
        found = []
        for k0 in range(0, steps, _BLOCK):  # bounded temporaries
            part = flat_u[k0 * per_step : min(steps, k0 + _BLOCK) * per_step]
            mask = part.abs().lt_(_SLOPE_CUTOFF).to(torch.bool)  # float compare + cast: 2× faster than bool
            found.append(mask.nonzero().squeeze(1) + k0 * per_step)
        index = torch.cat(found)
        self.values = _slope_series_values(flat_u[index], g_all.reshape(-1)[index])
        step = torch.div(index, per_step, rounding_mode="floor")
        self.position = index - step * per_step
        self.bounds = [0, *torch.bincount(step, minlength=steps).cumsum(0).tolist()]

    def apply_(self, k: int, out: Tensor) -> None:
        """Overwrite step k's series-region entries of ``out`` (n, B)."""
        a, b = self.bounds[k], self.bounds[k + 1]
        if b > a:
            out.view(-1).index_copy_(0, self.position[a:b], self.values[a:b])


@dataclass
class _Grid:
    """Integration grid: number of steps and which input frame drives each step (−1: stimulus off)."""

    dt_ms: float
    n_steps: int
    frame_of_step: list[int]


@dataclass
class _Consts:
    """Scalars of the update, folded so the hot loop does the fewest ops (see ``_integrate``)."""

    ad: float  # a·d: x → v = d(a x − b)
    bd: float
    c1: float  # dt·γ/(1000 d): H·γ/1000·dt = c1·g
    decay: float  # 1 − dt/τ_S
    rho: float  # e^{−dt/τ_A}
    cn: float  # √((1 − ρ²)/2)


@dataclass
class _RunSpec:
    grid: _Grid
    consts: _Consts
    s0: float
    generator: torch.Generator | None
    crossings: _Crossings
    early_stop: bool  # stop at the end of the first block after which every trial has crossed


class _Crossings:
    """First step at which any population's S exceeds θ, tracked chunk by chunk during integration.

    Same rule as ``first_crossing_multiclass`` (strict >, first index); it lets the run stop early
    and lets the decision be taken on a 2-step window instead of the whole (B, T, n) trajectory. With
    ``capture`` it also copies each trial's window [τ − 1, τ] out of the chunk as the trial decides
    (and the last two steps for trials that never do), so a run that only needs decisions can keep a
    rolling (chunk + 1)-step buffer instead of the whole (T + 1, n, B) trajectory. Masks are 0/1 floats:
    on CPU a comparison writing bool is ~5× slower than one writing float.
    """

    def __init__(self, threshold: float, like: Tensor, capture: bool) -> None:
        _, n, batch = like.shape
        dev = like.device
        self.threshold = threshold
        self.batch = batch
        self.n_decided = 0
        self.finite = True  # every scanned S was finite (else the decision re-checks and raises)
        self.any_tau0 = False  # some trial crossed at the very first step
        self.tau = torch.zeros(batch, dtype=torch.long, device=dev)
        self.undecided = torch.ones(batch, dtype=like.dtype, device=dev)
        self.window = torch.empty((2, n, batch), dtype=like.dtype, device=dev) if capture else None
        self._thr = torch.tensor(threshold, dtype=like.dtype, device=dev)  # same float32 value as θ
        self._hit = torch.empty(batch, dtype=like.dtype, device=dev)
        self._pop_offset = (torch.arange(n, device=dev) * batch).view(n, 1)
        self._row_offset = torch.tensor([0, n * batch], device=dev).view(2, 1, 1)
        self._weights = torch.arange(_CHECK, 0, -1, dtype=like.dtype, device=dev).view(-1, 1)
        self._decided: Tensor | None = None

    @property
    def decided(self) -> Tensor:
        """Bool (B,): crossed so far (cached until the next update records a crossing)."""
        if self._decided is None:
            self._decided = self.undecided == 0
        return self._decided

    @staticmethod
    def scan(blk: Tensor) -> Tensor:
        """Max over the chunk's steps of every (population, trial) (n·B,); NaN wherever S was NaN.

        One max over the outer (time) axis, which CPU reductions vectorise well (a max over the size-n
        middle axis would be several times slower).
        """
        return blk[1:].reshape(blk.shape[0] - 1, -1).amax(dim=0)

    def update(self, blk: Tensor, offset: int, col_max: Tensor | None = None) -> bool:
        """Record the chunk's first crossings; True once every trial has decided.

        ``blk`` (K + 1, n, B), contiguous: row 0 is the state before the chunk (trajectory index
        offset − 1, or S(0)), rows 1..K hold trajectory indices offset..offset + K − 1. ``col_max``
        is ``scan(blk)`` when the caller already has it (and has checked it is finite).
        """
        steps, n, batch = blk.shape[0] - 1, blk.shape[1], blk.shape[2]
        flat = blk[1:].view(steps, n * batch)
        if col_max is None:
            col_max = self.scan(blk)
            self.finite = self.finite and math.isfinite(float(col_max.sum()))
        per_pop = col_max.view(n, batch)
        if n == 1:
            peak = per_pop[0]
        elif n == 2:
            peak = torch.maximum(per_pop[0], per_pop[1])
        else:
            peak = per_pop.amax(dim=0)
        idx = torch.gt(peak, self._thr, out=self._hit).mul_(self.undecided).nonzero().squeeze(1)
        if idx.numel() == 0:
            return self.n_decided == self.batch
        # First crossing of the newly decided trials only, as a max: weight step j by K − j (exact in
        # floats for K ≤ 2^24); on CPU this is several times faster than argmax over booleans.
        cols = (self._pop_offset + idx).view(-1)  # (n·m,) columns: every population of each new trial
        weights = self._weights if steps == _CHECK else self._weights[-steps:]
        score = flat.index_select(1, cols).gt_(self._thr).mul_(weights).amax(dim=0)
        if n > 1:
            score = score.view(n, -1).amax(dim=0)
        local = (steps - score).long()  # 0..K − 1
        self.tau.index_copy_(0, idx, local + offset)
        self.undecided.index_fill_(0, idx, 0.0)
        self._decided = None
        self.n_decided += idx.numel()
        if offset == 0:
            self.any_tau0 = bool((local == 0).any())
        if self.window is not None:
            # Window rows τ − 1, τ are blk rows local, local + 1; τ = 0 keeps [0, 1] (rows 1, 2).
            lo = local.clamp_min(1) if offset == 0 else local
            pos = (lo * (n * batch)).view(1, 1, -1) + self._row_offset + cols.view(1, n, -1)
            values = blk.view(-1).index_select(0, pos.view(-1)).view(2, n, -1)
            self.window.index_copy_(2, idx, values)
        return self.n_decided == self.batch

    def finish(self, blk: Tensor) -> None:
        """Give the undecided trials their censoring window: the last two rows of the final chunk."""
        if self.window is not None and self.n_decided < self.batch:
            self.window = torch.where(self.decided.view(1, 1, -1), self.window, blk[-2:])


@dataclass
class WWTrajectories:
    """Full-length trajectories of one batch: S (B, T, n); optionally the noise current σz and H (Hz).

    ``time_s[t]`` = (t + 1)·dt is the time at which ``S[:, t]`` holds; ``H[:, t]`` is the rate that
    drove the step ending there.
    """

    S: Tensor
    time_s: Tensor
    dt_ms: float
    noise: Tensor | None = None
    H: Tensor | None = None


@dataclass
class WWOutput:
    """Decisions of one batch. ``rt_s`` includes the motor delay and is differentiable (implicit rule)."""

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


def _noise_pieces(k0: int, k1: int, per_step: int, split: bool) -> list[tuple[int, int]]:
    """Steps [k0, k1) of one noise block cut into the calls that draw them.

    The stream is defined as one ``randn`` of the whole block. On CPU, torch fills a normal tensor of
    ≥ 16 elements 16 at a time from a sequential uniform stream (re-drawing the last 16 when the size is
    not a multiple of 16), so consecutive calls whose sizes are multiples of 16 (every piece but the last,
    which must keep ≥ 16 elements) reproduce the single call exactly; ``test_wongwang`` checks this
    against the installed torch. Drawing ``_CHECK`` steps at a time keeps the noise buffer in cache.
    """
    if not split:
        return [(k0, k1)]
    pieces = [(a, min(a + _CHECK, k1)) for a in range(k0, k1, _CHECK)]
    if len(pieces) > 1 and (pieces[-1][1] - pieces[-1][0]) * per_step < 16:
        pieces[-2:] = [(pieces[-2][0], k1)]
    return pieces


def _draw_scaled_noise(out: Tensor, scale: float, generator: torch.Generator | None) -> None:
    """``out`` ← scale·randn, drawn as ``normal_(0, scale)`` where that is the same stream and values.

    On CPU, ``normal_`` of ≥ 16 elements computes each value as (Box–Muller sample)·std + 0, which rounds
    exactly like randn followed by a multiply, so the scaling costs no extra sweep (checked by a test);
    elsewhere (and for < 16 elements, which use another algorithm) draw and multiply.
    """
    if out.device.type == "cpu" and out.numel() >= 16:
        out.normal_(0.0, scale, generator=generator)
    else:
        torch.randn(out.shape, generator=generator, out=out, dtype=out.dtype, device=out.device)
        out.mul_(scale)


def _integrate(
    s_buf: Tensor,
    z_store: Tensor | None,
    ug_store: tuple[Tensor, Tensor] | None,
    bias_u: Tensor,
    bias_u_off: Tensor,
    j_u: Tensor,
    sig_u: float,
    spec: _RunSpec,
) -> int:
    """Run the Euler recursion in place; return the number of steps done.

    ``s_buf`` is either the whole trajectory (T + 1, n, B) or, when ``spec.crossings`` captures the
    decision windows, a rolling (chunk + 1, n, B) buffer whose row 0 carries the state across chunks.
    Row 0 holds S(0) on entry. Everything is expressed in u = −d(a x − b) so that g = u/expm1(u) needs
    no negations: ``bias_u`` (F, n, B) / ``bias_u_off`` hold −(a d (I₀ + J_ext·drive) − b d), ``j_u`` =
    −a d J and ``sig_u`` = −a d σ. ``z_store`` (T, n, B), when given, receives the unit OU noise of every
    step and ``ug_store`` u and the gain g(u) (for the adjoint); otherwise rolling scratch is used.

    The noise stream is one ``randn`` per ``_BLOCK`` steps (shared by every path; see ``_noise_pieces``),
    drawn pre-scaled by √((1 − ρ²)/2); crossings are checked every ``_CHECK`` steps. Per step: the OU
    update, u (addmm, + noise), g (expm1, div), c1·g, decay − c1·g and S' = c1 g + S(decay − c1 g): 8
    sweeps over (n, B) buffers that stay in cache. g = 0/0 (u == 0 exactly, limit 1) is not screened
    per step: it turns the trial's S into NaN, which the chunk's crossing scan sees (the max over time
    propagates NaN), and the chunk is then replayed from its start with NaN → 1 — the same values as
    screening every step, for one cheap check per chunk.
    """
    c = spec.consts
    frames = spec.grid.frame_of_step
    n_steps = spec.grid.n_steps
    crossings = spec.crossings
    rolling = crossings.window is not None
    _, n, batch = s_buf.shape
    like = {"dtype": s_buf.dtype, "device": s_buf.device}
    split = z_store is None and s_buf.device.type == "cpu"
    noise_buf = None
    if z_store is None:
        noise_buf = torch.empty((2 * _CHECK if split else _BLOCK, n, batch), **like)
    z_prev = torch.zeros((n, batch), **like)
    u, e, g, m = (torch.empty((n, batch), **like) for _ in range(4))
    c1, decay = torch.tensor(c.c1, **like), torch.tensor(c.decay, **like)
    bias_rows = bias_u.unbind(0)
    u_rows: tuple[Tensor, ...] | None = None
    g_rows: tuple[Tensor, ...] | None = None

    def advance(
        c0: int, s_rows: tuple[Tensor, ...], z_rows: tuple[Tensor, ...], z0: int, replay: bool
    ) -> None:
        nonlocal z_prev
        for j in range(len(s_rows) - 1):
            k = c0 + j
            z = z_rows[k - z0]
            if not replay:  # a replay reuses the finished noise
                z.add_(z_prev, alpha=c.rho)  # z = √((1 − ρ²)/2)·ξ + ρ z_prev: exact OU update
                z_prev = z
            f = frames[k]
            s = s_rows[j]
            uj = u if u_rows is None else u_rows[k - k0]
            torch.addmm(bias_rows[f] if f >= 0 else bias_u_off, j_u, s, out=uj)
            uj.add_(z, alpha=sig_u)
            torch.expm1(uj, out=e)
            gj = g if g_rows is None else g_rows[k - k0]
            torch.div(uj, e, out=gj)
            if replay:
                gj.nan_to_num_(nan=1.0)  # u == 0 exactly: 0/0, limit 1
            torch.mul(gj, c1, out=m)
            torch.sub(decay, m, out=e)  # 1 − dt/τ_S − c1 g
            torch.addcmul(m, s, e, out=s_rows[j + 1])  # S(1 − dt/τ_S − c1 g) + c1 g

    for k0 in range(0, n_steps, _BLOCK):
        k1 = min(k0 + _BLOCK, n_steps)
        if z_store is not None:
            _draw_scaled_noise(z_store[k0:k1], c.cn, spec.generator)
            if ug_store is not None:
                u_rows, g_rows = (store[k0:k1].unbind(0) for store in ug_store)
        pieces = _noise_pieces(k0, k1, n * batch, split)
        for p, (a, b) in enumerate(pieces):
            if noise_buf is None:
                zb = z_store[a:b]  # type: ignore[index]
            else:
                zb = noise_buf[: b - a]
                _draw_scaled_noise(zb, c.cn, spec.generator)
            z_rows = zb.unbind(0)
            for c0 in range(a, b, _CHECK):
                c_end = min(c0 + _CHECK, b)
                base = 0 if rolling else c0
                blk = s_buf[base : base + c_end - c0 + 1]
                s_rows = blk.unbind(0)
                advance(c0, s_rows, z_rows, a, replay=False)
                col_max = _Crossings.scan(blk)
                if not math.isfinite(float(col_max.sum())):
                    advance(c0, s_rows, z_rows, a, replay=True)
                    col_max = _Crossings.scan(blk)
                    crossings.finite = crossings.finite and math.isfinite(float(col_max.sum()))
                if crossings.update(blk, c0, col_max) and spec.early_stop:
                    if noise_buf is not None:  # leave the generator where a full-block draw would
                        for a2, b2 in pieces[p + 1 :]:
                            _draw_scaled_noise(noise_buf[: b2 - a2], c.cn, spec.generator)
                    return c_end
                if c_end == n_steps:
                    crossings.finish(blk)
                elif rolling:
                    s_buf[0].copy_(blk[-1])
            if noise_buf is not None:
                z_prev = z_prev.clone()  # the noise buffer is overwritten by the next draw
    return n_steps


@dataclass
class _Run:
    """Outcome of one integration: trajectory (None when only decision windows were kept) and noise."""

    traj: Tensor | None
    steps: int
    grid: _Grid
    crossings: _Crossings
    z: Tensor | None


def _window_decision(
    window: Tensor,
    start: Tensor,
    local_tau: Tensor,
    crossings: _Crossings,
    threshold: Tensor,
    min_slope: float,
) -> Decision:
    """``first_crossing_multiclass`` on the (2, n, B) windows [start, start + 1], given the crossings.

    The crossing step is already known from the integration (``local_tau`` ∈ {0, 1} inside the window,
    1 for undecided trials), so instead of searching the window with reductions over its size-2 axes
    (each several ms at B = 10⁴ on CPU) this applies the same rules with elementwise ops over (n, B):
    the populations above θ at τ tie, the largest overshoot wins, then the lowest index; undecided
    trials report the highest final S. The differentiable τ comes from the decision module's own
    implicit-gradient helper, so slope clamping and censoring follow its conventions exactly.
    """
    values = window.detach()
    if not crossings.finite and not torch.isfinite(values).all():
        raise PerceptAlignError(
            "the Wong–Wang trajectory contains NaN or infinite values; the parameters are outside the "
            "model's stable range: lower the learning rate or clip gradients, and reload a good checkpoint."
        )
    n, batch = values.shape[1], values.shape[2]
    decided = crossings.decided
    thr = threshold.detach()
    at_tau = values[1]
    if crossings.any_tau0:
        at_tau = torch.where((local_tau == 0).view(1, -1), values[0], at_tau)  # (n, B)
    if n == 1:
        choice = torch.zeros(batch, dtype=torch.long, device=values.device)
        n_ties = 0
    else:
        tied = at_tau > thr  # the populations crossing at τ (none for undecided trials)
        winner = _first_argmax(torch.where(tied, at_tau - thr, -math.inf))
        if crossings.n_decided == crossings.batch:
            choice = winner
        else:
            choice = torch.where(decided, winner, _first_argmax(values[1]))
        n_ties = int((tied[0] & tied[1]).sum() if n == 2 else (tied.sum(dim=0) > 1).sum())
    level = window.gather(1, choice.view(1, 1, -1).expand(2, 1, batch)).squeeze(1)  # (2, B)
    tau, n_clamped = _implicit_tau(level.t(), threshold.expand(batch), local_tau, decided, min_slope)
    return Decision(
        tau=tau + start.to(tau.dtype), choice=choice, decided=decided, n_clamped=n_clamped, n_ties=n_ties
    )


def _first_argmax(values: Tensor) -> Tensor:
    """Index of the first maximum over dim 0 of (n, B): elementwise for small n, argmax otherwise."""
    n = values.shape[0]
    if n == 2:
        return (values[1] > values[0]).long()  # strict: equal values keep the lower index, as argmax does
    if n > 8:
        return values.argmax(dim=0)
    best = values[0]
    index = torch.zeros(values.shape[1], dtype=torch.long, device=values.device)
    for c in range(1, n):
        better = values[c] > best
        best = torch.where(better, values[c], best)
        index.masked_fill_(better, c)
    return index


def _bias_u(drive_frames: Tensor, j_ext: Tensor, i0: Tensor, c: _Consts) -> tuple[Tensor, Tensor]:
    """Per-frame folded bias −(a d (I₀ + J_ext·drive) − b d) and the stimulus-off bias."""
    bias = (drive_frames * j_ext + i0) * (-c.ad) + c.bd
    off = (i0 * (-c.ad) + c.bd).reshape(1, 1).expand(drive_frames.shape[1], 1)
    return bias.contiguous(), off.to(drive_frames.dtype)


class _WWAdjoint(torch.autograd.Function):
    """S trajectory (T_eff, n, B) from (drive frames, J, J_ext, I₀, σ) with a hand-written adjoint."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, drive_frames: Tensor, J: Tensor, j_ext: Tensor, i0: Tensor, sigma: Tensor, spec: _RunSpec
    ) -> Tensor:
        ctx.set_materialize_grads(False)  # z's gradient is never used: don't fill a (T, n, B) zero tensor
        c = spec.consts
        _, n, batch = drive_frames.shape
        s_buf = torch.empty(
            (spec.grid.n_steps + 1, n, batch), dtype=drive_frames.dtype, device=drive_frames.device
        )
        s_buf[0].fill_(spec.s0)
        z_store = torch.empty_like(s_buf[1:])
        ug_store = (torch.empty_like(z_store), torch.empty_like(z_store))
        bias_u, bias_u_off = _bias_u(drive_frames, j_ext, i0, c)
        j_u = J * (-c.ad)
        steps = _integrate(s_buf, z_store, ug_store, bias_u, bias_u_off, j_u, -c.ad * float(sigma), spec)
        ctx.spec = spec
        ctx.steps = steps
        ctx.s_buf = s_buf
        ctx.z_store = z_store
        ctx.ug_store = ug_store
        ctx.save_for_backward(drive_frames, J, j_ext, i0, sigma)
        z_out = z_store[:steps]
        ctx.mark_non_differentiable(z_out)
        return s_buf[1 : steps + 1], z_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_s: Tensor | None, _grad_z: Tensor | None) -> tuple[Tensor | None, ...]:
        """Reverse sweep from the latest step with a gradient; u and g come from the forward sweep."""
        drive_frames, J, j_ext, i0, sigma = ctx.saved_tensors
        spec: _RunSpec = ctx.spec
        c = spec.consts
        s_buf: Tensor = ctx.s_buf
        z_store: Tensor = ctx.z_store
        u_store, g_store = ctx.ug_store
        frames = spec.grid.frame_of_step
        n_frames, n, batch = drive_frames.shape
        if grad_s is None:
            return (None,) * 6
        last = _last_nonzero_step(grad_s)
        like = {"dtype": s_buf.dtype, "device": s_buf.device}
        q_frames = torch.zeros((n_frames, n, batch), **like)
        q_off = torch.zeros((n, batch), **like)
        d_jv = torch.zeros((n, n), **like)
        qz = torch.zeros((n, batch), **like)
        if last >= 0:
            jv_t = (J * c.ad).t().contiguous()
            patch = _SlopePatch(u_store[: last + 1], g_store[: last + 1])
            one, c1, neg_c1, decay = (torch.tensor(v, **like) for v in (1.0, c.c1, -c.c1, c.decay))
            lam = torch.zeros((n, batch), **like)
            gp, q, w = (torch.empty_like(lam) for _ in range(3))
            stores = (s_buf, z_store, u_store, g_store)
            rows = list(zip(*(x.unbind(0) for x in stores), strict=False))
            q_rows = q_frames.unbind(0)
            for k in range(last, -1, -1):
                s, z, u, g = rows[k]
                lam.add_(grad_s[k])  # lam = dL/dS_{k+1}
                _slope_closed_(u, g, gp, one)
                patch.apply_(k, gp)
                torch.mul(s, neg_c1, out=q).add_(c1).mul_(gp).mul_(lam)  # dL/dv_k = λ c1 (1 − S) g'
                lam.mul_(torch.mul(g, neg_c1, out=w).add_(decay))  # through S_k directly: 1 − dt/τ_S − c1 g
                lam.addmm_(jv_t, q)  # through v_k = a d (J S_k + …)
                d_jv.addmm_(q, s.t())
                f = frames[k]
                (q_rows[f] if f >= 0 else q_off).add_(q)
                qz.addcmul_(q, z)
        ad = c.ad
        grads: list[Tensor | None] = [None] * 6
        needs = ctx.needs_input_grad
        if needs[0]:
            grads[0] = q_frames * (ad * j_ext)
        if needs[1]:
            grads[1] = d_jv * ad
        if needs[2]:
            grads[2] = ((q_frames * drive_frames).sum() * ad).reshape(j_ext.shape)
        if needs[3]:
            grads[3] = ((q_frames.sum() + q_off.sum()) * ad).reshape(i0.shape)
        if needs[4]:
            grads[4] = (qz.sum() * ad).reshape(sigma.shape)
        return tuple(grads)


def _last_nonzero_step(grad: Tensor) -> int:
    """Index of the last time step (dim 0) with a non-zero entry, −1 if none; scans back in blocks.

    The decision gradient is non-zero only at each trial's crossing, so the adjoint sweep can start at
    the latest decision instead of T − 1; scanning from the end usually touches one block.
    """
    for k1 in range(grad.shape[0], 0, -_BLOCK):
        k0 = max(0, k1 - _BLOCK)
        flat = grad[k0:k1].flatten(1)
        active = (flat.amax(dim=1) > 0) | (flat.amin(dim=1) < 0)
        hits = torch.nonzero(active).flatten()
        if hits.numel() > 0:
            return k0 + int(hits[-1])
    return -1


def _reference_trajectory(
    drive_frames: Tensor,
    J: Tensor,
    j_ext: Tensor,
    i0: Tensor,
    sigma: Tensor,
    spec: _RunSpec,
    a: float,
    b: float,
    d: float,
) -> tuple[Tensor, Tensor]:
    """Plain autograd version of the same recursion (readable; used for ``backward='autograd'`` and tests).

    Same noise stream as ``_integrate`` (same block draws), states kept in a Python list and stacked at
    the end so that backward is linear in T. Returns S (T, n, B) and the unit noise z (T, n, B).
    """
    c = spec.consts
    n_steps = spec.grid.n_steps
    _, n, batch = drive_frames.shape
    with torch.no_grad():
        z_all = torch.empty((n_steps, n, batch), dtype=drive_frames.dtype, device=drive_frames.device)
        z_prev = torch.zeros((n, batch), dtype=drive_frames.dtype, device=drive_frames.device)
        for k0 in range(0, n_steps, _BLOCK):
            zb = z_all[k0 : min(k0 + _BLOCK, n_steps)]
            torch.randn(zb.shape, generator=spec.generator, out=zb, dtype=zb.dtype, device=zb.device)
            for z in zb:
                z.mul_(c.cn).add_(z_prev, alpha=c.rho)
                z_prev = z
    dt = spec.grid.dt_ms
    gamma, tau_s = WW_DEFAULTS["gamma"], WW_DEFAULTS["tau_s_ms"]
    s = torch.full((n, batch), spec.s0, dtype=drive_frames.dtype, device=drive_frames.device)
    states = []
    for k in range(n_steps):
        f = spec.grid.frame_of_step[k]
        external = drive_frames[f] * j_ext if f >= 0 else 0.0
        x = J @ s + i0 + external + sigma * z_all[k]
        rate = wong_wang_rate(x, a, b, d)
        s = s + dt * (-s / tau_s + (1.0 - s) * gamma * rate / 1000.0)
        states.append(s)
    return torch.stack(states), z_all


class _WongWangBase(nn.Module):
    """Shared machinery: grid, parameter checks, integration, decision and RT."""

    n_pop: int

    def __init__(
        self,
        *,
        dt_ms: float,
        max_time_s: float,
        stim_duration_s: float,
        j_ext: float,
        i0: float,
        sigma: float,
        threshold: float,
        motor_delay_s: float,
        learn_motor_delay: bool,
        backward: Literal["adjoint", "autograd"],
        min_slope: float,
    ) -> None:
        super().__init__()
        _check_grid_args(dt_ms, max_time_s, stim_duration_s)
        if backward not in ("adjoint", "autograd"):
            raise PerceptAlignError(f"backward must be 'adjoint' or 'autograd', got {backward!r}.")
        self.dt_ms = float(dt_ms)
        self.max_time_s = float(max_time_s)
        self.stim_duration_s = float(stim_duration_s)
        self.backward_mode = backward
        if not (isinstance(min_slope, (int, float)) and 0 < min_slope < math.inf):
            raise PerceptAlignError(
                f"min_slope must be a positive finite number, got {min_slope!r}; 1e-3 is the default."
            )
        self.min_slope = float(min_slope)
        self.a, self.b, self.d = WW_DEFAULTS["a"], WW_DEFAULTS["b"], WW_DEFAULTS["d"]
        self.gamma, self.tau_s_ms, self.tau_a_ms = (
            WW_DEFAULTS["gamma"],
            WW_DEFAULTS["tau_s_ms"],
            WW_DEFAULTS["tau_a_ms"],
        )
        self.s0 = WW_DEFAULTS["s0"]
        self.J_ext = nn.Parameter(torch.tensor(float(j_ext)))
        self.I0 = nn.Parameter(torch.tensor(float(i0)))
        self.sigma = nn.Parameter(torch.tensor(float(sigma)))
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        if learn_motor_delay:
            self.motor_delay_s = nn.Parameter(torch.tensor(float(motor_delay_s)))
        else:
            self.register_buffer("motor_delay_s", torch.tensor(float(motor_delay_s)))

    # -- to be provided by subclasses ------------------------------------------------------------
    def coupling(self) -> Tensor:
        """Recurrent coupling J (n, n): x_i = Σ_j J_ij S_j + …"""
        raise NotImplementedError

    # -- grid and constants -----------------------------------------------------------------------
    def _grid(self, dt_ms: float, max_time_s: float, n_frames: int, frame_s: float | None) -> _Grid:
        _check_grid_args(dt_ms, max_time_s, self.stim_duration_s)
        n_steps = max(1, round(max_time_s * 1000.0 / dt_ms))
        stim_ms = self.stim_duration_s * 1000.0
        if frame_s is None:
            frame_ms = stim_ms / n_frames if stim_ms > 0 else math.inf
        elif isinstance(frame_s, (int, float)) and 0 < frame_s < math.inf:
            frame_ms = frame_s * 1000.0
        else:
            raise PerceptAlignError(f"frame_s must be a positive number of seconds, got {frame_s!r}.")
        frames = []
        eps = 1e-9 * dt_ms
        for k in range(n_steps):
            t = k * dt_ms
            if t + eps >= stim_ms:
                frames.append(-1)
            else:
                frames.append(min(n_frames - 1, int((t + eps) // frame_ms)))
        return _Grid(dt_ms=float(dt_ms), n_steps=n_steps, frame_of_step=frames)

    def _consts(self, dt_ms: float) -> _Consts:
        rho = math.exp(-dt_ms / self.tau_a_ms)
        return _Consts(
            ad=self.a * self.d,
            bd=self.b * self.d,
            c1=dt_ms * self.gamma / (1000.0 * self.d),
            decay=1.0 - dt_ms / self.tau_s_ms,
            rho=rho,
            cn=math.sqrt((1.0 - rho * rho) / 2.0),
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

    # -- core -------------------------------------------------------------------------------------
    def _trajectory(
        self,
        drive_frames: Tensor,
        *,
        dt_ms: float | None,
        max_time_s: float | None,
        frame_s: float | None,
        generator: torch.Generator | None,
        early_stop: bool,
        keep_noise: bool = False,
        keep_trajectory: bool = True,
    ) -> _Run:
        """Integrate drive frames (F, n, B): the S trajectory (T_eff, n, B), its θ crossings, z if asked.

        Without ``keep_trajectory`` (and outside autograd) only the decision windows are kept and
        ``traj`` is None: memory O(block·n·B) instead of O(T·n·B), and no fresh pages to fault in.
        """
        self._check_params()
        dt = self.dt_ms if dt_ms is None else float(dt_ms)
        tmax = self.max_time_s if max_time_s is None else float(max_time_s)
        grid = self._grid(dt, tmax, drive_frames.shape[0], frame_s)
        if generator is not None and generator.device != drive_frames.device:
            raise PerceptAlignError(
                f"the random generator lives on {generator.device} but the inputs on {drive_frames.device}; "
                "create it with torch.Generator(device=inputs.device)."
            )
        J = self.coupling().to(drive_frames.dtype)
        params = (
            J,
            self.J_ext.to(drive_frames.dtype),
            self.I0.to(drive_frames.dtype),
            self.sigma.to(drive_frames.dtype),
        )
        needs_grad = torch.is_grad_enabled() and (
            drive_frames.requires_grad or any(p.requires_grad for p in params)
        )
        rolling = not (needs_grad or keep_trajectory or keep_noise) and grid.n_steps >= 2
        threshold = float(self.threshold.detach())
        crossings = _Crossings(threshold, drive_frames[:1], capture=rolling)
        spec = _RunSpec(
            grid=grid,
            consts=self._consts(dt),
            s0=self.s0,
            generator=generator,
            crossings=crossings,
            early_stop=early_stop,
        )
        if needs_grad and self.backward_mode == "autograd":
            traj, z = _reference_trajectory(drive_frames, *params, spec, self.a, self.b, self.d)
            with torch.no_grad():
                full = torch.cat([torch.full_like(traj[:1], self.s0), traj])
                for k0 in range(0, traj.shape[0], _CHECK):
                    crossings.update(full[k0 : k0 + _CHECK + 1], k0)
            return _Run(traj, traj.shape[0], grid, crossings, z if keep_noise else None)
        if needs_grad:
            traj, z = _WWAdjoint.apply(drive_frames, *params, spec)
            return _Run(traj, traj.shape[0], grid, crossings, z if keep_noise else None)
        with torch.no_grad():
            c = spec.consts
            _, n, batch = drive_frames.shape
            rows = _CHECK + 1 if rolling else grid.n_steps + 1
            s_buf = torch.empty((rows, n, batch), dtype=drive_frames.dtype, device=drive_frames.device)
            s_buf[0].fill_(self.s0)
            bias_u, bias_u_off = _bias_u(drive_frames, params[1], params[2], c)
            z_store = torch.empty_like(s_buf[1:]) if keep_noise else None
            steps = _integrate(
                s_buf, z_store, None, bias_u, bias_u_off, J * (-c.ad), -c.ad * float(params[3]), spec
            )
            traj = None if rolling else s_buf[1 : steps + 1]
            return _Run(traj, steps, grid, crossings, None if z_store is None else z_store[:steps])

    def _decide(self, run: _Run, keep: bool) -> WWOutput:
        """Decision on the 2-step window [τ − 1, τ] around each trial's first crossing.

        ``first_crossing_multiclass`` only reads Φ at τ and τ − 1 (slope, overshoot for ties) and, for
        undecided trials, the last step; the window holds exactly those, so the result — value and
        implicit gradient — equals the full-trajectory call at a fraction of its cost and memory
        (the full call sweeps B·T·n elements several times; tests check the equality).
        """
        steps = run.steps
        crossings = run.crossings
        threshold = self.threshold.to(self.I0.dtype if run.traj is None else run.traj.dtype)
        if steps < 2:
            assert run.traj is not None
            decision = first_crossing_multiclass(
                run.traj.permute(2, 0, 1), threshold, min_slope=self.min_slope
            )
        else:
            tau = torch.where(crossings.decided, crossings.tau, steps - 1)
            start = (tau - 1).clamp(0, steps - 2)  # τ = 0 keeps its own slope convention (Φ_{−1} := 0)
            if run.traj is None:
                assert crossings.window is not None
                window = crossings.window
            else:
                index = start.view(1, 1, -1) + torch.arange(2, device=start.device).view(2, 1, 1)
                window = run.traj.gather(0, index.expand(2, run.traj.shape[1], -1))
            decision = _window_decision(window, start, tau - start, crossings, threshold, self.min_slope)
        rt = (decision.tau + 1.0) * (run.grid.dt_ms / 1000.0) + self.motor_delay_s.to(decision.tau.dtype)
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
        drive_frames: Tensor,
        *,
        generator: torch.Generator | None,
        return_trajectories: bool,
        dt_ms: float | None = None,
        max_time_s: float | None = None,
        frame_s: float | None = None,
    ) -> WWOutput:
        run = self._trajectory(
            drive_frames,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
            frame_s=frame_s,
            generator=generator,
            early_stop=not return_trajectories,
            keep_trajectory=return_trajectories,
        )
        return self._decide(run, return_trajectories)

    def _inference(
        self,
        drive_frames: Tensor,
        *,
        generator: torch.Generator | None,
        dt_ms: float | None,
        max_time_s: float | None,
        frame_s: float | None,
        return_noise: bool,
        return_rate: bool,
    ) -> WWTrajectories:
        keep = return_noise or return_rate
        run = self._trajectory(
            drive_frames,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
            frame_s=frame_s,
            generator=generator,
            early_stop=False,
            keep_noise=keep,
        )
        traj, grid, z = run.traj, run.grid, run.z
        assert traj is not None
        dtype = traj.dtype
        noise = rate = None
        if keep:
            assert z is not None
            noise = self.sigma.to(dtype) * z
        if return_rate:
            assert noise is not None
            off = torch.zeros_like(drive_frames[:1])
            index = torch.tensor(
                [f if f >= 0 else drive_frames.shape[0] for f in grid.frame_of_step], device=traj.device
            )
            external = torch.cat([drive_frames, off])[index] * self.J_ext.to(dtype)
            s_pre = torch.cat([torch.full_like(traj[:1], self.s0), traj[:-1]])
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

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PerceptAlignError(f"seed must be an integer, got {seed!r}.")
        return torch.Generator(device=self.I0.device).manual_seed(seed)

    def _check_trials(self, n_trials: int) -> None:
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise PerceptAlignError(f"n_trials must be a positive integer, got {n_trials!r}.")


def _check_grid_args(dt_ms: float, max_time_s: float, stim_duration_s: float) -> None:
    if not (isinstance(dt_ms, (int, float)) and 0 < dt_ms <= _MAX_DT_MS):
        raise PerceptAlignError(
            f"dt_ms must be in (0, {_MAX_DT_MS}] ms, got {dt_ms!r}: explicit Euler on τ_S = 100 ms needs "
            "dt well below τ_S (1 ms is accurate; the published 26.67 ms is coarse)."
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
    if value.shape[0] == 0:
        raise PerceptAlignError(f"{name} has an empty batch; pass at least one trial.")
    if not torch.isfinite(value.detach()).all():
        raise PerceptAlignError(
            f"{name} contains NaN or infinite values; check the stimulus or network output."
        )
    return value


class WongWangN(_WongWangBase):
    """n-population Wong–Wang race: population i gets I_i = J_ext·drive_i; the first S_i above θ wins.

    ``drive`` is (B, n) (constant while the stimulus is on) or a time series (B, T_in, n) whose frames
    last ``frame_s`` seconds (default: ``stim_duration_s`` / T_in) and are held over the integration
    steps that start inside them (zero-order hold); after ``stim_duration_s`` the drive is 0.
    Learnable: J (n, n; diagonal self-excitation, negative off-diagonal inhibition), J_ext, I₀, σ, θ
    (and the motor delay with ``learn_motor_delay``); a, b, d, γ, τ_S, τ_A are fixed.
    ``backward='adjoint'`` (default) uses the memory-lean hand-written adjoint, ``'autograd'`` the plain
    per-step autograd graph (slower, kept as a reference).
    """

    def __init__(
        self,
        n_pop: int = 2,
        *,
        J: Tensor | None = None,
        dt_ms: float = 1.0,
        max_time_s: float = 2.0,
        stim_duration_s: float = 2.0,
        j_ext: float = WW_DEFAULTS["j_ext"],
        i0: float = WW_DEFAULTS["i0"],
        sigma: float = WW_DEFAULTS["sigma"],
        threshold: float = WW_DEFAULTS["threshold"],
        motor_delay_s: float = WW_DEFAULTS["motor_delay_s"],
        learn_motor_delay: bool = False,
        backward: Literal["adjoint", "autograd"] = "adjoint",
        min_slope: float = 1e-3,
    ) -> None:
        super().__init__(
            dt_ms=dt_ms,
            max_time_s=max_time_s,
            stim_duration_s=stim_duration_s,
            j_ext=j_ext,
            i0=i0,
            sigma=sigma,
            threshold=threshold,
            motor_delay_s=motor_delay_s,
            learn_motor_delay=learn_motor_delay,
            backward=backward,
            min_slope=min_slope,
        )
        if isinstance(n_pop, bool) or not isinstance(n_pop, int) or n_pop < 1:
            raise PerceptAlignError(f"n_pop must be a positive integer, got {n_pop!r}.")
        self.n_pop = n_pop
        if J is None:
            J = torch.full((n_pop, n_pop), -WW_DEFAULTS["j_cross"])
            J.fill_diagonal_(WW_DEFAULTS["j_self"])
        J = torch.as_tensor(J, dtype=torch.get_default_dtype())
        if J.shape != (n_pop, n_pop) or not torch.isfinite(J).all():
            raise PerceptAlignError(
                f"J must be a finite ({n_pop}, {n_pop}) matrix, got shape {tuple(J.shape)}."
            )
        self.J = nn.Parameter(J.clone())

    def coupling(self) -> Tensor:
        return self.J

    def _frames(self, drive: Tensor) -> Tensor:
        drive = _check_input(drive, "drive", f"(B, {self.n_pop}) or (B, T_in, {self.n_pop})")
        if drive.dim() not in (2, 3) or drive.shape[-1] != self.n_pop or drive.shape[1] == 0:
            raise PerceptAlignError(
                f"drive must have shape (B, {self.n_pop}) or (B, T_in, {self.n_pop}), "
                f"got {tuple(drive.shape)}."
            )
        drive = drive.to(self.I0.dtype)
        return drive.t().unsqueeze(0) if drive.dim() == 2 else drive.permute(1, 2, 0)

    def forward(
        self,
        drive: Tensor,
        *,
        generator: torch.Generator | None = None,
        return_trajectories: bool = False,
        frame_s: float | None = None,
        dt_ms: float | None = None,
        max_time_s: float | None = None,
    ) -> WWOutput:
        """Decisions and RTs for a batch of drives; differentiable w.r.t. the parameters and ``drive``.

        ``dt_ms`` / ``max_time_s`` override the module's grid for this call (e.g. to evaluate a model
        trained at a coarse dt on a fine one). With ``return_trajectories`` the run is not stopped early.
        """
        return self._run(
            self._frames(drive),
            generator=generator,
            return_trajectories=return_trajectories,
            frame_s=frame_s,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
        )

    def inference(
        self,
        drive: Tensor,
        *,
        generator: torch.Generator | None = None,
        dt_ms: float | None = None,
        max_time_s: float | None = None,
        frame_s: float | None = None,
        return_noise: bool = False,
        return_rate: bool = False,
    ) -> WWTrajectories:
        """Full-length trajectories (no early stop, no decision), e.g. for figures or custom readouts."""
        return self._inference(
            self._frames(drive),
            generator=generator,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
            frame_s=frame_s,
            return_noise=return_noise,
            return_rate=return_rate,
        )

    @torch.no_grad()
    def simulate(
        self,
        drive: Tensor,
        n_trials: int,
        *,
        dt_ms: float | None = None,
        seed: int | None = 0,
        max_time_s: float | None = None,
        return_trajectories: bool = False,
    ) -> WWOutput:
        """``n_trials`` trials of one condition (drive (n,)), reproducible from ``seed``."""
        self._check_trials(n_trials)
        drive = _check_input(drive, "drive", f"({self.n_pop},)")
        if drive.shape != (self.n_pop,):
            raise PerceptAlignError(
                f"simulate takes one condition: drive of shape ({self.n_pop},), got "
                f"{tuple(drive.shape)}; call forward() for a batch of conditions."
            )
        frames = self._frames(drive.to(self.I0.device).expand(n_trials, self.n_pop))
        return self._run(
            frames,
            generator=self._generator(seed),
            return_trajectories=return_trajectories,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
        )


class WongWang2(_WongWangBase):
    """Two-population Wong–Wang model driven by motion coherence c (%): I₁,₂ = J_ext(1 ± c/100).

    Population 1 (choice 0) receives the evidence for positive c, so choice 0 is correct when c > 0.
    x₁ = J₁₁S₁ − J₁₂S₂ + I₀ + I₁ + σz₁ (and symmetrically): ``J12`` is the (positive) inhibition.
    ``coherence_pct`` is (B,) (constant while the stimulus is on) or a time series (B, T_in) — a
    network's output can take the place of c (its scale absorbs the 1/100). See :class:`WongWangN`
    for the learnable parameters and the input time grid.
    """

    n_pop = 2

    def __init__(
        self,
        *,
        j11: float = WW_DEFAULTS["j_self"],
        j12: float = WW_DEFAULTS["j_cross"],
        dt_ms: float = 1.0,
        max_time_s: float = 2.0,
        stim_duration_s: float = 2.0,
        j_ext: float = WW_DEFAULTS["j_ext"],
        i0: float = WW_DEFAULTS["i0"],
        sigma: float = WW_DEFAULTS["sigma"],
        threshold: float = WW_DEFAULTS["threshold"],
        motor_delay_s: float = WW_DEFAULTS["motor_delay_s"],
        learn_motor_delay: bool = False,
        backward: Literal["adjoint", "autograd"] = "adjoint",
        min_slope: float = 1e-3,
    ) -> None:
        super().__init__(
            dt_ms=dt_ms,
            max_time_s=max_time_s,
            stim_duration_s=stim_duration_s,
            j_ext=j_ext,
            i0=i0,
            sigma=sigma,
            threshold=threshold,
            motor_delay_s=motor_delay_s,
            learn_motor_delay=learn_motor_delay,
            backward=backward,
            min_slope=min_slope,
        )
        self.J11 = nn.Parameter(torch.tensor(float(j11)))
        self.J12 = nn.Parameter(torch.tensor(float(j12)))

    def coupling(self) -> Tensor:
        row1 = torch.stack([self.J11, -self.J12])
        row2 = torch.stack([-self.J12, self.J11])
        return torch.stack([row1, row2])

    def _frames(self, coherence_pct: Tensor) -> Tensor:
        c = _check_input(coherence_pct, "coherence_pct", "(B,) or (B, T_in)")
        if c.dim() not in (1, 2) or (c.dim() == 2 and c.shape[1] == 0):
            raise PerceptAlignError(
                f"coherence_pct must have shape (B,) or (B, T_in), got {tuple(c.shape)}; for several "
                "populations use WongWangN."
            )
        c = c.to(self.I0.dtype) / 100.0
        c = c.unsqueeze(0) if c.dim() == 1 else c.t()  # (F, B)
        return torch.stack([1.0 + c, 1.0 - c], dim=1)

    def forward(
        self,
        coherence_pct: Tensor,
        *,
        generator: torch.Generator | None = None,
        return_trajectories: bool = False,
        frame_s: float | None = None,
        dt_ms: float | None = None,
        max_time_s: float | None = None,
    ) -> WWOutput:
        """Decisions and RTs for a batch of coherences; differentiable w.r.t. parameters and input.

        ``dt_ms`` / ``max_time_s`` override the module's grid for this call. With
        ``return_trajectories`` the run is not stopped early.
        """
        return self._run(
            self._frames(coherence_pct),
            generator=generator,
            return_trajectories=return_trajectories,
            frame_s=frame_s,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
        )

    def inference(
        self,
        coherence_pct: Tensor,
        *,
        generator: torch.Generator | None = None,
        dt_ms: float | None = None,
        max_time_s: float | None = None,
        frame_s: float | None = None,
        return_noise: bool = False,
        return_rate: bool = False,
    ) -> WWTrajectories:
        """Full-length trajectories (no early stop, no decision), e.g. for figures or custom readouts."""
        return self._inference(
            self._frames(coherence_pct),
            generator=generator,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
            frame_s=frame_s,
            return_noise=return_noise,
            return_rate=return_rate,
        )

    @torch.no_grad()
    def simulate(
        self,
        coherence_pct: float,
        n_trials: int,
        *,
        dt_ms: float | None = None,
        seed: int | None = 0,
        max_time_s: float | None = None,
        return_trajectories: bool = False,
    ) -> WWOutput:
        """``n_trials`` trials at one coherence (%), reproducible from ``seed``."""
        self._check_trials(n_trials)
        if (
            isinstance(coherence_pct, bool)
            or not isinstance(coherence_pct, (int, float))
            or not math.isfinite(coherence_pct)
        ):
            raise PerceptAlignError(
                f"coherence_pct must be a finite number (percent), got {coherence_pct!r}."
            )
        c = torch.full((n_trials,), float(coherence_pct), dtype=self.I0.dtype, device=self.I0.device)
        return self._run(
            self._frames(c),
            generator=self._generator(seed),
            return_trajectories=return_trajectories,
            dt_ms=dt_ms,
            max_time_s=max_time_s,
        )

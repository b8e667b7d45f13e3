"""Machinery behind :mod:`perceptalign.rtify.wongwang`: the fast integration loop, the hand-written adjoint,
the crossing search and the decision on 2-step windows. Nothing here defines the model: every function
computes exactly the recursion written out in ``wongwang.py`` (its module docstring and
``reference_trajectory``), only with fewer sweeps, conversions and memory traffic. The tests compare the
two bit for bit (no-grad, adjoint) or to float64 round-off (the autograd reference).

Why it is fast: the internal-step loop (the hot path) runs in place in preallocated (n, B) buffers (B is
the contiguous axis, so every op is one vectorised sweep) with 8 sweeps per internal step and scalars
passed as 0-dim tensors (a Python number costs a tensor wrap per op); the noise comes pre-scaled from the
generator; the 0/0 guard of H runs only when a chunk actually produced a NaN (the chunk is then replayed
with it, same values). Crossings are checked on the output grid once per chunk (``_CHECK`` internal steps
or more), and a run that only needs decisions keeps a rolling chunk of output rows plus each trial's
2-step window instead of the whole trajectory (no O(T·n·B) memory to fault in), decides with
elementwise ops on those windows, and stops as soon as every trial has decided. Gradients do not go
through autograd's per-step graph: a reverse-mode sweep of the Euler recursion (``WWAdjoint``) reads u and
H from the forward sweep and evaluates H' with a 4-op closed form plus a precomputed patch for the few
entries near a x = b, so training memory is four (T_int, n, B) tensors instead of ~15 saved tensors per
step, and the backward sweep starts at the latest internal step that receives a gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.decision import Decision, crossing_time

__all__ = [
    "BLOCK",
    "Consts",
    "Crossings",
    "Grid",
    "Run",
    "RunSpec",
    "WWAdjoint",
    "decide",
    "integrate",
    "make_grid",
    "run_fast",
    "window_decision",
]

# Internal steps per noise draw: fixed, because the noise stream (hence every seeded result) depends on it.
BLOCK = 64
# Internal steps per noise piece / crossing-check granularity (divides BLOCK): finding each new decision's
# first crossing costs O(chunk) per trial, and stopping overshoots by less than one chunk.
_CHECK = 16
_SLOPE_CUTOFF = 0.02


# ------------------------------------------------------------------------------------------ the grid
@dataclass
class Grid:
    """Output grid (``n_steps`` steps of ``dt_ms``) and the internal grid (``n_sub`` Euler steps each).

    ``frame_of_step[k]`` is the input frame that drives INTERNAL step k (−1: stimulus off).
    """

    dt_ms: float
    n_steps: int
    n_sub: int
    frame_of_step: list[int]

    @property
    def h_ms(self) -> float:
        """Internal (Euler) step in ms."""
        return self.dt_ms / self.n_sub

    @property
    def n_internal(self) -> int:
        return self.n_steps * self.n_sub


def substeps(dt_ms: float, max_substep_ms: float | None) -> int:
    """Internal steps per output step: the fewest that make each ≤ ``max_substep_ms`` (1 without a cap)."""
    if max_substep_ms is None:
        return 1
    return max(1, math.ceil(dt_ms / max_substep_ms - 1e-9))


def make_grid(
    dt_ms: float,
    max_time_s: float,
    n_frames: int,
    frame_ms: float,
    stim_ms: float,
    max_substep_ms: float | None,
) -> Grid:
    """The grid of one run: T = round(max_time/dt) output steps of m internal steps each, frames held.

    Internal step k starts at t_k = k·h; it is driven by frame ⌊t_k / frame_ms⌋ (capped at the last frame)
    while t_k < ``stim_ms``, and by nothing after.
    """
    n_steps = max(1, round(max_time_s * 1000.0 / dt_ms))
    n_sub = substeps(dt_ms, max_substep_ms)
    h = dt_ms / n_sub
    eps = 1e-9 * h
    frames = []
    for k in range(n_steps * n_sub):
        t = k * h
        frames.append(-1 if t + eps >= stim_ms else min(n_frames - 1, int((t + eps) // frame_ms)))
    return Grid(dt_ms=float(dt_ms), n_steps=n_steps, n_sub=n_sub, frame_of_step=frames)


@dataclass
class Consts:
    """Scalars of one internal step of length h, folded so the hot loop does the fewest ops."""

    ad: float  # a·d: x → v = d(a x − b)
    bd: float
    c1: float  # h·γ/(1000 d): H·γ/1000·h = c1·g
    decay: float  # 1 − h/τ_S
    rho: float  # e^{−h/τ_A}
    cn: float  # √((1 − ρ²)/2)

    @classmethod
    def of(cls, *, a: float, b: float, d: float, gamma: float, tau_s_ms: float, tau_a_ms: float, h_ms: float):
        rho = math.exp(-h_ms / tau_a_ms)
        return cls(
            ad=a * d,
            bd=b * d,
            c1=h_ms * gamma / (1000.0 * d),
            decay=1.0 - h_ms / tau_s_ms,
            rho=rho,
            cn=math.sqrt((1.0 - rho * rho) / 2.0),
        )


@dataclass
class RunSpec:
    grid: Grid
    consts: Consts
    s0: float
    generator: torch.Generator | None
    crossings: Crossings
    early_stop: bool  # stop at the end of the first chunk after which every trial has crossed


@dataclass
class Run:
    """Outcome of one integration on the output grid (``traj`` None when only windows were kept)."""

    traj: Tensor | None  # (T_eff, n, B) output rows
    steps: int  # output steps integrated (T, or fewer after an early stop)
    grid: Grid
    crossings: Crossings
    internal: Tensor | None = None  # (T_eff·m + 1, n, B) internal states incl. S(0), when kept
    z: Tensor | None = None  # (T_eff·m, n, B) unit OU noise of every internal step, when kept


# --------------------------------------------------------------------------------------------- noise
def noise_pieces(k0: int, k1: int, per_step: int, split: bool) -> list[tuple[int, int]]:
    """Internal steps [k0, k1) of one noise block cut into the calls that draw them.

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


def draw_scaled_noise(out: Tensor, scale: float, generator: torch.Generator | None) -> None:
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


class _Noise:
    """The unit OU noise z_k of every internal step, produced in step order from the block stream.

    ``store`` (n_int, n, B) keeps every z (training, inference): whole blocks are drawn into it. Without a
    store (decision-only runs on CPU) a buffer holds one chunk of internal steps, drawn ``_CHECK`` steps
    at a time as the loop reaches them; chunks start at multiples of ``_CHECK``, so every draw is a
    16-aligned piece of a block and the stream is the same. Either way the OU update z_k = ρ z_{k−1} +
    √((1 − ρ²)/2) ξ_k happens in place on the first visit of step k; a replayed chunk reuses the values.
    """

    def __init__(
        self,
        n_int: int,
        like: Tensor,
        consts: Consts,
        generator: torch.Generator | None,
        store: Tensor | None,
        chunk_rows: int,
    ) -> None:
        _, n, batch = like.shape
        self.n_int = n_int
        self.per_step = n * batch
        self.rho = consts.rho
        self.cn = consts.cn
        self.generator = generator
        self.store = store
        self.buf = None if store is not None else like.new_empty((chunk_rows, n, batch))
        self.base = 0
        self.drawn = 0  # internal steps drawn so far
        self.done = 0  # internal steps whose z is final
        self.z_prev = like.new_zeros((n, batch))

    def begin_chunk(self, k0: int) -> None:
        """Chunk of internal steps starting at k0 (a multiple of ``_CHECK``) about to be integrated."""
        if self.buf is not None:
            self.base = k0
            self.z_prev = self.z_prev.clone()  # the buffer row it points to is about to be redrawn

    def _draw(self, k: int) -> None:
        a = self.drawn
        block_end = min((a // BLOCK + 1) * BLOCK, self.n_int)
        if self.store is not None:
            draw_scaled_noise(self.store[a:block_end], self.cn, self.generator)
            self.drawn = block_end
            return
        assert self.buf is not None
        b = a
        for p0, p1 in noise_pieces(a, block_end, self.per_step, split=True):
            if p0 > k:
                break
            draw_scaled_noise(self.buf[p0 - self.base : p1 - self.base], self.cn, self.generator)
            b = p1
        self.drawn = b

    def z(self, k: int) -> Tensor:
        if k >= self.drawn:
            self._draw(k)
        row = self.store[k] if self.store is not None else self.buf[k - self.base]  # type: ignore[index]
        if k >= self.done:
            row.add_(self.z_prev, alpha=self.rho)  # z = √((1 − ρ²)/2)·ξ + ρ z_prev: exact OU update
            self.z_prev = row
            self.done = k + 1
        return row

    def finish_block(self) -> None:
        """After an early stop, draw the rest of the current block: the generator ends where it would."""
        a = self.drawn
        if self.store is not None or a % BLOCK == 0 or a >= self.n_int:
            return
        assert self.buf is not None
        block_end = min((a // BLOCK + 1) * BLOCK, self.n_int)
        for p0, p1 in noise_pieces(a, block_end, self.per_step, split=True):
            draw_scaled_noise(self.buf[: p1 - p0], self.cn, self.generator)
        self.drawn = block_end


# ----------------------------------------------------------------------------------------- crossings
class Crossings:
    """First output step at which any population's S exceeds θ, tracked chunk by chunk during integration.

    Same rule as ``first_crossing_multiclass`` (strict >, first index); it lets the run stop early
    and lets the decision be taken on a 2-step window instead of the whole (B, T, n) trajectory. With
    ``capture`` it also copies each trial's window [s − 1, s] out of the chunk as the trial decides
    (and the last two steps for trials that never do), so a run that only needs decisions can keep a
    rolling (chunk + 1)-row buffer instead of the whole (T + 1, n, B) trajectory. Masks are 0/1 floats:
    on CPU a comparison writing bool is ~5× slower than one writing float.
    """

    def __init__(self, threshold: float, like: Tensor, capture: bool, chunk: int = _CHECK) -> None:
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
        self._weights = torch.arange(chunk, 0, -1, dtype=like.dtype, device=dev).view(-1, 1)
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

        ``blk`` (K + 1, n, B), with (n, B) contiguous: row 0 is the state before the chunk (output index
        offset − 1, or S(0)), rows 1..K hold output indices offset..offset + K − 1. ``col_max`` is
        ``scan(blk)`` when the caller already has it (and has checked it is finite).
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
        weights = self._weights[-steps:]
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
            # Window rows s − 1, s are blk rows local, local + 1; s = 0 keeps [0, 1] (rows 1, 2).
            lo = local.clamp_min(1) if offset == 0 else local
            pos = (lo * (n * batch)).view(1, 1, -1) + self._row_offset + cols.view(1, n, -1)
            values = blk.view(-1).index_select(0, pos.view(-1)).view(2, n, -1)
            self.window.index_copy_(2, idx, values)
        return self.n_decided == self.batch

    def finish(self, blk: Tensor) -> None:
        """Give the undecided trials their censoring window: the last two rows of the final chunk."""
        if self.window is not None and self.n_decided < self.batch:
            self.window = torch.where(self.decided.view(1, 1, -1), self.window, blk[-2:])


def chunk_steps(n_sub: int) -> int:
    """Output steps per chunk: the fewest K ≥ ``_CHECK``/m with K·m a multiple of ``_CHECK``.

    Chunks then start at internal steps that are multiples of ``_CHECK`` (needed by the piecewise noise
    draws) and end on output steps (needed by the crossing check).
    """
    return _CHECK // math.gcd(n_sub, _CHECK)


# ------------------------------------------------------------------------------------- the hot loop
def integrate(
    out_buf: Tensor | None,
    s_int: Tensor | None,
    z_store: Tensor | None,
    ug_store: tuple[Tensor, Tensor] | None,
    bias_u: Tensor,
    bias_u_off: Tensor,
    j_u: Tensor,
    sig_u: float,
    spec: RunSpec,
) -> int:
    """Run the Euler recursion in place; return the number of OUTPUT steps done.

    Either ``s_int`` (T·m + 1, n, B) receives every internal state (training, inference; the output rows
    are its rows m, 2m, …), or ``out_buf`` receives the output rows only: the whole output trajectory
    (T + 1, n, B) or, when ``spec.crossings`` captures the decision windows, a rolling (K + 1, n, B)
    buffer whose row 0 carries the state across chunks; the m − 1 intermediate states then live in two
    scratch rows. Row 0 holds S(0) on entry. Everything is expressed in u = −d(a x − b) so that
    g = u/expm1(u) needs no negations: ``bias_u`` (F, n, B) / ``bias_u_off`` hold −(a d (I₀ + J_ext·drive)
    − b d), ``j_u`` = −a d J and ``sig_u`` = −a d σ. ``z_store`` (T·m, n, B), when given, receives the
    unit OU noise of every internal step and ``ug_store`` u and the gain g(u) (for the adjoint).

    Per internal step: u (addmm, + noise), g (expm1, div), c1·g, decay − c1·g and S' = c1 g +
    S(decay − c1 g), plus the in-place OU update: 8 sweeps over (n, B) buffers that stay in cache.
    g = 0/0 (u == 0 exactly, limit 1) is not screened per step: it turns the trial's S into NaN, which
    the chunk's crossing scan sees (the max over time propagates NaN), and the chunk is then replayed
    from its start with NaN → 1 — the same values as screening every step, for one cheap check per chunk.
    """
    c = spec.consts
    grid = spec.grid
    m = grid.n_sub
    frames = grid.frame_of_step
    n_steps = grid.n_steps
    crossings = spec.crossings
    rolling = crossings.window is not None
    buf = s_int if s_int is not None else out_buf
    assert buf is not None
    _, n, batch = buf.shape
    like = {"dtype": buf.dtype, "device": buf.device}
    k_out = chunk_steps(m)
    noise = _Noise(grid.n_internal, buf[:1], c, spec.generator, z_store, k_out * m)
    u, e, g, mm = (torch.empty((n, batch), **like) for _ in range(4))
    scratch = (torch.empty((n, batch), **like), torch.empty((n, batch), **like)) if s_int is None else None
    c1, decay = torch.tensor(c.c1, **like), torch.tensor(c.decay, **like)
    bias_rows = bias_u.unbind(0)
    int_rows = s_int.unbind(0) if s_int is not None else None
    u_rows, g_rows = (store.unbind(0) for store in ug_store) if ug_store is not None else (None, None)

    def advance(c0: int, out_rows: tuple[Tensor, ...], replay: bool) -> None:
        for j in range(len(out_rows) - 1):
            s = out_rows[j]
            for i in range(m):
                k = (c0 + j) * m + i
                if int_rows is not None:
                    target = int_rows[k + 1]
                elif i == m - 1:
                    target = out_rows[j + 1]
                else:
                    target = scratch[i & 1]  # type: ignore[index]
                z = noise.z(k)
                f = frames[k]
                uk = u if u_rows is None else u_rows[k]
                torch.addmm(bias_rows[f] if f >= 0 else bias_u_off, j_u, s, out=uk)
                uk.add_(z, alpha=sig_u)
                torch.expm1(uk, out=e)
                gk = g if g_rows is None else g_rows[k]
                torch.div(uk, e, out=gk)
                if replay:
                    gk.nan_to_num_(nan=1.0)  # u == 0 exactly: 0/0, limit 1
                torch.mul(gk, c1, out=mm)
                torch.sub(decay, mm, out=e)  # 1 − h/τ_S − c1 g
                torch.addcmul(mm, s, e, out=target)  # S(1 − h/τ_S − c1 g) + c1 g
                s = target

    for c0 in range(0, n_steps, k_out):
        c_end = min(c0 + k_out, n_steps)
        if s_int is not None:
            blk = s_int[c0 * m : c_end * m + 1 : m]  # output rows c0 − 1 … c_end − 1 (row 0: chunk start)
        else:
            base = 0 if rolling else c0
            blk = out_buf[base : base + c_end - c0 + 1]  # type: ignore[index]
        noise.begin_chunk(c0 * m)
        out_rows = blk.unbind(0)
        advance(c0, out_rows, replay=False)
        col_max = Crossings.scan(blk)
        if not math.isfinite(float(col_max.sum())):
            advance(c0, out_rows, replay=True)
            col_max = Crossings.scan(blk)
            crossings.finite = crossings.finite and math.isfinite(float(col_max.sum()))
        if crossings.update(blk, c0, col_max) and spec.early_stop:
            noise.finish_block()
            return c_end
        if c_end == n_steps:
            crossings.finish(blk)
        elif rolling:
            out_buf[0].copy_(blk[-1])  # type: ignore[index]
    return n_steps


def bias_u(drive_frames: Tensor, j_ext: Tensor, i0: Tensor, c: Consts) -> tuple[Tensor, Tensor]:
    """Per-frame folded bias −(a d (I₀ + J_ext·drive) − b d) and the stimulus-off bias."""
    bias = (drive_frames * j_ext + i0) * (-c.ad) + c.bd
    off = (i0 * (-c.ad) + c.bd).reshape(1, 1).expand(drive_frames.shape[1], 1)
    return bias.contiguous(), off.to(drive_frames.dtype)


# -------------------------------------------------------------------------------------- the adjoint
def slope_from_gain_(u: Tensor, g: Tensor, out: Tensor, small: Tensor, us: Tensor, p: Tensor) -> Tensor:
    """dg/dv at v = −u into ``out``, given g = g(v) (reference; ``small``/``us``/``p`` are scratch).

    Closed form g' = g(g + u − 1)/u (from g(v) − g(−v) = v) cancels near u = 0, so |u| < 0.02 uses the
    series 1/2 + v/6 − v³/180 (first omitted term v⁵/5040 < 1e-12 there; the closed form loses at most
    eps/0.02 outside). Blended arithmetically with a 0/1 mask so the unused branch stays finite. This
    defines the adjoint's slope values; the adjoint itself gets the same values cheaper from
    ``slope_closed_`` plus ``SlopePatch``.
    """
    torch.abs(u, out=us)
    torch.lt(us, _SLOPE_CUTOFF, out=small)
    torch.add(u, small, out=us)  # safe denominator where the series takes over
    torch.add(g, u, out=out).sub_(1.0).mul_(g).div_(us)
    torch.mul(u, small, out=us)
    torch.mul(us, us, out=p).mul_(-1.0 / 180.0).add_(1.0 / 6.0).mul_(us).neg_().add_(0.5)
    p.sub_(out).mul_(small)
    return out.add_(p)


def slope_closed_(u: Tensor, g: Tensor, out: Tensor, one: Tensor) -> Tensor:
    """Closed form g'(v) = g(g + u − 1)/u at v = −u into ``out``: exact away from u = 0, NaN at u = 0.

    Same op sequence as the non-series entries of ``slope_from_gain_`` (bit-identical there); the
    entries with |u| < ``_SLOPE_CUTOFF`` get ``_slope_series_values`` on top (see ``SlopePatch``).
    """
    return torch.add(g, u, out=out).sub_(one).mul_(g).div_(u)


def _slope_series_values(u: Tensor, g: Tensor) -> Tensor:
    """g' for entries with |u| < cutoff, with ``slope_from_gain_``'s exact arithmetic (mask = 1)."""
    closed = (g + u).sub_(1.0).mul_(g).div_(u + 1.0)  # its closed form on the shifted denominator
    series = (u * u).mul_(-1.0 / 180.0).add_(1.0 / 6.0).mul_(u).neg_().add_(0.5)
    return closed.add_(series.sub_(closed))  # closed + (series − closed), as the blend rounds it


class SlopePatch:
    """The series-region entries of every step's g', found in one pass over the stored u.

    The blended ``slope_from_gain_`` evaluates both branches on every entry (17 sweeps per step); the
    adjoint instead runs the 4-op closed form and overwrites the few entries with |u| < cutoff (the input
    current within 0.02/(a d) ≈ 5e-4 nA of b/a) by their precomputed values: bit-identical gradients.
    """

    def __init__(self, u_all: Tensor, g_all: Tensor) -> None:
        steps = u_all.shape[0]
        per_step = u_all[0].numel()
        flat_u = u_all.reshape(-1)
        found = []
        for k0 in range(0, steps, BLOCK):  # bounded temporaries
            part = flat_u[k0 * per_step : min(steps, k0 + BLOCK) * per_step]
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


def _last_nonzero_step(grad: Tensor) -> int:
    """Index of the last time step (dim 0) with a non-zero entry, −1 if none; scans back in blocks.

    The decision gradient is non-zero only at each trial's crossing, so the adjoint sweep can start at
    the latest decision instead of T − 1; scanning from the end usually touches one block.
    """
    for k1 in range(grad.shape[0], 0, -BLOCK):
        k0 = max(0, k1 - BLOCK)
        flat = grad[k0:k1].flatten(1)
        active = (flat.amax(dim=1) > 0) | (flat.amin(dim=1) < 0)
        hits = torch.nonzero(active).flatten()
        if hits.numel() > 0:
            return k0 + int(hits[-1])
    return -1


class WWAdjoint(torch.autograd.Function):
    """Internal S (T·m, n, B) and noise z from (drive frames, J, J_ext, I₀, σ); hand-written adjoint."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, drive_frames: Tensor, J: Tensor, j_ext: Tensor, i0: Tensor, sigma: Tensor, spec: RunSpec
    ) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)  # z's gradient is never used: don't fill a (T, n, B) zero tensor
        c = spec.consts
        _, n, batch = drive_frames.shape
        n_int = spec.grid.n_internal
        s_buf = torch.empty((n_int + 1, n, batch), dtype=drive_frames.dtype, device=drive_frames.device)
        s_buf[0].fill_(spec.s0)
        z_store = torch.empty_like(s_buf[1:])
        ug_store = (torch.empty_like(z_store), torch.empty_like(z_store))
        b_u, b_off = bias_u(drive_frames, j_ext, i0, c)
        j_u = J * (-c.ad)
        steps = integrate(None, s_buf, z_store, ug_store, b_u, b_off, j_u, -c.ad * float(sigma), spec)
        k_eff = steps * spec.grid.n_sub
        ctx.spec = spec
        ctx.s_buf = s_buf
        ctx.z_store = z_store
        ctx.ug_store = ug_store
        ctx.save_for_backward(drive_frames, J, j_ext, i0, sigma)
        z_out = z_store[:k_eff]
        ctx.mark_non_differentiable(z_out)
        return s_buf[1 : k_eff + 1], z_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_s: Tensor | None, _grad_z: Tensor | None) -> tuple[Tensor | None, ...]:
        """Reverse sweep from the latest internal step with a gradient; u and g come from the forward."""
        drive_frames, J, j_ext, i0, sigma = ctx.saved_tensors
        spec: RunSpec = ctx.spec
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
            patch = SlopePatch(u_store[: last + 1], g_store[: last + 1])
            one, c1, neg_c1, decay = (torch.tensor(v, **like) for v in (1.0, c.c1, -c.c1, c.decay))
            lam = torch.zeros((n, batch), **like)
            gp, q, w = (torch.empty_like(lam) for _ in range(3))
            stores = (s_buf, z_store, u_store, g_store)
            rows = list(zip(*(x.unbind(0) for x in stores), strict=False))
            q_rows = q_frames.unbind(0)
            for k in range(last, -1, -1):
                s, z, u, g = rows[k]
                lam.add_(grad_s[k])  # lam = dL/dS_{k+1}
                slope_closed_(u, g, gp, one)
                patch.apply_(k, gp)
                torch.mul(s, neg_c1, out=q).add_(c1).mul_(gp).mul_(lam)  # dL/dv_k = λ c1 (1 − S) g'
                lam.mul_(torch.mul(g, neg_c1, out=w).add_(decay))  # through S_k directly: 1 − h/τ_S − c1 g
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


# ------------------------------------------------------------------------------------------ decision
def window_decision(
    window: Tensor,
    start: Tensor,
    local_step: Tensor,
    crossings: Crossings,
    threshold: Tensor,
    min_slope: float,
    s0: float,
) -> Decision:
    """``first_crossing_multiclass(..., initial=s0)`` on the (2, n, B) windows [start, start + 1].

    The crossing step is already known from the integration (``local_step`` ∈ {0, 1} inside the window,
    1 for undecided trials), so instead of searching the window with reductions over its size-2 axes
    (each several ms at B = 10⁴ on CPU) this applies the same rules with elementwise ops over (n, B):
    the populations above θ at s tie, the largest overshoot wins, then the lowest index; undecided
    trials report the highest final S. The continuous decision time and its gradient come from the
    decision module's ``crossing_time`` (interpolated t*, S_{−1} := s0), so slope clamping and
    censoring follow its conventions exactly.
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
    at_step = values[1]
    if crossings.any_tau0:
        at_step = torch.where((local_step == 0).view(1, -1), values[0], at_step)  # (n, B)
    if n == 1:
        choice = torch.zeros(batch, dtype=torch.long, device=values.device)
        n_ties = 0
    else:
        tied = at_step > thr  # the populations crossing at s (none for undecided trials)
        winner = first_argmax(torch.where(tied, at_step - thr, -math.inf))
        if crossings.n_decided == crossings.batch:
            choice = winner
        else:
            choice = torch.where(decided, winner, first_argmax(values[1]))
        n_ties = int((tied[0] & tied[1]).sum() if n == 2 else (tied.sum(dim=0) > 1).sum())
    level = window.gather(1, choice.view(1, 1, -1).expand(2, 1, batch)).squeeze(1)  # (2, B)
    # Undecided trials: the window [T − 2, T − 1] gives t* = 2 there, i.e. T after the shift below.
    t_local, n_clamped = crossing_time(
        level.t(), threshold.expand(batch), local_step, decided, min_slope=min_slope, initial=s0
    )
    step = torch.where(decided, crossings.tau, start + local_step)
    return Decision(
        tau=t_local + start.to(t_local.dtype),
        choice=choice,
        decided=decided,
        n_clamped=n_clamped,
        n_ties=n_ties,
        step=step,
    )


def first_argmax(values: Tensor) -> Tensor:
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


# ----------------------------------------------------------------------------------- orchestration
def run_fast(
    drive_frames: Tensor,
    params: tuple[Tensor, Tensor, Tensor, Tensor],
    spec: RunSpec,
    *,
    needs_grad: bool,
    keep_trajectory: bool,
    keep_internal: bool,
) -> Run:
    """Integrate drive frames (F, n, B) with (J, J_ext, I₀, σ): the adjoint path when a gradient is needed,
    else in place under no_grad (rolling decision windows when neither trajectory nor internals are kept).
    """
    grid = spec.grid
    m = grid.n_sub
    if needs_grad:
        internal, z = WWAdjoint.apply(drive_frames, *params, spec)
        traj = internal[m - 1 :: m]
        full = torch.cat([torch.full_like(internal[:1], spec.s0), internal]) if keep_internal else None
        return Run(traj, traj.shape[0], grid, spec.crossings, full, z if keep_internal else None)
    J, j_ext, i0, sigma = params
    c = spec.consts
    _, n, batch = drive_frames.shape
    like = {"dtype": drive_frames.dtype, "device": drive_frames.device}
    rolling = spec.crossings.window is not None
    with torch.no_grad():
        b_u, b_off = bias_u(drive_frames, j_ext, i0, c)
        # The chunked noise buffer needs CPU's piecewise-identical normal_ and ≥ 16 values per step.
        store = keep_internal or drive_frames.device.type != "cpu" or n * batch < 16
        z_store = torch.empty((grid.n_internal, n, batch), **like) if store else None
        s_int = out_buf = None
        if keep_internal:
            s_int = torch.empty((grid.n_internal + 1, n, batch), **like)
            s_int[0].fill_(spec.s0)
        else:
            rows = chunk_steps(m) + 1 if rolling else grid.n_steps + 1
            out_buf = torch.empty((rows, n, batch), **like)
            out_buf[0].fill_(spec.s0)
        steps = integrate(out_buf, s_int, z_store, None, b_u, b_off, J * (-c.ad), -c.ad * float(sigma), spec)
        if s_int is not None:
            k_eff = steps * m
            traj = s_int[m : k_eff + 1 : m]
            internal = s_int[: k_eff + 1] if keep_internal else None
            z = z_store[:k_eff] if keep_internal and z_store is not None else None
            return Run(traj, steps, grid, spec.crossings, internal, z)
        assert out_buf is not None
        return Run(None if rolling else out_buf[1 : steps + 1], steps, grid, spec.crossings)


def decide(run: Run, threshold: Tensor, min_slope: float, s0: float) -> Decision:
    """Decision on the 2-step window [s − 1, s] of the output grid around each trial's first crossing.

    ``first_crossing_multiclass`` only reads S at s and s − 1 (slope, overshoot for ties) and, for
    undecided trials, the last step; the window holds exactly those, so the result — value and
    gradient — equals the full-trajectory call at a fraction of its cost and memory (the full call sweeps
    B·T·n elements several times; tests check the equality).
    """
    from perceptalign.rtify.decision import first_crossing_multiclass

    steps = run.steps
    crossings = run.crossings
    if steps < 2:
        assert run.traj is not None
        return first_crossing_multiclass(
            run.traj.permute(2, 0, 1), threshold, min_slope=min_slope, initial=s0
        )
    step = torch.where(crossings.decided, crossings.tau, steps - 1)
    start = (step - 1).clamp(0, steps - 2)  # s = 0 keeps its own convention (S_{−1} := s0)
    if run.traj is None:
        assert crossings.window is not None
        window = crossings.window
    else:
        index = start.view(1, 1, -1) + torch.arange(2, device=start.device).view(2, 1, 1)
        window = run.traj.gather(0, index.expand(2, run.traj.shape[1], -1))
    return window_decision(window, start, step - start, crossings, threshold, min_slope, s0)

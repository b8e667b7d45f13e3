"""Benchmark: are RTify's reaction-time gradients right? Estimators against finite differences.

Run:  python benchmarks/rtify_gradients.py [--quick] [--temperature 0.1]

Processes: a two-bound random walk, a noisy leaky read-out accumulator (``increment``-like evidence), and
the Wong–Wang race at 6.4 % and 51.2 % coherence (1/10 of the trials: its trajectories are long).
For noisy accumulators the quantities a fit to human data needs are distributional: the mean reaction
time E[RT] and the probability of a correct choice P(correct). This prints, for each process and each
parameter (threshold θ, drift/input, non-decision time t₀), their derivative by

* ``soft``: the default estimator, the soft first-passage distribution (``decision.first_passage``),
* ``implicit``: the published implicit-function rule on the hard crossing (pathwise; no choice gradient),
* ``interp``: the exact derivative of each trial's interpolated crossing time (pathwise),
* ``FD``: central finite differences of the hard process on common random numbers (the truth), with its
  standard error from the per-trial differences.

The estimators' own standard errors come from splitting the trials into 10 batches.

Known limitation, shown by this benchmark: in Wong–Wang the choice is settled by the competition between
the populations long before either crosses θ, so no smoothing at the bound gives dP(correct)/dI₀ (the
soft estimator returns ~0 there, as the pathwise rules do); E[RT] derivatives are right. The relative error
of an estimator is |est − FD| / |FD| where the FD differs from 0 by more than 3 standard errors
(otherwise that row is skipped: nothing to be relative to). A 5-standard-error rule keeps rows whose truth
is known to better than 20 %. The last lines report the cost of one
forward + backward pass of each estimator, and the worst relative error of the default estimator
(target ≤ 0.15).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from perceptalign.rtify.decision import (
    first_crossing_multiclass,
    first_crossing_two_bound,
    first_passage,
    rt_seconds,
)

N_BATCHES = 10


@dataclass
class Process:
    """A noisy accumulator: ``phi(params, noise)`` gives (B, T) signed (two bounds) or (B, T, C) (race)."""

    name: str
    mode: str  # "two_bound" or "race"
    base: dict[str, float]  # parameter values; always has "threshold" and "t0"
    drift_name: str
    dt: float
    noise: Callable[[int, int], Tensor]
    phi: Callable[[dict[str, Tensor], Tensor], Tensor]
    correct: int = 1
    initial: float = 0.0
    fd_rel_step: float = 0.05


def _hard(process: Process, params: dict[str, Tensor], noise: Tensor, gradient: str):
    phi = process.phi(params, noise)
    if process.mode == "two_bound":
        d = first_crossing_two_bound(phi, params["threshold"], gradient=gradient)
    else:
        d = first_crossing_multiclass(phi, params["threshold"], gradient=gradient, initial=process.initial)
    return d


def hard_quantities(process: Process, params: dict[str, Tensor], noise: Tensor, gradient: str):
    """Per-trial (RT, correct, decided) of the hard process; RT differentiable by ``gradient``."""
    d = _hard(process, params, noise, gradient)
    rt = rt_seconds(d.tau, process.dt, params["t0"])
    return rt, (d.choice == process.correct) & d.decided, d.decided


def soft_quantities(process: Process, params: dict[str, Tensor], noise: Tensor, temperature: float):
    """(E[RT | decided], P(correct)) of a batch under the soft first-passage distribution."""
    phi = process.phi(params, noise)
    fp = first_passage(
        phi, params["threshold"], mode=process.mode, temperature=temperature, initial=process.initial
    )
    rt = rt_seconds(fp.time, process.dt, params["t0"])
    mean_rt = (fp.mass * rt).sum() / fp.mass.sum()
    p_correct = fp.mass[..., process.correct].sum() / phi.shape[0]
    return mean_rt, p_correct


def _params(process: Process, requires_grad: bool = False, **shift: float) -> dict[str, Tensor]:
    return {
        k: torch.tensor(v + shift.get(k, 0.0), dtype=torch.float64, requires_grad=requires_grad)
        for k, v in process.base.items()
    }


def finite_differences(process: Process, noise: Tensor, name: str) -> dict[str, tuple[float, float]]:
    """Central differences on common random numbers: {quantity: (derivative, standard error)}."""
    if name == "t0":  # RT is linear in t₀ and the choice does not depend on it: exact
        return {"E[RT]": (1.0, 0.0), "P(correct)": (0.0, 0.0)}
    h = process.fd_rel_step * abs(process.base[name])
    with torch.no_grad():
        up = hard_quantities(process, _params(process, **{name: h}), noise, "interpolated")
        down = hard_quantities(process, _params(process, **{name: -h}), noise, "interpolated")
    out = {}
    # E[RT | decided] is a ratio; with everything decided (checked) it is the plain mean of per-trial RTs.
    if not (bool(up[2].all()) and bool(down[2].all())):
        raise SystemExit(f"{process.name}: some trials do not decide; lengthen the window")
    for key, index in (("E[RT]", 0), ("P(correct)", 1)):
        diff = (up[index].double() - down[index].double()) / (2 * h)
        out[key] = (float(diff.mean()), float(diff.std() / math.sqrt(len(diff))))
    return out


def _batched(estimate: Callable[[Tensor], dict[str, float]], noise: Tensor) -> dict[str, tuple[float, float]]:
    """Mean and standard error of a per-batch estimate over N_BATCHES equal batches."""
    rows = [estimate(chunk) for chunk in noise.chunk(N_BATCHES)]
    return {
        key: (
            sum(r[key] for r in rows) / len(rows),
            float(torch.tensor([r[key] for r in rows]).std()) / math.sqrt(len(rows)),
        )
        for key in rows[0]
    }


def estimator_gradients(
    process: Process, noise: Tensor, name: str, kind: str, temperature: float
) -> dict[str, tuple[float, float]]:
    def one(chunk: Tensor) -> dict[str, float]:
        params = _params(process, requires_grad=True)
        if kind == "soft":
            mean_rt, p_correct = soft_quantities(process, params, chunk, temperature)
            (g_rt,) = torch.autograd.grad(mean_rt, params[name], retain_graph=True, allow_unused=True)
            (g_p,) = torch.autograd.grad(p_correct, params[name], allow_unused=True)
        else:
            rt, _, _ = hard_quantities(process, params, chunk, kind)
            (g_rt,) = torch.autograd.grad(rt.mean(), params[name], allow_unused=True)
            g_p = None  # a hard choice has no gradient: the published rule gives 0
        return {
            "E[RT]": 0.0 if g_rt is None else float(g_rt),
            "P(correct)": 0.0 if g_p is None else float(g_p),
        }

    return _batched(one, noise)


# ----------------------------------------------------------------------------- processes
def random_walk() -> Process:
    """Two-bound random walk: Φ_t = Σ (v + σ ξ), σ = 1, bounds ±θ; RT in s at dt = 10 ms."""
    steps = 400

    def noise(n: int, seed: int) -> Tensor:
        return torch.randn(n, steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    return Process(
        name="random walk (v 0.3, θ 8)",
        mode="two_bound",
        base={"threshold": 8.0, "drift": 0.3, "t0": 0.3},
        drift_name="drift",
        dt=0.01,
        noise=noise,
        phi=lambda p, xi: torch.cumsum(p["drift"] + xi, dim=1),
    )


def increment_accumulator() -> Process:
    """Leaky noisy state read out directly (``increment`` evidence: Φ_t = w·h_t is itself noisy).

    h_t = λ h_{t−1} + (1 − λ)(input + σ ξ_t), λ = 0.8, σ = 2: Φ wanders and often turns back below θ,
    the regime where probability mass jumps between steps and pathwise gradients fail most.
    """
    steps, lam, sigma = 600, 0.8, 2.0

    def noise(n: int, seed: int) -> Tensor:
        return torch.randn(n, steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def phi(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        drive = (1 - lam) * (p["input"] + sigma * xi)
        kernel = lam ** torch.arange(steps, dtype=torch.float64)
        # h_t = Σ_k λ^{t−k} drive_k, as a causal convolution (exact, no Python loop over steps)
        spectrum = torch.fft.rfft(drive, n=2 * steps) * torch.fft.rfft(kernel, n=2 * steps)
        return torch.fft.irfft(spectrum, n=2 * steps)[:, :steps]

    return Process(
        name="increment evidence (input 0.25, θ 1.2)",
        mode="two_bound",
        base={"threshold": 1.2, "input": 0.25, "t0": 0.3},
        drift_name="input",
        dt=0.01,
        noise=noise,
        phi=phi,
    )


class _Trajectories(torch.nn.Module):
    """Calls ``WongWang2.trajectories`` from ``forward``, so ``torch.func.functional_call`` can swap in the
    benchmark's own I₀ tensor (and gradients reach it through the model's adjoint)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.ww = model

    def forward(self, coherence: float, n: int, seed: int) -> Tensor:
        return self.ww.trajectories(coherence, n, seed=seed, grad=True)


def wong_wang(coherence: float) -> Process:
    """Wong–Wang (2006) two-population race on S (θ = 0.5), 5 ms output grid, 1 ms internal steps.

    The "noise" handed around is a vector of trial indices: the model draws its own noise from a seed
    (the first index), so the same indices give the same trajectories (common random numbers).
    """
    from perceptalign.rtify.wongwang import WongWang2

    model = _Trajectories(WongWang2(dt_ms=5.0, max_time_s=4.0, stim_duration_s=4.0))
    s0 = float(model.ww.s0)

    def noise(n: int, seed: int) -> Tensor:
        return torch.arange(n) + seed * 1_000_000

    def phi(p: dict[str, Tensor], idx: Tensor) -> Tensor:
        swapped = {"ww.I0": p["input"].float()}
        traj = torch.func.functional_call(model, swapped, (coherence, len(idx), int(idx[0])))
        return traj.double()

    return Process(
        name=f"Wong–Wang {coherence:g} % (I₀ 0.3255 nA)",
        mode="race",
        base={"threshold": 0.5, "input": 0.3255, "t0": 0.1},
        drift_name="input",
        dt=0.005,
        noise=noise,
        phi=phi,
        correct=0,
        initial=s0,
        fd_rel_step=0.01,
    )


PROCESSES: dict[str, Callable[[], Process]] = {
    "random_walk": random_walk,
    "increment": increment_accumulator,
    "ww_6.4": lambda: wong_wang(6.4),
    "ww_51.2": lambda: wong_wang(51.2),
}


def _relative(est: float, fd: float, se: float) -> float | None:
    """|est − FD|/|FD| where FD is known to better than 20 % (|FD| > 5 joint standard errors)."""
    if abs(fd) <= 5 * se or fd == 0.0:
        return None
    return abs(est - fd) / abs(fd)


def _time_pass(process: Process, noise: Tensor, kind: str, temperature: float, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        params = _params(process, requires_grad=True)
        start = time.perf_counter()
        if kind == "soft":
            mean_rt, p_correct = soft_quantities(process, params, noise, temperature)
            (mean_rt + p_correct).backward()
        else:
            rt, _, _ = hard_quantities(process, params, noise, kind)
            rt.mean().backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials (CI smoke run)")
    parser.add_argument("--trials", type=int, default=None, help="trials per process (default 40000)")
    parser.add_argument("--temperature", type=float, default=0.1, help="soft estimator temperature")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.trials or (6000 if args.quick else 40000)
    n_ww = max(N_BATCHES, n // 10)  # Wong–Wang trajectories are 800 steps × 2 populations per trial
    worst = 0.0
    worst_rule = 0.0
    worst_by_process: dict[str, float] = {}
    print(f"{n} trials per process; soft temperature {args.temperature} (× median |ΔΦ| per step)")
    header = f"{'process':42s} {'d/d':10s} {'quantity':11s} {'FD ± se':>17s} {'soft ± se':>17s}"
    print(header + f" {'implicit':>9s} {'interp':>9s} {'rel.soft':>8s} {'rel.impl':>8s}")
    costs = []
    for key, make in PROCESSES.items():
        process = make()
        noise = process.noise(n_ww if key.startswith("ww") else n, 1234 if not key.startswith("ww") else 7)
        for name in ("threshold", process.drift_name, "t0"):
            fd = finite_differences(process, noise, name)
            soft = estimator_gradients(process, noise, name, "soft", args.temperature)
            implicit = estimator_gradients(process, noise, name, "implicit", args.temperature)
            interp = estimator_gradients(process, noise, name, "interpolated", args.temperature)
            for key in ("E[RT]", "P(correct)"):
                f, fse = fd[key]
                s, sse = soft[key]
                # The FD and the estimator both carry sampling error: compare with their joint error.
                se = math.hypot(fse, sse)
                rel_soft = _relative(s, f, se)
                rel_impl = _relative(implicit[key][0], f, se)
                if rel_soft is not None:
                    worst = max(worst, rel_soft)
                    worst_by_process[process.name] = max(worst_by_process.get(process.name, 0.0), rel_soft)
                if rel_impl is not None:
                    worst_rule = max(worst_rule, rel_impl)
                print(
                    f"{process.name:42s} {name:10s} {key:11s} {f:9.4g} ± {fse:<6.2g} {s:9.4g} ± {sse:<6.2g}"
                    f" {implicit[key][0]:9.4g} {interp[key][0]:9.4g}"
                    f" {'—' if rel_soft is None else f'{rel_soft:.3f}':>8s}"
                    f" {'—' if rel_impl is None else f'{rel_impl:.3f}':>8s}"
                )
        batch = noise[: min(2000, len(noise))]
        costs.append(
            (
                process.name,
                _time_pass(process, batch, "soft", args.temperature),
                _time_pass(process, batch, "implicit", args.temperature),
            )
        )
    for name, soft_s, rule_s in costs:
        print(
            f"cost per forward+backward on 2000 trials, {name}: soft {soft_s * 1e3:.1f} ms, "
            f"implicit {rule_s * 1e3:.1f} ms, ratio {soft_s / rule_s:.2f}×"
        )
    for name, value in worst_by_process.items():
        print(f"worst relative error of the soft estimator, {name}: {value:.3f}")
    print(f"worst relative error of the published implicit rule vs finite differences: {worst_rule:.3f}")
    print(f"worst relative error vs finite differences: {worst:.3f}")


if __name__ == "__main__":
    main()

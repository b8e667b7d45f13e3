"""Benchmark: are RTify's reaction-time gradients right? Estimators against finite differences.

Run:  python benchmarks/rtify_gradients.py [--quick] [--temperature 0.1]

Processes: a two-bound random walk, a noisy leaky read-out accumulator (``increment``-like evidence), and
the Wong–Wang race at 6.4 % and 51.2 % coherence (1/10 of the trials: its trajectories are long). For
noisy accumulators the quantities a fit to human data needs are distributional: the mean reaction time
E[RT] and the probability of a correct choice P(correct). This prints, for each process and each parameter
(threshold θ, drift/input, non-decision time t₀; for Wong–Wang, except with ``--quick``, also J₁₁, J₁₂,
J_ext and σ: everything the Wong–Wang fit learns), their derivative by

* ``default``: the estimator the fits use. For the accumulators and for θ and t₀ that is the soft
  first-passage distribution (``decision.first_passage``; for Wong–Wang at the fit's temperature). For
  Wong–Wang's dynamical parameters it is the fit's ``"crn"`` gradient
  (``wongwang_fit.crn_gradients``: central differences of the hard process on the batch's own noise,
  with the fit's steps),
* ``soft``: the soft first-passage estimator at ``--temperature``, pathwise (autograd) for every parameter,
* ``implicit``: the published implicit-function rule on the hard crossing (pathwise; no choice gradient),
* ``interp``: the exact derivative of each trial's interpolated crossing time (pathwise),
* ``FD``: central finite differences of the hard process on common random numbers (the truth), with its
  standard error from the per-trial differences.

The estimators' own standard errors come from splitting the trials into 10 batches (each batch has its
own noise, independent of the truth's for Wong–Wang). For Wong–Wang's dynamical parameters the default is
itself a finite difference; the truth's step (1 %) equals the fit's step for I₀ and J₁₁, so there the
comparison checks noise and wiring, not the step's own bias (~7 % for dP/dI₀ from a 0.5/1/2 % scan).

Known limitation of every pathwise estimator, shown by the ``soft`` column: in Wong–Wang the choice is
settled by the competition between the populations long before either crosses θ, and moving a dynamical
parameter switches the winner of some trials, a jump no pathwise derivative sees (dP(correct)/dI₀ is ~0
by ``soft`` against −6 by FD at 6.4 %). The last block prints the unbiased alternative inside the
autograd framework, the likelihood-ratio (score-function) term of the Euler–Maruyama path density, with
its standard error next to the finite differences' on the same trials.

The relative error of an estimator is |est − FD| / |FD| where the FD differs from 0 by more than 5 joint
standard errors (otherwise that row is skipped: nothing to be relative to), i.e. where the truth is known
to better than 20 %. The last lines report the cost of one forward + backward pass of each estimator, and
the worst relative error of the default estimator (target ≤ 0.15).
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
from perceptalign.rtify.experiments.rdm.wongwang_fit import FD_STEPS, WWFitConfig, crn_gradients

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
    extra: tuple[str, ...] = ()  # further parameters to differentiate (after threshold, drift, t₀)
    # The default estimator: pathwise soft at this temperature (None: --temperature), except for the
    # parameters named here, which get the Wong–Wang fit's finite differences with these relative steps.
    default_temperature: float | None = None
    crn_steps: dict[str, float] | None = None
    # Likelihood-ratio estimate of d/d(drift) for one batch: {quantity: per-trial contributions}.
    score: Callable[[Tensor, float], dict[str, Tensor]] | None = None


def _hard(process: Process, params: dict[str, Tensor], phi: Tensor, gradient: str):
    if process.mode == "two_bound":
        d = first_crossing_two_bound(phi, params["threshold"], gradient=gradient)
    else:
        d = first_crossing_multiclass(phi, params["threshold"], gradient=gradient, initial=process.initial)
    return d


def hard_quantities(
    process: Process, params: dict[str, Tensor], noise: Tensor, gradient: str, phi: Tensor | None = None
):
    """Per-trial (RT, correct, decided) of the hard process; RT differentiable by ``gradient``."""
    phi = process.phi(params, noise) if phi is None else phi
    d = _hard(process, params, phi, gradient)
    rt = rt_seconds(d.tau, process.dt, params["t0"])
    return rt, (d.choice == process.correct) & d.decided, d.decided


def soft_quantities(
    process: Process, params: dict[str, Tensor], noise: Tensor, temperature: float, phi: Tensor | None = None
):
    """(E[RT | decided], P(correct)) of a batch under the soft first-passage distribution."""
    phi = process.phi(params, noise) if phi is None else phi
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


def hard_statistics(process: Process, params: dict[str, Tensor], noise: Tensor) -> Tensor:
    """(E[RT], P(correct)) of the hard process on a batch, as one tensor (for finite differences)."""
    rt, correct, decided = hard_quantities(process, params, noise, "interpolated")
    if not bool(decided.all()):
        raise SystemExit(f"{process.name}: some trials do not decide; lengthen the window")
    return torch.stack([rt.double().mean(), correct.double().mean()])


def crn_estimator(process: Process, noise: Tensor, name: str) -> dict[str, tuple[float, float]]:
    """The Wong–Wang fit's gradient of a dynamical parameter (``wongwang_fit.crn_gradients``) per batch."""
    assert process.crn_steps is not None
    steps = process.crn_steps

    def one(chunk: Tensor) -> dict[str, float]:
        params = _params(process)
        grad = crn_gradients(
            {name: params[name]}, lambda: hard_statistics(process, params, chunk), steps=steps
        )
        return {"E[RT]": float(grad[name][0]), "P(correct)": float(grad[name][1])}

    return _batched(one, noise)


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
    process: Process, noise: Tensor, name: str, estimators: dict[str, str | float]
) -> dict[str, dict[str, tuple[float, float]]]:
    """Pathwise estimators from one forward pass per batch: {label: {quantity: (mean, se)}}.

    ``estimators`` maps a label to a soft temperature (a float) or a hard gradient rule ("implicit",
    "interpolated"; a hard choice has no gradient, so their P(correct) derivative is 0).
    """

    def one(chunk: Tensor) -> dict[str, float]:
        params = _params(process, requires_grad=True)
        phi = process.phi(params, chunk)
        out: dict[str, float] = {}
        for label, kind in estimators.items():
            if isinstance(kind, float):
                mean_rt, p_correct = soft_quantities(process, params, chunk, kind, phi=phi)
            else:
                rt, _, _ = hard_quantities(process, params, chunk, kind, phi=phi)
                mean_rt, p_correct = rt.mean(), None
            for quantity, value in (("E[RT]", mean_rt), ("P(correct)", p_correct)):
                grad = None
                if value is not None and value.requires_grad:
                    (grad,) = torch.autograd.grad(value, params[name], retain_graph=True, allow_unused=True)
                out[f"{label}|{quantity}"] = 0.0 if grad is None else float(grad)
        return out

    flat = _batched(one, noise)
    result: dict[str, dict[str, tuple[float, float]]] = {label: {} for label in estimators}
    for key, value in flat.items():
        label, quantity = key.split("|")
        result[label][quantity] = value
    return result


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
    benchmark's own I₀, J₁₁, J₁₂, J_ext and σ tensors (gradients reach them through the model's adjoint)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.ww = model

    def forward(self, coherence: float, n: int, seed: int) -> Tensor:
        return self.ww.trajectories(coherence, n, seed=seed, grad=True)


# Benchmark name → WongWang2 attribute of every parameter that enters the dynamics.
_WW_DYNAMICS = {"input": "I0", "J11": "J11", "J12": "J12", "J_ext": "J_ext", "sigma": "sigma"}


def wong_wang(coherence: float) -> Process:
    """Wong–Wang (2006) two-population race on S (θ = 0.5), 5 ms output grid, 1 ms internal steps.

    The "noise" handed around is a vector of trial indices: the model draws its own noise from a seed
    (the first index), so the same indices give the same trajectories (common random numbers).
    """
    from perceptalign.rtify.wongwang import WongWang2

    grid = {"max_time_s": 4.0, "stim_duration_s": 4.0}
    model = _Trajectories(WongWang2(dt_ms=5.0, **grid))
    ww = model.ww
    s0 = float(ww.s0)
    base = {"threshold": 0.5, "input": 0.3255, "t0": 0.1}
    base.update({k: float(getattr(ww, a).detach()) for k, a in _WW_DYNAMICS.items() if k != "input"})

    def noise(n: int, seed: int) -> Tensor:
        return torch.arange(n) + seed * 1_000_000

    def phi(p: dict[str, Tensor], idx: Tensor) -> Tensor:
        swapped = {f"ww.{attr}": p[name].float() for name, attr in _WW_DYNAMICS.items()}
        traj = torch.func.functional_call(model, swapped, (coherence, len(idx), int(idx[0])))
        return traj.double()

    def score(idx: Tensor, temperature: float) -> dict[str, Tensor]:
        """Per-trial likelihood-ratio contributions to d/dI₀ of (E[RT | decided], P(correct | decided)).

        The path density is Gaussian in the OU innovations ξ_k = (z_k − ρ z_{k−1})/c_n of the internal
        (1 ms) steps, and I₀ enters x exactly as σz does, so with w = I₀ + σz as the random variables
        ∂ log p/∂I₀ = Σ_k Σ_pop ξ_k (1 − ρ)/(σ c_n) (1/(σ c_n) at k = 0). A first-passage cell at output
        step t depends on the steps up to its end only, so it is weighted by the cumulative score there
        (unbiased, and less noisy than the whole window's). The same seed at dt = 1 ms integrates the
        same trajectory (same internal step) and returns σz of every internal step.
        """
        fine = WongWang2(dt_ms=1.0, **grid)
        batch = torch.full((len(idx),), coherence)
        with torch.no_grad():
            run = fine.inference(
                batch, generator=torch.Generator().manual_seed(int(idx[0])), return_noise=True
            )
        assert run.noise is not None
        m = round(5.0 / 1.0)
        S = run.S[:, m - 1 :: m].double()
        sigma = float(fine.sigma.detach())
        z = run.noise.double() / sigma  # (B, K, 2)
        rho = math.exp(-1.0 / fine.tau_a_ms)
        cn = math.sqrt((1 - rho * rho) / 2)
        xi = (z - rho * torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)) / cn
        coef = torch.full((z.shape[1],), (1 - rho), dtype=torch.float64)
        coef[0] = 1.0
        cumulative = torch.cumsum(xi.sum(dim=2) * coef / (sigma * cn), dim=1)[:, m - 1 :: m]
        fp = first_passage(S, base["threshold"], mode="race", temperature=temperature, initial=s0)
        rt = rt_seconds(fp.time, 0.005, base["t0"])
        mass = fp.mass
        total = float(mass.sum()) / len(idx)  # decided mass per trial (1 when every trial decides)
        p_bar = float(mass[..., 0].sum()) / float(mass.sum())
        rt_bar = float((mass * rt).sum()) / float(mass.sum())
        weight = cumulative.unsqueeze(-1)
        # d(C/M) = (dC − (C/M) dM)/M per trial, and likewise for the mean RT: the ratio's own baseline.
        p_terms = ((mass[..., 0] - p_bar * mass.sum(dim=-1)) * cumulative).sum(dim=1) / total
        rt_terms = (mass * (rt - rt_bar) * weight).sum(dim=(1, 2)) / total
        return {"E[RT]": rt_terms, "P(correct)": p_terms}

    fit = WWFitConfig()
    return Process(
        name=f"Wong–Wang {coherence:g} %",
        mode="race",
        base=base,
        drift_name="input",
        dt=0.005,
        noise=noise,
        phi=phi,
        correct=0,
        initial=s0,
        fd_rel_step=0.01,
        extra=("J11", "J12", "J_ext", "sigma"),
        default_temperature=fit.temperature,
        crn_steps={name: FD_STEPS[attr] for name, attr in _WW_DYNAMICS.items()}
        if fit.dynamics_gradient == "crn"
        else None,
        score=score,
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


def score_function_block(process: Process, noise: Tensor, temperature: float) -> list[str]:
    """Likelihood-ratio d/d(drift) against the finite differences on the same trials (Wong–Wang)."""
    if process.score is None:
        return []
    parts = [process.score(chunk, temperature) for chunk in noise.chunk(N_BATCHES)]
    fd = finite_differences(process, noise, process.drift_name)
    lines = []
    for key in ("E[RT]", "P(correct)"):
        terms = torch.cat([p[key] for p in parts])
        est, se = float(terms.mean()), float(terms.std()) / math.sqrt(len(terms))
        f, fse = fd[key]
        lines.append(
            f"score function (likelihood ratio), {process.name}, d{key}/d{process.drift_name}: "
            f"{est:.4g} ± {se:.2g} (per-trial s.d. {float(terms.std()):.3g}); FD {f:.4g} ± {fse:.2g}: "
            f"standard error {se / fse:.1f}× the finite differences' on the same {len(terms)} trials"
        )
    return lines


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
    worst_soft: dict[str, float] = {}
    print(f"{n} trials per process; soft temperature {args.temperature} (× median |ΔΦ| per step)")
    header = f"{'process':34s} {'d/d':9s} {'quantity':10s} {'FD ± se':>17s} {'default ± se':>17s}"
    header += (
        f" {'soft':>9s} {'implicit':>9s} {'interp':>9s} {'rel.def':>7s} {'rel.soft':>8s} {'rel.impl':>8s}"
    )
    print(header)
    costs = []
    score_lines: list[str] = []
    for key, make in PROCESSES.items():
        process = make()
        noise = process.noise(n_ww if key.startswith("ww") else n, 1234 if not key.startswith("ww") else 7)
        extra = () if args.quick else process.extra  # the quick run keeps the smoke test short
        for name in ("threshold", process.drift_name, "t0", *extra):
            fd = finite_differences(process, noise, name)
            crn = process.crn_steps is not None and name in process.crn_steps
            estimators: dict[str, str | float] = {
                "soft": args.temperature,
                "implicit": "implicit",
                "interp": "interpolated",
            }
            if not crn:  # the default is the soft estimator, at the fit's temperature where it has one
                estimators["default"] = process.default_temperature or args.temperature
            pathwise = estimator_gradients(process, noise, name, estimators)
            soft, implicit, interp = pathwise["soft"], pathwise["implicit"], pathwise["interp"]
            default = crn_estimator(process, noise, name) if crn else pathwise["default"]
            for quantity in ("E[RT]", "P(correct)"):
                f, fse = fd[quantity]
                d, dse = default[quantity]
                # The FD and the estimator both carry sampling error: compare with their joint error.
                se = math.hypot(fse, dse)
                rel_default = _relative(d, f, se)
                rel_soft = _relative(soft[quantity][0], f, math.hypot(fse, soft[quantity][1]))
                rel_impl = _relative(implicit[quantity][0], f, se)
                if rel_default is not None:
                    worst = max(worst, rel_default)
                    worst_by_process[process.name] = max(worst_by_process.get(process.name, 0.0), rel_default)
                if rel_soft is not None:
                    worst_soft[process.name] = max(worst_soft.get(process.name, 0.0), rel_soft)
                if rel_impl is not None:
                    worst_rule = max(worst_rule, rel_impl)
                print(
                    f"{process.name:34s} {name:9s} {quantity:10s}"
                    f" {f:9.4g} ± {fse:<6.2g} {d:9.4g} ± {dse:<6.2g}"
                    f" {soft[quantity][0]:9.4g} {implicit[quantity][0]:9.4g} {interp[quantity][0]:9.4g}"
                    f" {'—' if rel_default is None else f'{rel_default:.3f}':>7s}"
                    f" {'—' if rel_soft is None else f'{rel_soft:.3f}':>8s}"
                    f" {'—' if rel_impl is None else f'{rel_impl:.3f}':>8s}"
                )
        if key == "ww_6.4":
            score_lines += score_function_block(process, noise, args.temperature)
        batch = noise[: min(2000, len(noise))]
        costs.append(
            (
                process.name,
                _time_pass(process, batch, "soft", args.temperature),
                _time_pass(process, batch, "implicit", args.temperature),
            )
        )
    for line in score_lines:
        print(line)
    for name, soft_s, rule_s in costs:
        print(
            f"cost per forward+backward on 2000 trials, {name}: soft {soft_s * 1e3:.1f} ms, "
            f"implicit {rule_s * 1e3:.1f} ms, ratio {soft_s / rule_s:.2f}×"
        )
    for name, value in worst_soft.items():
        print(f"worst relative error of the soft (pathwise) estimator, {name}: {value:.3f}")
    for name, value in worst_by_process.items():
        print(f"worst relative error of the default estimator, {name}: {value:.3f}")
    print(f"worst relative error of the published implicit rule vs finite differences: {worst_rule:.3f}")
    print(f"worst relative error vs finite differences: {worst:.3f}")


if __name__ == "__main__":
    main()

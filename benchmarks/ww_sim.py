"""Wong–Wang simulation speed and peak memory: this package's module vs the published per-step shape.

Baseline ("published shape"): explicit Euler in a Python time loop over (B, 2) states that writes
every step into preallocated (B, T + 1, 2) trajectory tensors, the naive H formula, one randn call per
step, and autograd through the whole loop (its backward copies the trajectory buffer once per step).
Both implementations simulate the same model (rtify.md §3, 2-s stimulus, exact OU noise) on a batch
that mixes the 7 standard coherences, and both decide with ``first_crossing_multiclass``; forward+
backward differentiates the mean RT of decided trials w.r.t. all learnable parameters.

Every (case, implementation) runs in its own subprocess so that peak memory (ru_maxrss) is its own;
"work MB" subtracts the peak measured just before the timed run (interpreter, torch, inputs).
Times are wall-clock on whatever CPU this runs on: only the ratios measured in the same run matter.

    python benchmarks/ww_sim.py            # full run (several minutes on 2 cores)
    python benchmarks/ww_sim.py --quick    # smaller batches, smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

COHERENCES = (0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2)
STIM_S = 2.0

# name: (batch, dt_ms, backward, run_baseline)
FULL_CASES = {
    "fwd_b10000_dt26.67": (10_000, 26.67, False, True),
    "fwd_b10000_dt1": (10_000, 1.0, False, True),
    "fwdbwd_b10000_dt26.67": (10_000, 26.67, True, True),
    "fwdbwd_b1000_dt1": (1_000, 1.0, True, True),
    # The published shape needs > 5 min and > 5 GB here: run only ours.
    "fwdbwd_b10000_dt1": (10_000, 1.0, True, False),
}
QUICK_CASES = {
    "fwd_b2000_dt26.67": (2_000, 26.67, False, True),
    "fwd_b1000_dt1": (1_000, 1.0, False, True),
    "fwdbwd_b2000_dt26.67": (2_000, 26.67, True, True),
    "fwdbwd_b200_dt1": (200, 1.0, True, True),
    "fwdbwd_b2000_dt1": (2_000, 1.0, True, False),
}


def _coherences(batch: int) -> torch.Tensor:
    return torch.tensor(COHERENCES).repeat(batch // len(COHERENCES) + 1)[:batch]


class PublishedShapeWW(torch.nn.Module):
    """The straightforward implementation: what the benchmark compares against (not used by the package)."""

    def __init__(self, dt_ms: float) -> None:
        super().__init__()
        self.dt = dt_ms
        self.J11 = torch.nn.Parameter(torch.tensor(0.2609))
        self.J12 = torch.nn.Parameter(torch.tensor(0.0497))
        self.J_ext = torch.nn.Parameter(torch.tensor(0.0156))
        self.I0 = torch.nn.Parameter(torch.tensor(0.3255))
        self.sigma = torch.nn.Parameter(torch.tensor(0.02))
        self.threshold = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, coh: torch.Tensor, generator: torch.Generator):
        from perceptalign.rtify.decision import first_crossing_multiclass

        batch = coh.shape[0]
        steps = round(STIM_S * 1000 / self.dt)
        a, b, d, gamma, tau_s, tau_a = 270.0, 108.0, 0.154, 0.641, 100.0, 2.0
        rho = math.exp(-self.dt / tau_a)
        scale = math.sqrt((1 - rho * rho) / 2)
        traj = torch.zeros(batch, steps + 1, 2)  # preallocated, written step by step
        noise_traj = torch.zeros(batch, steps + 1, 2)
        traj[:, 0] = 0.1
        s = traj[:, 0].clone()
        noise = noise_traj[:, 0].clone()
        external = torch.stack([self.J_ext * (1 + coh / 100), self.J_ext * (1 - coh / 100)], dim=1)
        for t in range(steps):
            noise = noise * rho + self.sigma * scale * torch.randn(batch, 2, generator=generator)
            noise_traj[:, t + 1] = noise
            on = 1.0 if t * self.dt < STIM_S * 1000 else 0.0
            x1 = self.J11 * s[:, 0] - self.J12 * s[:, 1] + self.I0 + on * external[:, 0] + noise[:, 0]
            x2 = self.J11 * s[:, 1] - self.J12 * s[:, 0] + self.I0 + on * external[:, 1] + noise[:, 1]
            x = torch.stack([x1, x2], dim=1)
            u = a * x - b
            rate = u / (1 - torch.exp(-d * u))  # naive: 0/0 = NaN when a·x − b rounds to exactly 0
            s = s + self.dt * (-s / tau_s + (1 - s) * gamma * rate / 1000)
            traj[:, t + 1] = s
        phi = traj[:, 1:]
        self.nan_trials = int((~torch.isfinite(phi.detach())).any(dim=(1, 2)).sum())
        # The naive H yields NaN when a·x − b is exactly 0 in float32 (it happens at B·T ~ 1e7); zero
        # those so the decision (which rejects NaN) can run and the timing completes; counted in nan_trials.
        decision = first_crossing_multiclass(torch.nan_to_num(phi, nan=0.0), self.threshold)
        rt = (decision.tau + 1) * self.dt / 1000 + 0.1
        return rt, decision.decided


def run_case(name: str, impl: str, cases: dict) -> dict:
    """One timed run in this process; returns time, rates and peak-memory figures."""
    from perceptalign.rtify.wongwang import WongWang2

    torch.set_num_threads(int(os.environ.get("WW_BENCH_THREADS", "1")))
    batch, dt, backward, _ = cases[name]
    coh = _coherences(batch)
    gen = torch.Generator().manual_seed(0)
    if impl == "ours":
        model = WongWang2(dt_ms=dt, max_time_s=STIM_S)

        def step() -> tuple[torch.Tensor, torch.Tensor]:
            out = model(coh, generator=gen)
            return out.rt_s, out.decided
    else:
        model = PublishedShapeWW(dt)

        def step() -> tuple[torch.Tensor, torch.Tensor]:
            return model(coh, gen)

    steps = round(STIM_S * 1000 / dt)
    # Warm-up on a small batch (first-call dispatch, allocator), so both sides are timed warm.
    small = coh[:64]
    if backward:
        (
            model(small, generator=gen)[0] if impl == "baseline" else model(small, generator=gen).rt_s
        ).sum().backward()
        model.zero_grad()
    else:
        with torch.no_grad():
            model(small, generator=gen)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    while len(times) < 3 and sum(times) < 3.0:  # best of up to 3 for short cases (shared, noisy CPUs)
        gen.manual_seed(0)
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        if backward:
            rt, decided = step()
            loss = rt[decided].mean()
            loss.backward()
            grad_ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        else:
            with torch.no_grad():
                rt, decided = step()
            grad_ok = True
        times.append(time.perf_counter() - t0)
        rt = rt.detach()
    elapsed = min(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "case": name,
        "impl": impl,
        "seconds": elapsed,
        "trial_steps_per_s": batch * steps / elapsed,
        "peak_mb": peak,
        "work_mb": peak - before,
        "mean_rt_s": float(rt[decided].mean()),
        "no_decision_rate": float(1 - decided.float().mean()),
        "grads_finite": bool(grad_ok),
        "nan_trials": int(getattr(model, "nan_trials", 0)),
    }


def _spawn(name: str, impl: str, quick: bool, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--case", name, "--impl", impl] + (["--quick"] if quick else [])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("WW_BENCH_THREADS", "1"))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"case": name, "impl": impl, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {
            "case": name,
            "impl": impl,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "?",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches (smoke run)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=900.0, help="per-subprocess limit in seconds")
    args = parser.parse_args()
    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.case:
        print(json.dumps(run_case(args.case, args.impl, cases)))
        return
    header = (
        f"{'case':24} {'impl':9} {'seconds':>9} {'trial·steps/s':>14} {'peak MB':>8} {'work MB':>8} "
        f"{'speed-up':>9} {'mean RT':>8} {'no-dec':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, (_, _, _, with_baseline) in cases.items():
        ours = _spawn(name, "ours", args.quick, args.timeout)
        base = _spawn(name, "baseline", args.quick, args.timeout) if with_baseline else None
        for row in (base, ours):
            if row is None:
                continue
            if "error" in row:
                print(f"{name:24} {row['impl']:9} ERROR {row['error']}")
                continue
            ratio = ""
            if row is ours and base is not None and "error" not in base and "error" not in ours:
                ratio = f"{base['seconds'] / ours['seconds']:.1f}×"
            print(
                f"{name:24} {row['impl']:9} {row['seconds']:9.2f} {row['trial_steps_per_s']:14.3g} "
                f"{row['peak_mb']:8.0f} {row['work_mb']:8.0f} {ratio:>9} {row['mean_rt_s']:8.3f} "
                f"{row['no_decision_rate']:7.4f}"
            )
            if row.get("nan_trials"):
                print(
                    f"{'':24} {row['impl']}: {row['nan_trials']} trials hit NaN (naive H at a·x = b), zeroed"
                )
        if base is None and "error" not in ours:
            fits = "fits" if ours["peak_mb"] < 2048 else "DOES NOT fit"
            print(
                f"{'':24} (baseline not run: > 5 min, > 5 GB) ours {fits} in 2 GB "
                f"(peak {ours['peak_mb']:.0f} MB)"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()

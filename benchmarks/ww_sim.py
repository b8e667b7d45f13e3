"""Wong–Wang simulation speed and peak memory: this package's module vs the published per-step shape.

Baseline ("published shape"): explicit Euler in a Python time loop over (B, 2) states that writes
every step into preallocated (B, T + 1, 2) trajectory tensors, the naive H formula, one randn call per
step, and autograd through the whole loop (its backward copies the trajectory buffer once per step).
At dt ≤ 1 ms both implementations simulate the same model (docs/rtify.md, "The Wong–Wang model", 2-s
stimulus, exact OU noise). At coarser dt they do not: this package sub-steps at ≤ 1 ms so the noise is
right (the baseline's single step has ≈ 3× the integrated noise variance at 10 ms, 7× at 26.67 ms), so
the 26.67 ms cases compare the correct model with the cheaper wrong one (ratio < 1 there). The batch
mixes the 7 standard coherences, and both decide with ``first_crossing_multiclass``; forward+
backward differentiates the mean RT of decided trials w.r.t. all learnable parameters.

Timing: for each case both implementations run in the same process, interleaved (the order alternates
every repetition), best of N. Two clocks are reported: the process CPU time at 1 thread (default for
the verdict: on a busy shared machine it measures the work done far more stably than wall time) and
wall time. Each repetition reseeds the generator, so both sides always integrate the same noise.
Peak memory: each (case, implementation) also runs once in a fresh child process; "work MB" is the
peak RSS minus the RSS just before the measured call (interpreter, torch and inputs excluded).

    python benchmarks/ww_sim.py               # full run (a few minutes on 2 cores)
    python benchmarks/ww_sim.py --quick       # smaller batches, smoke run
    python benchmarks/ww_sim.py --cases fwd_b10000_dt26.67 --repeats 15
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

COHERENCES = (0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2)
STIM_S = 2.0
TARGET_RATIO = 5.0
MEMORY_LIMIT_MB = 2048

# name: (batch, dt_ms, backward, run_baseline)
FULL_CASES = {
    "fwd_b10000_dt26.67": (10_000, 26.67, False, True),
    "fwd_b10000_dt1": (10_000, 1.0, False, True),
    "fwdbwd_b10000_dt26.67": (10_000, 26.67, True, True),
    "fwdbwd_b1000_dt1": (1_000, 1.0, True, True),
    # The published shape needs > 5 min and > 5 GB here: run only ours (memory check).
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


def _make_step(
    impl: str, batch: int, dt: float, backward: bool
) -> tuple[Callable[[], dict], torch.nn.Module]:
    """One reseeded call of ``impl`` (forward, or forward + backward of the mean decided RT)."""
    from perceptalign.rtify.wongwang import WongWang2

    coh = _coherences(batch)
    gen = torch.Generator()
    if impl == "ours":
        model: torch.nn.Module = WongWang2(dt_ms=dt, max_time_s=STIM_S)

        def call(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = model(c, generator=gen)
            return out.rt_s, out.decided
    else:
        model = PublishedShapeWW(dt)

        def call(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return model(c, gen)

    def step(c: torch.Tensor = coh) -> dict:
        gen.manual_seed(0)
        model.zero_grad(set_to_none=True)
        if backward:
            rt, decided = call(c)
            rt[decided].mean().backward()
            grad_ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        else:
            with torch.no_grad():
                rt, decided = call(c)
            grad_ok = True
        rt = rt.detach()
        return {
            "mean_rt_s": float(rt[decided].mean()),
            "no_decision_rate": float(1 - decided.float().mean()),
            "grads_finite": bool(grad_ok),
            "nan_trials": int(getattr(model, "nan_trials", 0)),
        }

    step(coh[:64])  # warm-up on a small batch (first-call dispatch, allocator)
    return step, model


def time_case(name: str, cases: dict, repeats: int) -> dict:
    """Interleaved best-of-``repeats`` CPU and wall times of every implementation of one case."""
    batch, dt, backward, with_baseline = cases[name]
    impls = ["baseline", "ours"] if with_baseline else ["ours"]
    steps = {impl: _make_step(impl, batch, dt, backward)[0] for impl in impls}
    cpu: dict[str, list[float]] = {impl: [] for impl in impls}
    wall: dict[str, list[float]] = {impl: [] for impl in impls}
    info: dict[str, dict] = {}
    for r in range(repeats):
        for impl in impls if r % 2 == 0 else impls[::-1]:
            c0, w0 = time.process_time(), time.perf_counter()
            info[impl] = steps[impl]()
            cpu[impl].append(time.process_time() - c0)
            wall[impl].append(time.perf_counter() - w0)
    return {
        impl: {
            "cpu_best": min(cpu[impl]),
            "cpu_median": statistics.median(cpu[impl]),
            "wall_best": min(wall[impl]),
            "wall_median": statistics.median(wall[impl]),
            **info[impl],
        }
        for impl in impls
    }


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def memory_child(name: str, impl: str, cases: dict) -> dict:
    """Peak RSS of one call in this (fresh) process, and the part the call itself added.

    On Linux the peak counter is reset just before the call (``echo 5 > /proc/self/clear_refs``), so
    "work" is VmHWM − VmRSS-before: the extra resident memory the call needed. Elsewhere it falls back
    to the lifetime peak (ru_maxrss), which can hide a call smaller than the start-up peak.
    """
    batch, dt, backward, _ = cases[name]
    step, _ = _make_step(impl, batch, dt, backward)
    try:
        before = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        info = step()
        peak = _status_mb("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        info = step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak, "work_mb": peak - before, **info}


def _spawn_memory(name: str, impl: str, quick: bool, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", name, "--impl", impl] + (["--quick"] if quick else [])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "?"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _repeats(cases: dict, name: str, requested: int | None) -> int:
    if requested is not None:
        return requested
    batch, dt, backward, with_baseline = cases[name]
    long = with_baseline and dt < 5 and batch * (3 if backward else 1) >= 3000
    return 3 if long else 9  # the dt = 1 ms baselines take seconds per call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches (smoke run)")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--repeats", type=int, help="timed repetitions per implementation (best of)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process peak-memory runs")
    parser.add_argument("--timeout", type=float, default=900.0, help="per memory subprocess, seconds")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = QUICK_CASES if args.quick else FULL_CASES
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.impl, cases)))
        return
    names = args.cases.split(",") if args.cases else list(cases)
    unknown = [n for n in names if n not in cases]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(cases)}")
    header = (
        f"{'case':23} {'impl':8} {'CPU s':>8} {'wall s':>8} {'×CPU':>6} {'×wall':>6} {'peak MB':>8} "
        f"{'work MB':>8} {'mean RT':>8} {'no-dec':>7}"
    )
    print("best of N, interleaved, 1 thread; × = baseline time / ours (same run); CPU = process time")
    print(header)
    print("-" * len(header))
    verdicts = []
    for name in names:
        repeats = _repeats(cases, name, args.repeats)
        times = time_case(name, cases, repeats)
        for impl, row in times.items():
            mem = {} if args.no_memory else _spawn_memory(name, impl, args.quick, args.timeout)
            ratio_cpu = ratio_wall = ""
            if impl == "ours" and "baseline" in times:
                base = times["baseline"]
                ratio_cpu = f"{base['cpu_best'] / row['cpu_best']:.1f}"
                ratio_wall = f"{base['wall_best'] / row['wall_best']:.1f}"
                ok = base["cpu_best"] / row["cpu_best"] >= TARGET_RATIO
                verdicts.append(f"{name}: {'meets' if ok else 'MISSES'} ≥{TARGET_RATIO:.0f}× (CPU)")
            peak = f"{mem['peak_mb']:8.0f}" if "peak_mb" in mem else f"{'-':>8}"
            work = f"{mem['work_mb']:8.0f}" if "work_mb" in mem else f"{'-':>8}"
            print(
                f"{name:23} {impl:8} {row['cpu_best']:8.3f} {row['wall_best']:8.3f} {ratio_cpu:>6} "
                f"{ratio_wall:>6} {peak} {work} {row['mean_rt_s']:8.3f} {row['no_decision_rate']:7.4f}"
            )
            if "error" in mem:
                print(f"{'':23} memory run failed: {mem['error']}")
            if row.get("nan_trials"):
                print(f"{'':23} {impl}: {row['nan_trials']} trials hit NaN (naive H at a·x = b), zeroed")
            if impl == "ours" and "baseline" not in times and "peak_mb" in mem:
                fits = "fits" if mem["peak_mb"] < MEMORY_LIMIT_MB else "DOES NOT fit"
                peak_mb = mem["peak_mb"]
                verdicts.append(f"{name}: ours {fits} in 2 GB (peak {peak_mb:.0f} MB; baseline not run)")
        sys.stdout.flush()
    print()
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()

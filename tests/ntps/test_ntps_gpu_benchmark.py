"""benchmarks/ntps_gpu.py, the NTPS device check of issue #14, in its CPU smoke form (``--quick --device
cpu``): the JSON it writes, its exit status on a planted precision breach or NaN, and its device port of
the published per-text formula."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from perceptalign.ntps.statistics import STAT_KEYS, dense_reference_statistics

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "ntps_gpu.py"


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict | None]:
    out = tmp_path / "ntps_gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1", "--json", str(out)]
    proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    return proc, (json.loads(out.read_text()) if out.exists() else None)


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_ntps_gpu_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_run_reports_speed_memory_and_precision(tmp_path: Path) -> None:
    proc, report = _run(tmp_path, "--repeats", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report is not None and report["exit_code"] == 0 and report["failures"] == []
    r = report["models"]["tiny"]
    tolerance = report["targets"]["relative_error_max"]
    assert tolerance == 1e-5
    error = r["precision"]["relative_error"]
    assert 0 <= error <= tolerance, r["precision"]
    assert report["worst_relative_error"] == error
    # every layer and moment was compared (3 hidden states of the 2-layer model)
    assert set(r["precision"]["per_layer"]) == {"0", "1", "2"}
    assert all(set(row) == set(STAT_KEYS) for row in r["precision"]["per_layer"].values())
    assert r["precision"]["relative_error_tf32"] is None  # CUDA only
    for key in ("overhead_pct", "speedup"):
        assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    for key in ("bare_forward", "forward_statistics", "published"):
        m = r[key]
        assert m["seconds"] > 0 and math.isfinite(m["tokens_per_s"]) and m["tokens_per_s"] > 0
        if sys.platform.startswith("linux"):
            assert m["peak_extra_mb"] is not None and m["peak_extra_mb"] >= 0
    assert r["statistics_finite"] and r["precision"]["finite"]
    assert r["tokens"] == r["bare_forward"]["tokens"] == r["published"]["tokens"]  # all texts timed
    assert len(r["bare_forward"]["all_seconds"]) == 5 and len(r["published"]["all_seconds"]) == 1
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"worst relative error: {error:.2e}; exit: ok"
    assert any("statistics overhead" in line and "target ≤ 15 %" in line for line in lines)
    assert any("end-to-end speed-up" in line and "target ≥ 3 ×" in line for line in lines)


@pytest.mark.parametrize(
    ("plant", "reason"), [("error", "relative error"), ("nan", "NaN/inf in the statistics")]
)
def test_planted_breach_exits_non_zero(tmp_path: Path, plant: str, reason: str) -> None:
    proc, report = _run(tmp_path, "--n-texts", "16", "--repeats", "1", "--plant", plant)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert report is not None and report["exit_code"] == 1
    assert any(reason in failure for failure in report["failures"]), report["failures"]
    if plant == "error":
        assert report["models"]["tiny"]["precision"]["relative_error"] > 0.9e-3  # 1e-3 planted
    assert proc.stdout.strip().splitlines()[-1].startswith("worst relative error: ")
    assert "exit: FAIL (" in proc.stdout.strip().splitlines()[-1]


def test_published_formula_on_a_named_device_is_the_reference_on_cpu() -> None:
    """The benchmark times the published shape through ``dense_reference_statistics(device=…)``; on the
    CPU that path is bitwise the default one."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(n, 8, generator=g) + 1.0 for n in (1, 5, 12)]
    labels = torch.tensor([1, 0, 1])
    for dtype in (torch.float64, torch.float32):
        ours = dense_reference_statistics(hidden, labels, 2, dtype=dtype, device=torch.device("cpu"))
        ref = dense_reference_statistics(hidden, labels, 2, dtype=dtype)
        for key in STAT_KEYS:
            assert torch.equal(getattr(ours, key), getattr(ref, key)), (dtype, key)


def test_relative_error_is_the_max_norm_ratio_and_non_finite_is_infinite() -> None:
    bench = _load_benchmark()
    from perceptalign.ntps.statistics import LayerStatistics

    ref = LayerStatistics(
        M_xx=torch.full((2, 2), 4.0), M_xy=torch.ones(2, 2), C0=torch.eye(2), C1=torch.zeros(2, 2)
    )
    off = LayerStatistics(
        M_xx=ref.M_xx + torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
        M_xy=ref.M_xy.clone(),
        C0=torch.tensor([[1.0, math.nan], [0.0, 1.0]]),
        C1=ref.C1.clone(),
    )
    errors = bench.relative_errors({3: off}, {3: ref})
    assert errors["3"] == {"M_xx": 0.25, "M_xy": 0.0, "C0": math.inf, "C1": 0.0}
    assert bench.worst(errors) == (math.inf, "layer 3, C0")


def test_options_are_checked() -> None:
    bench = _load_benchmark()
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "7b"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--token-budget", "64"])
    args = bench.parse_args(["--quick"])
    assert args.models == ["tiny"] and args.n_texts == 64 and args.tolerance == 1e-5
    args = bench.parse_args([])
    assert args.models == ["135m", "1b"] and args.n_texts == 2000 and args.token_budget == 4096

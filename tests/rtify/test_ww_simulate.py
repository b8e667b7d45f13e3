"""Tests of the coherence sweep (perceptalign.rtify.simulate) and of `perceptalign rtify simulate-ww`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from perceptalign.cli import app
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.simulate import plot_simulation, simulate_coherences

KEYS = [
    "coherence_pct",
    "accuracy",
    "median_rt_correct_s",
    "mean_rt_correct_s",
    "mean_rt_error_s",
    "no_decision_rate",
]


def test_summary_matches_an_independent_recount_of_the_trials_table() -> None:
    sweep = simulate_coherences([3.2, 51.2], 300, dt_ms=10.0, seed=4, max_time_s=1.5, n_examples=2)
    table = sweep.trials
    assert len(table) == 600 and set(table.columns) >= {"condition", "rt_s", "correct", "decided"}
    for row in sweep.summary:
        sub = table[table["condition"] == row["coherence_pct"]]
        dec = sub[sub["decided"]]
        assert row["accuracy"] == pytest.approx(dec["correct"].mean())
        assert row["no_decision_rate"] == pytest.approx(1 - sub["decided"].mean())
        assert row["median_rt_correct_s"] == pytest.approx(dec.loc[dec["correct"], "rt_s"].median())
        errors = dec.loc[~dec["correct"], "rt_s"]
        if len(errors):
            assert row["mean_rt_error_s"] == pytest.approx(errors.mean())
        else:  # no errors (likely at 51.2 %): null, not NaN, so the JSON stays valid
            assert row["mean_rt_error_s"] is None
    # RTs include the 0.1 s motor delay: RT = t*·dt + delay with the interpolated crossing t* (continuous,
    # no longer on the (τ + 1)·dt grid), so decided RTs lie in (delay, max_time + delay]; undecided trials
    # are censored at exactly max_time + delay.
    rt = table["rt_s"].to_numpy()
    decided = table["decided"].to_numpy()
    assert (rt[decided] > 0.1).all() and (rt[decided] <= 1.5 + 0.1 + 1e-6).all()
    np.testing.assert_allclose(rt[~decided], 1.6, atol=1e-6)
    off_grid = np.abs((rt - 0.1) / 0.01 - np.round((rt - 0.1) / 0.01))
    assert off_grid[decided].mean() > 0.1  # continuous: not snapped to the 10-ms grid
    assert sweep.examples[3.2].shape == (2, 150, 2) and sweep.time_s.shape == (150,)
    fig = plot_simulation(sweep)
    assert len(fig.axes) == 4


def test_each_coherence_is_reproducible_on_its_own() -> None:
    a = simulate_coherences([6.4, 12.8], 200, dt_ms=10.0, seed=1, n_examples=0)
    b = simulate_coherences([6.4, 12.8], 200, dt_ms=10.0, seed=1, n_examples=0)
    c = simulate_coherences([6.4, 12.8], 200, dt_ms=10.0, seed=2, n_examples=0)
    assert a.summary == b.summary and a.summary != c.summary
    alone = simulate_coherences([12.8], 200, dt_ms=10.0, seed=1, n_examples=0)
    assert alone.summary[0] == a.summary[1]


def test_negative_coherence_counts_the_other_choice_as_correct() -> None:
    sweep = simulate_coherences([-51.2, 51.2], 200, dt_ms=10.0, seed=0, n_examples=0)
    assert sweep.summary[0]["accuracy"] > 0.95 and sweep.summary[1]["accuracy"] > 0.95


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"coherences": []}, "no coherences"),
        ({"coherences": [1.0, 1.0]}, "duplicates"),
        ({"coherences": [math.nan]}, "finite"),
        ({"n_trials": 0}, "n_trials"),
        ({"dt_ms": 0.0}, "dt_ms"),
        ({"n_examples": -1}, "n_examples"),
    ],
)
def test_bad_sweep_arguments_raise(kwargs: dict, match: str) -> None:
    args = {"coherences": [3.2], "n_trials": 10, **kwargs}
    coherences, n_trials = args.pop("coherences"), args.pop("n_trials")
    with pytest.raises(PerceptAlignError, match=match):
        simulate_coherences(coherences, n_trials, **args)


def test_cli_exact_command_line_writes_json_and_figure(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    cmd = "rtify simulate-ww --coherences 0.8 1.6 3.2 6.4 12.8 25.6 51.2 --trials 60 --dt 26.67 --out"
    result = CliRunner().invoke(app, [*cmd.split(), str(out), "--seed", "3", "--max-time", "2"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "simulation.json").read_text())
    assert list(doc) == ["dt_ms", "trials", "coherences"]
    assert doc["dt_ms"] == 26.67 and doc["trials"] == 60
    assert [row["coherence_pct"] for row in doc["coherences"]] == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2]
    for row in doc["coherences"]:
        assert list(row) == KEYS
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["no_decision_rate"] <= 1
        assert row["mean_rt_correct_s"] > 0.1  # includes the motor delay
    assert (out / "simulation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "51.2" in result.output


def test_cli_repeated_flag_and_defaults(tmp_path: Path) -> None:
    runner = CliRunner()
    r1 = runner.invoke(
        app,
        [
            "rtify",
            "simulate-ww",
            "-c",
            "3.2",
            "-c",
            "12.8",
            "-n",
            "20",
            "--dt",
            "20",
            "--examples",
            "0",
            "-o",
            str(tmp_path / "a"),
        ],
    )
    assert r1.exit_code == 0, r1.output
    doc = json.loads((tmp_path / "a" / "simulation.json").read_text())
    assert [row["coherence_pct"] for row in doc["coherences"]] == [3.2, 12.8]
    r2 = runner.invoke(
        app, ["rtify", "simulate-ww", "-n", "10", "--dt", "25", "--examples", "0", "-o", str(tmp_path / "b")]
    )
    assert r2.exit_code == 0, r2.output
    doc = json.loads((tmp_path / "b" / "simulation.json").read_text())
    assert len(doc["coherences"]) == 7


def test_cli_rejects_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    bad_arg = runner.invoke(app, ["rtify", "simulate-ww", "--coherences", "3.2", "fast", "-o", str(tmp_path)])
    assert bad_arg.exit_code == 2 and "fast" in bad_arg.output
    bad_dt = runner.invoke(app, ["rtify", "simulate-ww", "--dt", "0", "-n", "5", "-o", str(tmp_path / "x")])
    assert bad_dt.exit_code == 2 and "--dt must be in (0, 50] ms" in " ".join(bad_dt.output.split())
    assert not (tmp_path / "x" / "simulation.json").exists()

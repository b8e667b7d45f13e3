"""`perceptalign rtify fit` / `compare` end to end with tiny settings, and their error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import perceptalign.cli.rtify_fit  # noqa: F401  (registers fit/compare on rtify_app)
from perceptalign.cli.rtify import rtify_app
from perceptalign.io import read_json

runner = CliRunner()
COHERENCES = (6.4, 51.2)


@pytest.fixture(scope="module")
def csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signed-RT CSV with train/test splits: shifted-gamma RTs, accuracy rising with coherence."""
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 300), ("test", 200)):
        for coh in COHERENCES:
            rt = 0.3 + rng.gamma(2.0, 0.15 if coh > 10 else 0.2, n)
            correct = rng.random(n) < (0.95 if coh > 10 else 0.65)
            rows.append(
                pd.DataFrame(
                    {"split": split, "coherence_pct": coh, "signed_rt_s": np.where(correct, rt, -rt)}
                )
            )
    path = tmp_path_factory.mktemp("data") / "rts.csv"
    pd.concat(rows).to_csv(path, index=False)
    return path


TINY = ["--steps", "5", "--gru-steps", "5", "--hidden-size", "8", "--trials", "20", "--eval-trials", "40"]


def _fit(csv: Path, out: Path, cache: Path, *extra: str) -> object:
    args = [
        "fit",
        "--data",
        str(csv),
        "--model",
        "gru",
        "--out",
        str(out),
        "--cache",
        str(cache),
        *TINY,
        *extra,
    ]
    return runner.invoke(rtify_app, args)


@pytest.fixture(scope="module")
def fits(csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("cache")
    human, selfpen = tmp_path_factory.mktemp("human"), tmp_path_factory.mktemp("selfpen")
    result = _fit(csv, human, cache, "--no-baselines", "--loss", "quantile")
    assert result.exit_code == 0, result.output
    result = _fit(
        csv,
        selfpen,
        cache,
        "--no-baselines",
        "--objective",
        "self-penalty",
        "--penalty",
        "tau",
        "--lam",
        "0.01",
    )
    assert result.exit_code == 0, result.output
    return human, selfpen


def test_fit_writes_report_and_figures(fits: tuple[Path, Path]) -> None:
    human, selfpen = fits
    report = read_json(human / "fit.json")
    assert report["settings"]["fit"]["loss"] == "quantile"
    assert report["settings"]["fit"]["head_steps"] == 5
    assert report["settings"]["gru"]["hidden_size"] == 8
    assert [r["condition"] for r in report["rtify"]["per_condition"]] == list(COHERENCES)
    assert report["data"]["n_train"] == 600 and report["data"]["n_test"] == 400
    for name in ("signed_rt_histograms.png", "psychometric_chronometric.png", "quantile_probability.png"):
        assert (human / name).is_file()
    other = read_json(selfpen / "fit.json")
    assert other["objective"] == "self-penalty"
    assert other["settings"]["fit"]["penalty"] == "tau" and other["settings"]["fit"]["lam"] == 0.01
    # The second run reused the GRU trained by the first (same task and training settings).
    assert report["gru"]["cached"] is False and other["gru"]["cached"] is True
    # The default is one torch thread, recorded with the settings.
    assert report["settings"]["torch_threads"] == 1 and other["settings"]["torch_threads"] == 1


def test_threads_are_applied_recorded_and_key_the_gru_cache(csv: Path, tmp_path: Path) -> None:
    """Another thread count rounds training's parallel sums differently, so it must not reuse a GRU trained
    at 1 thread (same task and training settings otherwise) and it is recorded in fit.json."""
    cache = tmp_path / "cache"
    before = torch.get_num_threads()
    try:
        first = _fit(csv, tmp_path / "one", cache, "--no-baselines")
        assert first.exit_code == 0, first.output
        second = _fit(csv, tmp_path / "two", cache, "--no-baselines", "--threads", "2")
        assert second.exit_code == 0, second.output
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    one, two = read_json(tmp_path / "one" / "fit.json"), read_json(tmp_path / "two" / "fit.json")
    assert one["settings"]["torch_threads"] == 1 and two["settings"]["torch_threads"] == 2
    assert one["gru"]["cached"] is False and two["gru"]["cached"] is False
    assert one["gru"]["key"] != two["gru"]["key"]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"gru-{r['gru']['key']}.safetensors" for r in (one, two)
    )


def test_compare_prints_tables_and_writes_markdown(fits: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp.md"
    result = runner.invoke(rtify_app, ["compare", str(fits[0]), str(fits[1]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "coherence 6.4%" in result.output and "coherence 51.2%" in result.output
    assert "Best fit" in result.output
    text = out.read_text()
    assert text.count("## coherence") == 2
    assert "RTify (human fit)" in text and "RTify self-penalised" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "no-such-data"], "unknown data"),
        (["--objective", "humans"], "objective"),
        (["--loss", "kl"], "loss"),
        (["--model", "lstm"], "unknown model"),
    ],
)
def test_fit_errors(args: list[str], message: str, csv: Path, tmp_path: Path) -> None:
    base = {"--data": str(csv), "--model": "gru", "--objective": "human", "--loss": "wasserstein"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    flat = [x for kv in base.items() for x in kv]
    result = runner.invoke(rtify_app, ["fit", *flat, "--out", str(tmp_path / "o"), *TINY, "--no-baselines"])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "o" / "fit.json").exists()


def test_fit_error_without_split(tmp_path: Path) -> None:
    path = tmp_path / "nosplit.csv"
    pd.DataFrame({"coherence_pct": [6.4, 51.2], "signed_rt_s": [0.5, -0.7]}).to_csv(path, index=False)
    result = runner.invoke(rtify_app, ["fit", "--data", str(path), "--out", str(tmp_path / "o"), *TINY])
    assert result.exit_code == 2 and "split" in " ".join(result.output.split())


def test_compare_error_on_missing_fit(tmp_path: Path) -> None:
    result = runner.invoke(rtify_app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "no fit.json" in " ".join(result.output.split())


def test_fit_table_is_readable_at_80_columns() -> None:
    """Every method on one line, no value cut short (rich truncates with '…' when a table is too wide)."""
    from io import StringIO

    from rich.console import Console

    from perceptalign.cli.rtify_fit import fit_table

    summary = {
        "mean_accuracy_model": 0.7123,
        "mean_wasserstein": 0.0512,
        "mean_ks": 0.1834,
        "hist_mse_sum": 2.9e-4,
    }
    entry = {"summary": summary, "test_loss": 1.5921, "no_decision_rate": 0.0141}
    names = ("entropy", "evidential", "ddm")
    report = {"model": "rtify-self-penalty", "rtify": entry, "baselines": dict.fromkeys(names, entry)}
    buffer = StringIO()
    Console(file=buffer, width=80, color_system=None).print(fit_table(report, title="fit"))
    text = buffer.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for label in ("RTify-SP", "entropy", "evidential", "DDM"):
        assert any(line.startswith(("│ " + label, "┃ " + label)) for line in text.splitlines()), label
    assert "0.712" in text and "1.592" in text


def test_seeds_write_one_run_per_seed_and_a_summary_with_spread_and_noise_floor(
    csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "seeds"
    result = _fit(csv, out, tmp_path / "cache", "--no-baselines", "--seeds", "2", "--seed", "3")
    assert result.exit_code == 0, result.output
    runs = [read_json(out / f"seed-{s}" / "fit.json") for s in (3, 4)]
    assert [r["settings"]["fit"]["seed"] for r in runs] == [3, 4]
    summary = read_json(out / "summary.json")
    assert summary["seeds"] == [3, 4]
    rows = {r["condition"]: r for r in summary["over_seeds"]["rtify-human"]}
    for coh in COHERENCES:
        w1 = [
            next(x for x in r["rtify"]["per_condition"] if x["condition"] == coh)["wasserstein"] for r in runs
        ]
        # the summary's mean and sd over seeds are those of the two runs' own per-coherence W1
        assert rows[coh]["wasserstein_mean"] == pytest.approx(np.mean(w1))
        assert rows[coh]["wasserstein_sd"] == pytest.approx(np.std(w1, ddof=1))
    floor = {r["condition"]: r for r in summary["noise_floor"]}
    assert set(COHERENCES) <= set(floor) and all(floor[c]["wasserstein_mean"] > 0 for c in COHERENCES)
    text = (out / "summary.md").read_text()
    assert "noise floor" in text and " ± " in text and "parameters fitted to human data" in text


def test_basic_interval_reflects_the_percentile_interval_about_the_estimate() -> None:
    from perceptalign.rtify.experiments.rdm.replicates import basic_interval

    row = pd.Series({"estimate": 0.05, "lo": 0.055, "hi": 0.08})
    lo, hi = basic_interval(row)
    assert (lo, hi) == pytest.approx((0.02, 0.045))  # 2·0.05 − 0.08, 2·0.05 − 0.055
    assert basic_interval(pd.Series({"estimate": 0.01, "lo": 0.0, "hi": 0.05}))[0] == 0.0  # floored at 0


def _any_csv(path: Path, *, test_coherences: tuple[float, ...], late: int = 0) -> Path:
    """A trials CSV (split, condition, rt_s, correct); ``late`` test trials at 6.4 % get RT 3.2 s."""
    rng = np.random.default_rng(1)
    rows = []
    for split, conds in (("train", COHERENCES), ("test", test_coherences)):
        for coh in conds:
            rt = 0.3 + rng.gamma(2.0, 0.15, 80)
            if split == "test" and coh == 6.4:
                rt[:late] = 3.2
            rows.append(
                pd.DataFrame({"split": split, "condition": coh, "rt_s": rt, "correct": rng.random(80) < 0.8})
            )
    pd.concat(rows).to_csv(path, index=False)
    return path


def test_fit_counts_and_reports_rts_beyond_the_window(tmp_path: Path) -> None:
    data = _any_csv(tmp_path / "late.csv", test_coherences=COHERENCES, late=7)
    result = _fit(data, tmp_path / "out", tmp_path / "cache", "--no-baselines")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "note: 7 test trial(s) have RTs at or beyond the 2.5 s window (per coherence: {'6.4': 7})" in text
    report = read_json(tmp_path / "out" / "fit.json")
    assert report["data"]["rt_beyond_window"]["test"] == {"6.4": 7, "51.2": 0}
    row = next(r for r in report["rtify"]["per_condition"] if r["condition"] == 6.4)
    assert row["n_human"] == 80  # the late trials are scored, not dropped


def test_fit_predicts_a_test_coherence_without_training_trials(tmp_path: Path) -> None:
    data = _any_csv(tmp_path / "unseen.csv", test_coherences=(6.4, 25.6, 51.2))
    result = _fit(data, tmp_path / "out", tmp_path / "cache", "--no-baselines")
    assert result.exit_code == 0, result.output
    assert "note: test coherence(s) [25.6] have no training trials" in " ".join(result.output.split())
    report = read_json(tmp_path / "out" / "fit.json")
    assert [r["condition"] for r in report["rtify"]["per_condition"]] == [6.4, 25.6, 51.2]
    assert report["data"]["unseen_test_conditions"] == [25.6]


def test_urgency_and_drift_variability_add_one_fitted_parameter_each(
    csv: Path, fits: tuple[Path, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    result = _fit(csv, tmp_path / "urgent", cache, "--no-baselines", "--loss", "quantile", "--urgency")
    assert result.exit_code == 0, result.output
    both = _fit(
        csv,
        tmp_path / "both",
        cache,
        "--no-baselines",
        "--loss",
        "quantile",
        "--urgency",
        "--drift-variability",
    )
    assert both.exit_code == 0, both.output
    urgent, plain = read_json(tmp_path / "urgent" / "fit.json"), read_json(fits[0] / "fit.json")
    variable = read_json(tmp_path / "both" / "fit.json")
    assert urgent["settings"]["fit"]["urgency"] is True and plain["settings"]["fit"]["urgency"] is False
    assert variable["settings"]["fit"]["drift_variability"] is True
    assert plain["settings"]["fit"]["drift_variability"] is False
    assert urgent["rtify"]["n_params"] == plain["rtify"]["n_params"] + 1
    assert variable["rtify"]["n_params"] == urgent["rtify"]["n_params"] + 1
    assert urgent["rtify"]["params"]["urgency_rate_per_s"] > 0
    assert variable["rtify"]["params"]["drift_sd_per_s"] > 0
    assert plain["rtify"]["params"]["urgency_rate_per_s"] is None
    assert urgent["rtify"]["params"]["drift_sd_per_s"] is None


def test_fit_gain_is_one_more_parameter_and_is_simulated(
    csv: Path, fits: tuple[Path, Path], tmp_path: Path
) -> None:
    # 60 head steps (TINY has 5): enough for the gain to move well away from 1
    extra = ("--no-baselines", "--loss", "quantile", "--fit-gain", "--steps", "60")
    result = _fit(csv, tmp_path / "gain", tmp_path / "cache", *extra)
    assert result.exit_code == 0, result.output
    gained, plain = read_json(tmp_path / "gain" / "fit.json"), read_json(fits[0] / "fit.json")
    assert gained["settings"]["fit"]["fit_gain"] is True and plain["settings"]["fit"]["fit_gain"] is False
    assert gained["rtify"]["n_params"] == plain["rtify"]["n_params"] + 1
    scale = gained["rtify"]["params"]["stimulus_gain_scale"]
    assert scale > 0 and scale != 1.0  # fitted, and recorded with the fit
    assert gained["history"][0]["gain_scale"] == 1.0
    # The expected (soft) test objective and the hard table's test loss score the same simulated trials, so
    # they agree closely (5e-5 and 0.005 in registered runs); evaluating the soft one on the stream at the
    # task's gain instead of the fitted one put them 0.17–0.33 apart.
    report = gained["rtify"]
    assert abs(report["test_objective_expected"] - report["test_loss"]) < 0.05
    assert plain["rtify"]["params"]["stimulus_gain_scale"] is None

"""Pre-screen: its ranking is the sort by NTPS, the gain model's interval covers as it claims and never
pools models, costs are measured or read from the cost benchmark's file (never built in), and bad input
names the fix."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.jobs.prescreen import (
    DEFAULT_COST_FILE,
    GainFit,
    PrescreenConfig,
    cost_ratios,
    fit_gain_model,
    load_cost_ratios,
    run_prescreen,
)
from perceptalign.ntps.store import ResultsStore, slug

from ..conftest import make_sentences
from .test_report import synthetic_study


def _ntps_at(table: pd.DataFrame, model: str, dataset: str, layer: int, f: float) -> float:
    hit = table[
        (table["model"] == model)
        & (table["dataset"] == dataset)
        & (table["method"] == "ntps")
        & (table["metric"] == "ntps")
        & (table["layer"] == layer)
        & np.isclose(table["config"], f)
    ]
    return float(hit["value"].item())


def test_ranking_from_a_study_equals_sorting_by_ntps(tmp_path):
    store = synthetic_study(tmp_path / "study", n_datasets=6)
    table = store.table()
    datasets = [f"data{i}" for i in range(6)]
    result = run_prescreen(
        PrescreenConfig(model="mA", datasets=datasets, out=tmp_path / "p", study=tmp_path / "study")
    )
    expected = sorted(datasets, key=lambda d: -_ntps_at(table, "mA", d, 3, 0.5))
    assert result.datasets["dataset"].tolist() == expected
    assert result.datasets["rank"].tolist() == list(range(1, 7))
    assert set(result.datasets["source"]) == {"study"}
    # best layer per dataset is the argmax over layers at f = 0.5
    for row in result.datasets.itertuples():
        curve = {layer: _ntps_at(table, "mA", row.dataset, layer, 0.5) for layer in range(4)}
        assert row.best_layer == max(curve, key=curve.get)
    saved = json.loads((tmp_path / "p" / "prescreen.json").read_text())
    assert [r["dataset"] for r in saved["ranking"]] == expected
    assert saved["gain_model"]["available"] and "measured" in saved["cost"]["source"]


def test_gain_fit_is_least_squares_and_its_interval_covers_95_percent():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 12)
    y = 0.2 - 0.3 * x + rng.normal(0, 0.05, 12)
    fit = GainFit.fit(x, y, "test")
    reference = scipy.stats.linregress(x, y)
    assert fit.slope == pytest.approx(reference.slope, rel=1e-10)
    assert fit.intercept == pytest.approx(reference.intercept, rel=1e-10)
    # Coverage of the 95% prediction interval over fresh data sets and fresh points: 4000 draws give a
    # binomial sd of 0.0034, so [0.935, 0.965] is a ±4.4 sd band.
    hits = 0
    for _ in range(4000):
        xs = rng.uniform(0, 1, 8)
        ys = 0.2 - 0.3 * xs + rng.normal(0, 0.05, 8)
        new_x = rng.uniform(0, 1)
        _, low, high = GainFit.fit(xs, ys, "sim").predict(new_x)
        hits += low <= 0.2 - 0.3 * new_x + rng.normal(0, 0.05) <= high
    assert 0.935 <= hits / 4000 <= 0.965
    # the isotonic fit is non-increasing in NTPS (the declared sign)
    grid = np.linspace(0, 1, 20)
    iso = [fit.predict_isotonic(v) for v in grid]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(iso))


def test_gain_model_uses_the_models_own_pairs_and_never_pools_models(tmp_path):
    table = synthetic_study(tmp_path, n_datasets=5, models=("mA", "mB")).table()
    fit = fit_gain_model(table, "mA", "last", 0.5)
    assert fit.n == 5 and "this model" in fit.source
    # the fit is on mA's own (NTPS, gain) pairs only: equal to a fit on them, whatever mB holds
    x = [_ntps_at(table, "mA", f"data{i}", 3, 0.5) for i in range(5)]
    gain = table[(table["model"] == "mA") & (table["method"] == "lora") & (table["metric"] == "gain")]
    y = gain.set_index("dataset").loc[[f"data{i}" for i in range(5)], "value"].to_numpy()
    assert fit.slope == pytest.approx(scipy.stats.linregress(x, y).slope, rel=1e-10)
    # a model with < 3 LoRA datasets of its own is refused, not filled up with other models' raw NTPS
    with pytest.raises(PerceptAlignError, match="not pooled"):
        fit_gain_model(table, "unknown-model", "last", 0.5)
    few = table[~((table["model"] == "mA") & (table["method"] == "lora") & (table["dataset"] > "data1"))]
    with pytest.raises(PerceptAlignError, match="2 datasets of mA"):
        fit_gain_model(few, "mA", "last", 0.5)
    no_lora = synthetic_study(tmp_path / "nolora", lora=False).table()
    with pytest.raises(PerceptAlignError, match="--measure lora"):
        fit_gain_model(no_lora, "mA", "last", 0.5)


def _cost_file(path, **ratios):
    data = {"model": "m", "dataset": "d", "n_texts": 10, "clock": "cpu", "threads": 1}
    data["ratios_to_ntps"] = ratios
    path.write_text(json.dumps(data))
    return path


def test_cost_ratios_are_measured_from_the_study_else_read_from_the_benchmark_file(tmp_path):
    table = synthetic_study(tmp_path, n_datasets=4).table()
    ratios, source = cost_ratios(table, "mA")
    # synthetic cells: ntps 2 s, probe 6 s, lora 100 s on every dataset
    assert ratios == {"probe_with_extraction": 3.0, "lora_recipe_extrapolated": 50.0}
    assert source.startswith("measured")
    cost = _cost_file(tmp_path / "cost.json", probe_with_extraction=0.5, lora_recipe_extrapolated=12.5)
    estimated, source = cost_ratios(None, "mA", cost)
    assert estimated == {"probe_with_extraction": 0.5, "lora_recipe_extrapolated": 12.5}
    assert str(cost) in source and source.startswith("estimated")


def test_default_cost_ratios_are_the_repositorys_cost_benchmark_output():
    # The stale built-in 0.89 / 36.9 disagreed with cost.json (0.76 / 25.7): the numbers must come from
    # the file itself.
    saved = json.loads(DEFAULT_COST_FILE.read_text())["ratios_to_ntps"]
    ratios, source = cost_ratios(None, "mA")
    assert ratios == {k: saved[k] for k in ("probe_with_extraction", "lora_recipe_extrapolated")}
    assert str(DEFAULT_COST_FILE) in source


def test_missing_or_incomplete_cost_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(PerceptAlignError, match=r"nowhere\.json.*ntps_cost\.py --json"):
        load_cost_ratios(missing)
    partial = _cost_file(tmp_path / "partial.json", probe_with_extraction=0.7)
    with pytest.raises(PerceptAlignError, match=r"partial\.json lacks .*lora_recipe_extrapolated"):
        load_cost_ratios(partial)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(PerceptAlignError, match=r"broken\.json is not readable"):
        load_cost_ratios(broken)
    negative = _cost_file(tmp_path / "neg.json", probe_with_extraction=-1, lora_recipe_extrapolated=3)
    with pytest.raises(PerceptAlignError, match=r"neg\.json has non-positive"):
        load_cost_ratios(negative)
    # without measured cell times the pre-screen fails before computing any NTPS
    with pytest.raises(PerceptAlignError, match=r"partial\.json"):
        run_prescreen(
            PrescreenConfig(model="m-not-loaded", datasets=["d"], out=tmp_path / "p", cost_json=partial)
        )
    assert not (tmp_path / "p" / "runs").exists()
    with pytest.raises(PerceptAlignError, match="`cost_json`"):
        PrescreenConfig(model="m", datasets=["d"], out=tmp_path, cost_json=missing)


def test_prescreen_computes_ntps_itself_without_a_study(tiny_llama, toy_csv, tmp_path):
    other = tmp_path / "other.csv"
    pd.DataFrame(make_sentences(80, seed=7), columns=["text", "label"]).to_csv(other, index=False)
    datasets = [str(toy_csv), str(other)]
    cost = _cost_file(tmp_path / "cost.json", probe_with_extraction=0.76, lora_recipe_extrapolated=25.7)
    result = run_prescreen(
        PrescreenConfig(
            model=str(tiny_llama), datasets=datasets, out=tmp_path / "p", max_length=64, cost_json=cost
        )
    )
    values = {}
    for d in datasets:
        run = next((tmp_path / "p" / "runs").glob(f"*/{slug(d)}"))
        data = json.loads((run / "ntps.json").read_text())
        values[d] = data["ntps"][-1][data["fractions"].index(0.5)]
    assert result.datasets["dataset"].tolist() == sorted(datasets, key=lambda d: -values[d])
    assert str(cost) in result.results["cost"]["source"]
    assert result.results["cost"]["ratios_to_ntps"]["lora_recipe_extrapolated"] == 25.7
    assert not result.results["gain_model"]["available"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"datasets": ["a", "a"]}, "`datasets`"),
        ({"fraction": 1.5}, "`fraction`"),
        ({"study": "nowhere"}, "`study`"),
    ],
)
def test_bad_prescreen_input_is_refused(tmp_path, kw, message):
    kw.setdefault("datasets", ["a"])
    with pytest.raises(PerceptAlignError, match=message):
        run_prescreen(PrescreenConfig(model="m", out=tmp_path, **kw))


def test_fraction_the_study_lacks_is_refused(tmp_path):
    synthetic_study(tmp_path / "s", n_datasets=3, lora=False)
    with pytest.raises(PerceptAlignError, match="`fraction`"):
        run_prescreen(
            PrescreenConfig(
                model="mA", datasets=["data0"], out=tmp_path / "p", study=tmp_path / "s", fraction=0.3
            )
        )
    assert ResultsStore(tmp_path / "s").has("mA", "data0", "ntps")

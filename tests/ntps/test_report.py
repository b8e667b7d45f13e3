"""The study report: its numbers equal an independent recomputation from the stored rows, nested selection
never sees the held-out dataset, negative results are stated, and the HTML holds every section."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.analysis import correlate
from perceptalign.ntps.jobs.report import ReportConfig, build_report
from perceptalign.ntps.store import ResultsStore

from ..conftest import make_sentences

LAYERS = (0, 1, 2, 3)
FRACTIONS = (0.25, 0.5, 0.75)
FAST = {"n_permutations": 200, "n_bootstrap": 200, "words_figure": False, "figures": False}


def synthetic_study(directory, n_datasets=6, models=("mA",), seed=0, signal=0.5, lora=True) -> ResultsStore:
    """A store shaped like a real study: NTPS (layer × f), probe per layer, two peers, LoRA gain."""
    rng = np.random.default_rng(seed)
    store = ResultsStore(directory)
    for model in models:
        for i in range(n_datasets):
            d = f"data{i}"
            acc = rng.uniform(0.5, 1.0)
            store.add(
                [
                    {
                        "model": model,
                        "dataset": d,
                        "method": "ntps",
                        "metric": metric,
                        "layer": layer,
                        "config": f,
                        "value": float(np.clip(signal * acc + rng.normal(0, 0.1), 0, 1)),
                    }
                    for metric in ("ntps", "ntps_orthonormal")
                    for layer in LAYERS
                    for f in FRACTIONS
                ]
                + [{"model": model, "dataset": d, "method": "ntps", "metric": "cell_seconds", "value": 2.0}]
            )
            store.add(
                [
                    {
                        "model": model,
                        "dataset": d,
                        "method": "probe",
                        "metric": metric,
                        "layer": layer,
                        "value": value,
                    }
                    for layer in LAYERS
                    for metric, value in (
                        ("accuracy", acc + rng.normal(0, 0.02)),
                        ("mse", rng.uniform(0, 0.3)),
                    )
                ]
                + [{"model": model, "dataset": d, "method": "probe", "metric": "cell_seconds", "value": 6.0}]
            )
            store.add(
                [
                    {
                        "model": model,
                        "dataset": d,
                        "method": "peers",
                        "metric": metric,
                        "layer": layer,
                        "value": rng.normal(),
                    }
                    for layer in LAYERS
                    for metric in ("logme", "alpha_req")
                ]
                + [
                    {
                        "model": model,
                        "dataset": d,
                        "method": "peers",
                        "metric": "leep",
                        "layer": 3,
                        "value": -rng.uniform(),
                    }
                ]
            )
            if lora:
                store.add(
                    [
                        {
                            "model": model,
                            "dataset": d,
                            "method": "lora",
                            "metric": "gain",
                            "value": rng.normal(0, 0.05),
                        },
                        {
                            "model": model,
                            "dataset": d,
                            "method": "lora",
                            "metric": "cell_seconds",
                            "value": 100.0,
                        },
                        *[
                            {
                                "model": model,
                                "dataset": d,
                                "method": "lora",
                                "metric": m,
                                "layer": 3,
                                "config": 0.5,
                                "value": rng.uniform(),
                            }
                            for m in ("ntps_before_lora", "ntps_after_lora")
                        ],
                    ]
                )
    return store


def _rows(table, **where):
    mask = np.ones(len(table), bool)
    for key, value in where.items():
        mask &= np.asarray(np.isclose(table[key], value) if isinstance(value, float) else table[key] == value)
    return table[mask]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    directory = tmp_path_factory.mktemp("report")
    store = synthetic_study(directory)
    result = build_report(ReportConfig(directory, **{**FAST, "figures": True}))
    return store, result


def test_report_numbers_equal_an_independent_recomputation(built):
    store, result = built
    table = store.table()
    saved = json.loads(result.json_path.read_text())
    model = saved["models"]["mA"]
    datasets = sorted(set(table["dataset"]))
    # fixed a priori: last layer (3), f = 0.5, probe accuracy at the last layer
    x = [
        _rows(table, dataset=d, method="ntps", metric="ntps", layer=3, config=0.5)["value"].item()
        for d in datasets
    ]
    acc = [
        _rows(table, dataset=d, method="probe", metric="accuracy", layer=3)["value"].item() for d in datasets
    ]
    gain = [_rows(table, dataset=d, method="lora", metric="gain")["value"].item() for d in datasets]
    for target, y in (("probe_accuracy", acc), ("lora_gain", gain)):
        expected = correlate(x, y, n_permutations=0, n_bootstrap=0)
        got = model["correlations"][target]["fixed"]
        assert got["n"] == len(datasets)
        for key in ("spearman", "spearman_p", "pearson", "pearson_p"):
            assert got[key] == pytest.approx(getattr(expected, key), rel=1e-12, abs=1e-14)
    # nested and best-in-sample: the scores of the configurations they report using give their correlation
    for mode in ("nested", "best_in_sample"):
        got = model["correlations"]["probe_accuracy"][mode]
        used = [
            _rows(
                table,
                dataset=s["dataset"],
                method="ntps",
                metric="ntps",
                layer=s["layer"],
                config=float(s["config"]),
            )["value"].item()
            for s in got["selected"]
        ]
        targets = [acc[datasets.index(s["dataset"])] for s in got["selected"]]
        expected = correlate(used, targets, n_permutations=0, n_bootstrap=0)
        assert got["spearman"] == pytest.approx(expected.spearman, rel=1e-12, abs=1e-14)
        assert got["pearson"] == pytest.approx(expected.pearson, rel=1e-12, abs=1e-14)
    for d in datasets:  # NTPS before/after LoRA at the fixed configuration, straight from the rows
        for when in ("before", "after"):
            row = _rows(table, dataset=d, method="lora", metric=f"ntps_{when}_lora", layer=3, config=0.5)
            assert model["lora_ntps"][d][when] == row["value"].item()
    best = model["correlations"]["probe_accuracy"]["best_in_sample"]
    assert len({(s["layer"], s["config"]) for s in best["selected"]}) == 1 and best["optimistic"]
    # the optimistic maximum is at least the a-priori value (it searched over that configuration too)
    assert best["spearman"] >= model["correlations"]["probe_accuracy"]["fixed"]["spearman"] - 1e-12


def test_lora_gain_is_tested_with_the_declared_negative_sign_and_peers_side_by_side(built):
    _, result = built
    model = result.report["models"]["mA"]
    assert model["correlations"]["lora_gain"]["fixed"]["direction"] == "negative"
    peers = model["peers"]
    assert list(peers)[:3] == ["ntps", "ntps_orthonormal", "ntps_probe"] or list(peers)[:2] == [
        "ntps",
        "ntps_orthonormal",
    ]
    assert {"logme", "alpha_req", "leep"} <= set(peers)
    # α-ReQ is registered lower-is-better: its declared sign flips
    assert peers["alpha_req"]["probe_accuracy"]["fixed"]["direction"] == "negative"
    assert peers["alpha_req"]["lora_gain"]["fixed"]["direction"] == "positive"
    # LEEP exists only on the last layer: every procedure uses that one row
    assert {s["layer"] for s in peers["leep"]["probe_accuracy"]["nested"]["selected"]} == {3}


def test_html_is_self_contained_with_the_three_modes_and_the_peer_table(built):
    _, result = built
    page = result.html_path.read_text()
    for text in (
        "fixed a priori",
        "leave-one-dataset-out (nested)",
        "best in sample (OPTIMISTIC",
        "Peers side by side",
        "logme",
        "alpha_req",
        "Fig 2",
        "Fig 3",
        "NTPS before / after LoRA",
        "heat maps",
        "across layers",
        "Measured cost",
    ):
        assert text in page, text
    assert page.count("data:image/png;base64,") >= 6 and "src='http" not in page


def test_nested_choice_for_a_dataset_ignores_that_datasets_own_numbers(tmp_path):
    """Plant a leak on data0 alone: its target and its scores make (0, 0.25) the only configuration that
    fits data0. Every procedure that sees data0 moves to (0, 0.25); data0's own nested choice must not."""
    store = synthetic_study(tmp_path / "a", lora=False)
    config = ReportConfig(tmp_path / "a", **FAST)
    before = build_report(config).report["models"]["mA"]["correlations"]["probe_accuracy"]
    table = store.table()
    planted = table[(table["dataset"] == "data0") & (table["method"].isin(["ntps", "probe"]))].copy()
    is_ntps = planted["metric"] == "ntps"
    is_cfg = is_ntps & (planted["layer"] == 0) & np.isclose(planted["config"], 0.25)
    planted.loc[is_ntps, "value"] = 1.0  # discordant with data0's target everywhere…
    planted.loc[is_cfg, "value"] = 0.0  # …except at (0, 0.25)
    planted.loc[planted["metric"] == "accuracy", "value"] = 0.0
    for method in ("ntps", "probe"):
        store.add(planted[planted["method"] == method].to_dict(orient="records"))
    after = build_report(config).report["models"]["mA"]["correlations"]["probe_accuracy"]

    def picks(res):
        return {s["dataset"]: (s["layer"], float(s["config"])) for s in res["selected"]}

    assert set(picks(after["best_in_sample"]).values()) == {(0, 0.25)}  # the plant is strong enough
    moved = [d for d, c in picks(after["nested"]).items() if d != "data0" and c == (0, 0.25)]
    assert len(moved) >= 3  # folds that contain data0 follow it
    assert picks(after["nested"])["data0"] == picks(before["nested"])["data0"]


def test_noise_gives_plainly_negative_statements_and_too_few_datasets_are_not_computed(tmp_path):
    synthetic_study(tmp_path / "noise", signal=0.0, seed=3, lora=False)
    report = build_report(ReportConfig(tmp_path / "noise", **FAST)).report
    fixed = [s for s in report["statements"] if "fixed a priori" in s and "probe accuracy" in s]
    assert len(fixed) == 1
    p = report["models"]["mA"]["correlations"]["probe_accuracy"]["fixed"]["selection_perm_p"]
    assert ("NOT significant" in fixed[0]) == (p >= 0.05)
    synthetic_study(tmp_path / "small", n_datasets=3, lora=False)
    small = build_report(ReportConfig(tmp_path / "small", **FAST)).report
    nested = small["models"]["mA"]["correlations"]["probe_accuracy"]["nested"]
    assert "needs ≥ 4 datasets" in nested["skipped"]
    assert "spearman" in small["models"]["mA"]["correlations"]["probe_accuracy"]["fixed"]


def test_report_errors_name_the_fix(tmp_path):
    with pytest.raises(PerceptAlignError, match="ntps study"):
        build_report(ReportConfig(tmp_path / "empty", **FAST))
    synthetic_study(tmp_path / "s", n_datasets=3, lora=False)
    with pytest.raises(PerceptAlignError, match="`fixed_fraction`"):
        build_report(ReportConfig(tmp_path / "s", fixed_fraction=0.3, **FAST))
    with pytest.raises(PerceptAlignError, match="`fixed_layer`"):
        build_report(ReportConfig(tmp_path / "s", fixed_layer="deepest", **FAST))
    with pytest.raises(PerceptAlignError, match="`score_metric`"):
        build_report(ReportConfig(tmp_path / "s", score_metric="ntps_reference", **FAST))


@pytest.mark.slow
def test_real_miniature_study_then_report_end_to_end(tiny_llama, tiny_gpt2_left, tmp_path):
    """2 tiny models × 4 tiny datasets (ntps, probe, peers) → report with Fig 1 from a real model."""
    from perceptalign.ntps.jobs.study import StudyConfig, run_study

    datasets = []
    for i, noise in enumerate((0.0, 0.15, 0.3, 0.45)):
        rows = make_sentences(100, seed=20 + i)
        rng = np.random.default_rng(i)
        flipped = [(t, 1 - y if rng.uniform() < noise else y) for t, y in rows]  # graded difficulty
        path = tmp_path / f"toy{i}.csv"
        pd.DataFrame(flipped, columns=["text", "label"]).to_csv(path, index=False)
        datasets.append(str(path))
    config = StudyConfig(
        models=[str(tiny_llama), str(tiny_gpt2_left)],
        datasets=datasets,
        out=tmp_path / "s",
        fractions=[0.25, 0.5, 1.0],
        max_length=64,
        peer_metrics=["logme", "leep", "h_score"],
    )
    assert not run_study(config).failed
    result = build_report(ReportConfig(tmp_path / "s", n_permutations=200, n_bootstrap=200))
    table = ResultsStore(tmp_path / "s").table()
    for model in config.models:
        got = result.report["models"][model]["correlations"]["probe_accuracy"]["fixed"]
        x = [
            _rows(table, model=model, dataset=d, method="ntps", metric="ntps", layer=2, config=0.5)[
                "value"
            ].item()
            for d in datasets
        ]
        y = [
            _rows(table, model=model, dataset=d, method="probe", metric="accuracy", layer=2)["value"].item()
            for d in datasets
        ]
        assert got["spearman"] == pytest.approx(correlate(x, y, n_permutations=0, n_bootstrap=0).spearman)
    page = result.html_path.read_text()
    assert "Fig 1" in page and "nested" in page and "logme" in page

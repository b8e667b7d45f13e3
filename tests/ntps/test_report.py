"""The study report: its numbers equal an independent recomputation from the stored rows, nested selection
never sees the held-out dataset, intervals follow the selection, p-values are exact and Holm-corrected,
negative results are stated, no model is loaded, and the HTML holds every section."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.analysis import correlate, holm
from perceptalign.ntps.jobs.report import HOLM_FAMILIES, MODES, ReportConfig, build_report
from perceptalign.ntps.jobs.report_figures import FIG1_NOTE
from perceptalign.ntps.store import ResultsStore

from ..conftest import make_sentences

LAYERS = (0, 1, 2, 3)
FRACTIONS = (0.25, 0.5, 0.75)
FAST = {"n_permutations": 200, "n_bootstrap": 200, "figures": False}


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
    p = report["models"]["mA"]["correlations"]["probe_accuracy"]["fixed"]["selection_perm_p_holm"]
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
def test_real_miniature_study_then_report_end_to_end(tiny_llama, tiny_gpt2_left, tmp_path, monkeypatch):
    """2 tiny models × 4 tiny datasets (ntps, probe, peers) → report from the stored results alone."""
    import perceptalign.ntps.models as models_module
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
    monkeypatch.setattr(models_module, "load_causal_lm", _no_model)
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
    assert "nested" in page and "logme" in page and "Fig 2" in page
    assert FIG1_NOTE in result.report["figure_notes"] and "Fig 1 — words" not in page


# ------------------------------------------------------------------------- intervals, exact p, Holm, Fig 1


def _summaries(models, family):
    """Every computed summary of a Holm family, walked independently of the report's own code."""
    out = []
    for analysis in models.values():
        sections = (
            [analysis["correlations"]]
            if family == "ntps"
            else [v for v in analysis["peers"].values() if "skipped" not in v]
        )
        for by_target in sections:
            for modes in by_target.values():
                out += [modes[m] for m in MODES if "selection_perm_p" in modes.get(m, {})]
    return out


def test_intervals_follow_the_selection_and_p_values_are_exact(built):
    _, result = built
    saved = json.loads(result.json_path.read_text())["models"]["mA"]["correlations"]
    for target, modes in saved.items():
        fixed, nested, best = modes["fixed"], modes["nested"], modes["best_in_sample"]
        assert all(v is not None for v in fixed["spearman_ci"]) and "bootstrap" in fixed["interval_kind"]
        assert nested["interval_kind"].startswith("selection-aware"), target
        lo, hi = nested["spearman_ci"]
        assert lo is not None and -1 <= lo <= hi <= 1
        # best in sample: no interval at all (not one that keeps the maximising configuration fixed)
        assert best["spearman_ci"] == [None, None] and best["pearson_ci"] == [None, None]
        assert best["interval_kind"].startswith("none")
        for res in (fixed, nested, best):
            # n = 6 datasets: all 6! = 720 pairings enumerated, so p is a multiple of 1/720 and ≥ 1/720
            assert res["exact_permutations"] and res["n_permutations"] == 720
            for key in ("selection_perm_p", "naive_perm_p"):
                assert res[key] >= 1 / 720
                assert res[key] * 720 == pytest.approx(round(res[key] * 720), abs=1e-9)
    best_lines = [s for s in result.report["statements"] if "best in sample" in s and "ρ = " in s]
    assert best_lines and all("no interval" in s for s in best_lines)


def test_holm_is_applied_within_the_declared_families(built):
    _, result = built
    saved = json.loads(result.json_path.read_text())
    families = saved["multiplicity"]["families"]
    assert set(families) == set(HOLM_FAMILIES)
    ntps = _summaries(saved["models"], "ntps")
    peers = _summaries(saved["models"], "peers")
    # one model, three targets, three modes; peers: 3 NTPS variants... whatever the study stored
    assert families["ntps"]["m"] == len(ntps) == 9
    assert families["peers"]["m"] == len(peers) > len(ntps)
    for entries, family in ((ntps, "ntps"), (peers, "peers")):
        expected = holm([e["selection_perm_p"] for e in entries])
        got = [e["selection_perm_p_holm"] for e in entries]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
        assert all(e["holm_family"] == family for e in entries)
        assert all(e["selection_perm_p"] <= e["selection_perm_p_holm"] <= 1 for e in entries)
    page = result.html_path.read_text()
    assert "Holm" in page and f"({len(ntps)} tests)" in page and "selection-aware bootstrap" in page


def test_perfect_rank_agreement_gets_exact_p_and_no_degenerate_interval(tmp_path):
    """NTPS at one configuration equal to the probe accuracy: ρ = 1 at n = 6. The naive p is the exact
    1/720 (not the analytic 0), and best in sample shows no [+1.00, +1.00] interval."""
    store = synthetic_study(tmp_path, lora=False)
    table = store.table()
    acc = _rows(table, method="probe", metric="accuracy", layer=3).set_index("dataset")["value"]
    ntps = table[table["method"] == "ntps"].copy()  # a cell is stored (and replaced) as a whole
    at = (ntps["metric"] == "ntps") & (ntps["layer"] == 1) & np.isclose(ntps["config"].fillna(-1), 0.75)
    ntps.loc[at, "value"] = ntps.loc[at, "dataset"].map(acc)
    for _, rows in ntps.groupby("dataset"):
        store.add(rows.to_dict(orient="records"))
    report = build_report(ReportConfig(tmp_path, **FAST)).report
    best = report["models"]["mA"]["correlations"]["probe_accuracy"]["best_in_sample"]
    assert best["spearman"] == pytest.approx(1.0)
    assert best["spearman_p"] == 0.0  # scipy's analytic p: the number the report no longer shows
    assert best["naive_perm_p"] == pytest.approx(1 / 720, rel=1e-12)
    assert np.isnan(best["spearman_ci"]).all()
    # selection-aware: only pairings whose ranks match one of the 12 configurations' orderings reach 1
    assert 1 / 720 <= best["selection_perm_p"] <= 12 / 720 + 1e-12


def test_report_never_loads_a_model(tmp_path, monkeypatch):
    """Even with a two-class sentiment cell and its cached statistics in place (what Fig 1 used to look
    for before loading the model to embed words), the figures are drawn from stored results only."""
    import torch

    import perceptalign.ntps.features as features_module
    import perceptalign.ntps.models as models_module
    from perceptalign.ntps.jobs.study import cell_dir
    from perceptalign.ntps.statistics import LayerStatistics, save_statistics

    synthetic_study(tmp_path, lora=False)
    gen = torch.Generator().manual_seed(0)
    stats = {}
    for layer in LAYERS:
        X = torch.randn(40, 8, generator=gen, dtype=torch.float64)
        Y = torch.nn.functional.one_hot(torch.arange(40) % 2, 2).to(torch.float64)
        stats[layer] = LayerStatistics(X.T @ X / 40, X.T @ Y / 40, X.T @ X / 40, X[:-1].T @ X[1:] / 40)
    for i in range(6):
        cell = cell_dir(tmp_path, "mA", f"data{i}")
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "ntps.json").write_text(json.dumps({"class_names": ["negative", "positive"]}))
        save_statistics(cell / "statistics.safetensors", stats, {"model": "mA"})
    monkeypatch.setattr(models_module, "load_causal_lm", _no_model)
    monkeypatch.setattr(features_module, "extract_features", _no_model)
    result = build_report(ReportConfig(tmp_path, **{**FAST, "figures": True}))
    assert FIG1_NOTE in result.report["figure_notes"]
    page = result.html_path.read_text()
    assert "Fig 1 (single words" in page and "Fig 2" in page


def _no_model(*_args, **_kwargs):
    raise AssertionError("the report loaded a model or embedded text; it must read stored results only")

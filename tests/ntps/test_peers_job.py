"""`ntps peers`: the per-layer table equals the metrics applied to the cached features directly, NCE/LEEP
come from the LM's next-token distribution, and the probe's feature cache is shared."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.features import FeatureCache
from perceptalign.ntps.jobs.peers import PeersConfig, run_peers
from perceptalign.ntps.lm_probs import NextTokenCache
from perceptalign.ntps.peer_metrics import fisher_ratio, leep, logme, nce
from tests.conftest import make_sentences


def test_peers_table_equals_metrics_on_the_cached_features(tiny_llama, toy_csv, tmp_path):
    config = PeersConfig(
        model=str(tiny_llama),
        dataset=str(toy_csv),
        out=tmp_path,
        max_length=64,
        metrics=["logme", "fisher_ratio", "nce", "leep"],
        top_k=16,
    )
    result = run_peers(config)
    cached = FeatureCache(tmp_path).load("train")
    probs = NextTokenCache(tmp_path)._load(NextTokenCache(tmp_path).path("train")).probs
    for row in result.table.itertuples():
        X = cached.features[row.layer]
        assert row.logme == pytest.approx(logme(X, cached.labels), rel=1e-12)
        assert row.fisher_ratio == pytest.approx(fisher_ratio(X, cached.labels), rel=1e-12)
    last = result.table.iloc[-1]
    assert last["leep"] == pytest.approx(leep(probs, cached.labels), rel=1e-12)
    argmax = np.asarray(probs.argmax(axis=1)).ravel()
    assert last["nce"] == pytest.approx(nce(argmax, cached.labels), rel=1e-12)
    assert result.table["leep"].iloc[:-1].isna().all()  # only on the last layer's row
    assert json.loads((tmp_path / "peers.json").read_text())["layers"] == result.table["layer"].tolist()
    again = run_peers(config)
    assert again.results["features_reused"]
    np.testing.assert_array_equal(again.table.to_numpy(float), result.table.to_numpy(float))


def test_metric_that_cannot_run_is_reported_not_fatal(tiny_llama, tmp_path):
    # 8 + 2 texts: 5-fold kNN needs ≥ 5 texts per class, which the minority class does not have
    rows = make_sentences(60, seed=11)
    texts = [t for t, y in rows if y == 0][:8] + [t for t, y in rows if y == 1][:2]
    data = tmp_path / "imbalanced.csv"
    pd.DataFrame({"text": texts, "label": [0] * 8 + [1] * 2}).to_csv(data, index=False)
    config = PeersConfig(
        model=str(tiny_llama),
        dataset=str(data),
        out=tmp_path,
        max_length=64,
        metrics=["knn_accuracy", "fisher_ratio"],
        layers=[0],
    )
    result = run_peers(config)
    assert np.isnan(result.table["knn_accuracy"]).all()
    assert "knn_accuracy" in result.results["not_computed"]
    assert np.isfinite(result.table["fisher_ratio"]).all()


def test_unknown_metric_is_refused(tmp_path):
    with pytest.raises(PerceptAlignError, match="unknown peer metrics"):
        run_peers(PeersConfig(model="m", dataset="d", out=tmp_path, metrics=["logmee"]))

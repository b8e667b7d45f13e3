"""Linear probes: equal to direct computations, held out vs train, CV, errors, and `ntps probe` end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

import perceptalign.cli.ntps_probe  # noqa: F401  (registers `ntps probe` until cli/__init__ imports it)
from perceptalign.cli import app
from perceptalign.io import PerceptAlignError, write_json_atomic
from perceptalign.ntps.datasets import load_text_dataset, stratified_split
from perceptalign.ntps.features import FeatureCache
from perceptalign.ntps.jobs.probe import ProbeConfig, run_probe
from perceptalign.ntps.probes import LogisticProbe, OneHotRegressionProbe, best_layer, probe_layers


def gaussian_classes(n: int, d: int, n_classes: int, seed: int, shift: float = 1.0):
    """Isotropic Gaussian classes with random means (a linearly decodable signal of known strength)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=shift, size=(n_classes, d))
    y = rng.integers(0, n_classes, size=n)
    return means[y] + rng.normal(size=(n, d)) * 1.5, y


def least_squares_mse(X_train, y_train, X_test, y_test, n_classes):
    """Closed form of the regression probe with numpy only: z-score with train moments, OLS with intercept."""
    mu, sd = X_train.mean(0), X_train.std(0)
    sd[sd == 0] = 1.0
    design = lambda X: np.hstack([(X - mu) / sd, np.ones((len(X), 1))])  # noqa: E731
    W, *_ = np.linalg.lstsq(design(X_train), np.eye(n_classes)[y_train], rcond=None)
    return float(np.mean((design(X_test) @ W - np.eye(n_classes)[y_test]) ** 2))


def test_probe_scores_equal_direct_sklearn_and_closed_form():
    X, y = gaussian_classes(450, 6, 3, seed=0)
    Xa, ya, Xb, yb = X[:300], y[:300], X[300:], y[300:]
    table = probe_layers({4: Xa, 1: Xa[:, :3]}, ya, {4: Xb, 1: Xb[:, :3]}, yb, n_classes=3)
    assert table["layer"].tolist() == [1, 4]
    row = table.set_index("layer").loc[4]
    direct = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(Xa, ya)
    proba = direct.predict_proba(Xb)
    # Same solver on the same standardized data: identical predictions; the loss agrees to rounding.
    assert row["accuracy"] == np.mean(direct.predict(Xb) == yb)
    assert row["train_accuracy"] == np.mean(direct.predict(Xa) == ya)
    manual_loss = -np.mean(np.log(proba[np.arange(len(yb)), yb]))
    assert row["log_loss"] == pytest.approx(manual_loss, rel=1e-10)
    # lstsq (SVD) vs sklearn's centred scipy lstsq: two routes to the same OLS solution, ~1e-12 apart.
    assert row["mse"] == pytest.approx(least_squares_mse(Xa, ya, Xb, yb, 3), rel=1e-8)
    assert row["train_mse"] == pytest.approx(least_squares_mse(Xa, ya, Xa, ya, 3), rel=1e-8)
    assert row["n_train"] == 300 and row["n_test"] == 150 and bool(row["converged"])
    # The signal is real: well above the 1/3 chance level, so the comparison above is not degenerate.
    assert row["accuracy"] > 0.6
    assert OneHotRegressionProbe(3).fit(Xa, ya).score(Xb, yb) == pytest.approx(-row["mse"], rel=1e-12)


def test_held_out_scores_expose_what_train_scores_hide():
    """n = 40 ≪ d = 200 with labels independent of the features: any probe interpolates its training data.

    The train scores saturate (the published protocol would report a perfect probe), while on 400 fresh
    points the accuracy is Binomial(400, ½)/400 = 0.5 ± 0.025: below 0.65 with probability ≫ 0.999.
    """
    rng = np.random.default_rng(3)
    X_train, X_test = rng.normal(size=(40, 200)), rng.normal(size=(400, 200))
    y_train, y_test = rng.integers(0, 2, 40), rng.integers(0, 2, 400)
    row = probe_layers({0: X_train}, y_train, {0: X_test}, y_test, n_classes=2).iloc[0]
    assert row["train_accuracy"] == 1.0
    # Minimum-norm least squares interpolates when d ≥ n: train MSE is zero up to float rounding.
    assert row["train_mse"] < 1e-20
    assert row["accuracy"] < 0.65
    # Fresh points get predictions with no relation to their labels: MSE ≥ the 0.25 of always predicting ½.
    assert row["mse"] > 0.25
    assert row["log_loss"] > row["train_log_loss"] + 0.3


def test_a_class_missing_from_test_or_train_keeps_the_full_label_space():
    X, y = gaussian_classes(300, 4, 3, seed=1, shift=2.0)
    keep = y != 2
    table = probe_layers({0: X[:200]}, y[:200], {0: X[200:][keep[200:]]}, y[200:][keep[200:]], n_classes=3)
    probe = LogisticProbe(3).fit(X[:200], y[:200])
    Xt, yt = X[200:][keep[200:]], y[200:][keep[200:]]
    p = probe.predict_proba(Xt)
    assert p.shape == (len(yt), 3)
    assert table["log_loss"].iloc[0] == pytest.approx(-np.mean(np.log(p[np.arange(len(yt)), yt])), rel=1e-10)
    # Class 2 never seen in training: its probability column is exactly zero, rows still sum to one.
    partial = LogisticProbe(3).fit(X[:200][y[:200] != 2], y[:200][y[:200] != 2])
    q = partial.predict_proba(X[200:])
    assert np.all(q[:, 2] == 0) and np.allclose(q.sum(1), 1.0, atol=1e-12)


def test_cross_validation_columns_equal_manual_folds():
    X, y = gaussian_classes(120, 5, 2, seed=2)
    table = probe_layers(
        {0: X, 3: X[:, ::-1]}, y, {0: X[:10], 3: X[:10, ::-1]}, y[:10], n_classes=2, cv=4, seed=7
    )
    assert len(table) == 2
    assert {"cv_accuracy_mean", "cv_accuracy_sd", "cv_log_loss_mean", "cv_mse_mean"} <= set(table.columns)
    folds = StratifiedKFold(n_splits=4, shuffle=True, random_state=7)
    scores = cross_val_score(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), X, y, cv=folds
    )
    row = table.iloc[0]
    # Same folds, same fits: equal up to the float mean of 4 numbers.
    assert row["cv_accuracy_mean"] == pytest.approx(scores.mean(), abs=1e-12)
    assert row["cv_accuracy_sd"] == pytest.approx(scores.std(ddof=1), abs=1e-12)
    assert "cv_accuracy_mean" not in probe_layers({0: X}, y, {0: X}, y, n_classes=2).columns


def test_best_layer_breaks_accuracy_ties_by_log_loss():
    table = pd.DataFrame({"layer": [0, 1, 2], "accuracy": [0.8, 0.9, 0.9], "log_loss": [0.3, 0.5, 0.4]})
    assert best_layer(table) == 2


def test_probe_input_errors():
    X, y = gaussian_classes(40, 3, 2, seed=4)
    with pytest.raises(PerceptAlignError, match="class 1 has only 3"):
        probe_layers({0: X}, np.r_[np.zeros(37, int), np.ones(3, int)], {0: X}, y, n_classes=2, cv=5)
    with pytest.raises(PerceptAlignError, match="`cv` must be an integer ≥ 2"):
        probe_layers({0: X}, y, {0: X}, y, n_classes=2, cv=1)
    with pytest.raises(PerceptAlignError, match="only class 0"):
        probe_layers({0: X}, np.zeros(40, int), {0: X}, y, n_classes=2)
    with pytest.raises(PerceptAlignError, match="different layers"):
        probe_layers({0: X}, y, {1: X}, y, n_classes=2)
    with pytest.raises(PerceptAlignError, match=r"must lie in \[0, 2\)"):
        probe_layers({0: X}, y + 1, {0: X}, y, n_classes=2)
    with pytest.raises(PerceptAlignError, match="NaN or infinite"):
        probe_layers({0: np.where(np.eye(40, 3) > 0, np.nan, X)}, y, {0: X}, y, n_classes=2)
    with pytest.raises(PerceptAlignError, match="n_classes must be an integer ≥ 2"):
        probe_layers({0: X}, y, {0: X}, y, n_classes=1)
    with pytest.raises(PerceptAlignError, match="width"):
        probe_layers({0: X}, y, {0: X[:, :2]}, y, n_classes=2)
    with pytest.raises(PerceptAlignError, match="no layers"):
        probe_layers({}, y, {}, y, n_classes=2)


# --------------------------------------------------------------------------------------------------
# the job and the CLI on a tiny model


def invoke(*args: str):
    return CliRunner().invoke(app, ["ntps", "probe", *args], env={"COLUMNS": "200"})


def test_cli_probe_end_to_end_on_a_single_file(tiny_llama, toy_csv, tmp_path):
    """A file without a split column: 30% held out by text hash; table == probes on the cached features."""
    out = tmp_path / "out"
    args = ["--model", str(tiny_llama), "--dataset", str(toy_csv), "--out", str(out), "--max-length", "64"]
    result = invoke(*args, "--layers", "0,-1", "--cv", "3")
    assert result.exit_code == 0, result.output
    assert "best layer" in result.output and "holding out 30%" in result.output
    data = json.loads((out / "probe.json").read_text())
    assert data["layers"] == [0, 2] and data["evaluation"]["kind"] == "held_out_fraction"
    dataset = load_text_dataset(str(toy_csv))
    is_test = stratified_split(dataset.texts, dataset.labels, test_fraction=0.3, seed=42)
    assert data["n_test"] == is_test.sum() and data["n_train"] == (~is_test).sum() == 120 - data["n_test"]
    cached = FeatureCache(out).load("train")
    expected = probe_layers(
        {layer: cached.features[layer][~is_test] for layer in (0, 2)},
        cached.labels[~is_test],
        {layer: cached.features[layer][is_test] for layer in (0, 2)},
        cached.labels[is_test],
        n_classes=2,
        cv=3,
        seed=0,
    )
    table = pd.read_csv(out / "probe.csv")
    for column in ("accuracy", "log_loss", "mse", "train_accuracy", "cv_accuracy_mean"):
        np.testing.assert_allclose(table[column], expected[column], rtol=1e-12)
        np.testing.assert_allclose([r[column] for r in data["rows"]], expected[column], rtol=1e-12)
    assert (out / "probe_layers.png").stat().st_size > 1000
    # Rerun: the feature cache is reused (no extraction) and NTPS from a matching ntps.json is tabled.
    write_json_atomic(
        out / "ntps.json",
        {
            "model_fingerprint": data["model_fingerprint"],
            "dataset": data["dataset"],
            "layers": [0, 1, 2],
            "fractions": [0.25, 0.5],
            "ntps": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]],
        },
    )
    again = invoke(*args, "--layers", "0,-1")
    assert again.exit_code == 0, again.output
    assert "reused" in again.output and "ntps@0.5" in again.output
    rerun = json.loads((out / "probe.json").read_text())
    assert [r["ntps"] for r in rerun["rows"]] == [0.2, 0.6]
    assert rerun["ntps_overlay"]["fraction"] == 0.5


def test_run_probe_uses_a_real_eval_split_and_rejects_foreign_ntps(tiny_llama, tmp_path):
    from tests.conftest import make_sentences

    rows = make_sentences(90, seed=5)
    frame = pd.DataFrame(rows, columns=["text", "label"]).drop_duplicates("text")
    frame["split"] = np.where(np.arange(len(frame)) % 3 == 0, "test", "train")
    path = tmp_path / "split.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "out"
    write_json_atomic(
        out / "ntps.json", {"model_fingerprint": "other", "dataset": "split", "fractions": [0.5]}
    )
    messages: list[str] = []
    result = run_probe(
        ProbeConfig(model=str(tiny_llama), dataset=str(path), out=out, layers=[-1], max_length=64),
        on_status=messages.append,
    )
    assert result.results["evaluation"] == {
        "kind": "split",
        "description": "split 'test'",
        "split": "test",
        "n_overlap": 0,
    }
    assert result.results["n_test"] == (frame["split"] == "test").sum()
    assert result.reused_cache == {"train": False, "test": False}
    assert (out / "features_test.safetensors").is_file()
    assert "ntps" not in result.table.columns and "another model" in result.results["ntps_overlay"]["skipped"]
    assert any("overlay skipped" in m for m in messages)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--test-fraction", "0.001"], "leaves 0 test"),
        (["--eval-split", "test"], "holds exactly the same texts"),
        (["--eval-split", "train"], "equals --split"),
        (["--eval-split", "test", "--test-fraction", "0.3"], "pass only one"),
        (["--test-fraction", "1.5"], "strictly between 0 and 1"),
        (["--cv", "80"], "lower --cv"),
        (["--layers", "9"], "layer 9 does not exist"),
        (["--ntps-fraction", "0"], "--ntps-fraction"),
    ],
)
def test_cli_probe_errors_exit_2_with_the_fix(tiny_llama, toy_csv, tmp_path, extra, message):
    result = invoke(
        "--model", str(tiny_llama), "--dataset", str(toy_csv), "--out", str(tmp_path / "o"), *extra
    )
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_cli_eval_split_missing_from_a_split_column(tiny_llama, tmp_path):
    path = tmp_path / "s.csv"
    pd.DataFrame(
        {
            "text": [f"{w} {n}" for w in ("good", "bad", "great", "awful") for n in ("film", "plot", "song")],
            "label": [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0],
            "split": ["train"] * 10 + ["test"] * 2,
        }
    ).to_csv(path, index=False)
    result = invoke(
        "--model",
        str(tiny_llama),
        "--dataset",
        str(path),
        "--out",
        str(tmp_path / "o"),
        "--eval-split",
        "dev",
    )
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "no rows with split 'dev'" in text and "--test-fraction" in text

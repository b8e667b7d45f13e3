"""Natural-image RTify on sklearn digits: backbone, per-image RT fits, self-penalised head, WW, saliency.

One small backbone is trained per test session (~6 s on one core) and shared; every fit runs on its
frozen features, so each test takes seconds.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

import perceptalign.rtify.experiments.natural as nat
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.natural.image_data import load_digits_28
from perceptalign.rtify.experiments.natural.recurrent_cnn import RecurrentCNN
from perceptalign.rtify.wongwang import WW_DEFAULTS

CONFIG = nat.BackboneConfig(width=8, n_steps=6, epochs=6, batch_size=128, lr=1e-2, seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_digits_28()


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    old = os.environ.get("PERCEPTALIGN_CACHE")
    os.environ["PERCEPTALIGN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # deterministic and, on a shared machine, faster
        model, path, cached = nat.load_or_train_backbone(digits, CONFIG)
        assert not cached
        again, path2, cached2 = nat.load_or_train_backbone(digits, CONFIG)
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("PERCEPTALIGN_CACHE")
        else:
            os.environ["PERCEPTALIGN_CACHE"] = old
    return model, again, path, path2, cached2


@pytest.fixture(scope="module")
def backbone(trained):
    return trained[0]


@pytest.fixture(scope="module")
def rt_table(digits):
    difficulty = nat.teacher_difficulty(digits.train, digits.test)
    return nat.synthetic_item_rts(digits.test.ids, difficulty, seed=0)


# --- backbone -------------------------------------------------------------------------------------


def test_recurrent_cnn_shapes_and_per_image_independence():
    torch.manual_seed(0)
    model = RecurrentCNN(10, width=4, n_steps=3).eval()
    x = torch.rand(5, 1, 28, 28)
    out = model(x)
    assert out.features.shape == (5, 3, model.feature_size) and out.logits.shape == (5, 3, 10)
    # GroupNorm normalises each image on its own: an image's outputs do not depend on its batch mates.
    alone = model(x[2:3])
    torch.testing.assert_close(alone.logits[0], out.logits[2], rtol=1e-5, atol=1e-5)
    with pytest.raises(PerceptAlignError, match=r"unsqueeze\(1\)"):
        model(torch.rand(5, 28, 28))
    with pytest.raises(PerceptAlignError, match="n_steps"):
        RecurrentCNN(10, n_steps=0)
    with pytest.raises(PerceptAlignError, match="n_classes"):
        RecurrentCNN(1)


def test_backbone_learns_and_is_cached(trained, digits):
    model, again, path, path2, cached2 = trained
    acc = nat.step_accuracy(model, digits.test)
    assert acc.shape == (CONFIG.n_steps,)
    assert acc[-1] > 0.85  # 10 classes: chance is 0.1; a tiny CNN reaches ~0.96 on held-out digits
    assert cached2 and path2 == path and path.suffix == ".safetensors"
    x = digits.test.images[:16]
    torch.testing.assert_close(again(x).logits, model(x).logits, rtol=0, atol=0)


def test_backbone_config_validation():
    with pytest.raises(PerceptAlignError, match="width"):
        nat.BackboneConfig(width=0)
    with pytest.raises(PerceptAlignError, match="lr"):
        nat.BackboneConfig(lr=-1.0)
    with pytest.raises(PerceptAlignError, match="max_train"):
        nat.BackboneConfig(max_train=0)
    # The cache key changes with any setting and with the data.
    assert CONFIG.key("a") != CONFIG.key("b")
    assert CONFIG.key("a") != nat.BackboneConfig(width=8, n_steps=5).key("a")


# --- RT tables ------------------------------------------------------------------------------------


def test_read_rt_table_takes_per_image_median(tmp_path):
    rows = pd.DataFrame({"image_id": ["a", "a", "a", "b", "b", "c"], "rt_s": [0.5, 0.9, 0.6, 1.0, 2.0, 0.4]})
    path = tmp_path / "rts.csv"
    rows.to_csv(path, index=False)
    series = nat.read_rt_table(path)
    assert series.to_dict() == {"a": 0.6, "b": 1.5, "c": 0.4}  # medians by hand
    with pytest.raises(PerceptAlignError, match=r"lacks column\(s\) \['rt_s'\]"):
        nat.read_rt_table(rows.rename(columns={"rt_s": "rt"}))
    with pytest.raises(PerceptAlignError, match="positive finite"):
        nat.read_rt_table(rows.assign(rt_s=[0.5, -1, 0.6, 1.0, np.nan, 0.4]))
    with pytest.raises(PerceptAlignError, match="does not exist"):
        nat.read_rt_table(tmp_path / "none.csv")


def test_synthetic_rts_follow_the_generating_formula():
    d = np.array([0.0, 0.5, 2.0])
    table = nat.synthetic_item_rts(["x", "y", "z"], d, t0_s=0.3, scale_s=0.2, noise_s=0.0)
    np.testing.assert_allclose(table.rt_s, 0.3 + 0.2 * d)  # noise 0: the closed form exactly
    noisy = nat.synthetic_item_rts(np.arange(5000).astype(str), np.zeros(5000), noise_s=0.05, seed=1)
    # Sample sd of 5,000 normals is within 5 % of σ with overwhelming probability (se ≈ 1 %).
    assert abs(noisy.rt_s.std() - 0.05) < 0.0025
    with pytest.raises(PerceptAlignError, match="equal length"):
        nat.synthetic_item_rts(["x"], np.zeros(2))


def test_teacher_difficulty_is_an_entropy_that_tracks_errors(digits, backbone):
    d = nat.teacher_difficulty(digits.train, digits.test)
    assert d.shape == (len(digits.test),)
    assert np.all(d >= 0) and np.all(d <= math.log(10) + 1e-9)  # entropy bounds for 10 classes
    # Images the (independent) CNN gets wrong are harder for the teacher too, on average.
    wrong = (nat.extract(backbone, digits.test.images).logits[:, -1].argmax(-1) != digits.test.labels).numpy()
    assert wrong.any() and d[wrong].mean() > d[~wrong].mean()


# --- fitting deciders to per-image RTs ------------------------------------------------------------


def fit_items(backbone, digits, rt_table, **settings) -> nat.ItemRTEstimator:
    return nat.ItemRTEstimator(nat.ItemRTConfig(**settings), backbone, digits.test).fit(rt_table)


def test_rtify_fit_recovers_ranking_on_heldout_images(backbone, digits, rt_table):
    est = fit_items(backbone, digits, rt_table, decider="rtify", epochs=100, lr=0.003, seed=0)
    score = est.score()
    held = score.table
    assert set(held.image_id).isdisjoint(est.fit_table_.image_id)
    assert len(held) == round(0.5 * len(digits.test))
    # Held-out r well above 0 (≈0.6 observed; the generating noise caps it below 1) and clearly above
    # the same procedure fitted to shuffled RTs (≈0.3 observed).
    assert score.r > 0.3
    assert score.r_shuffled is not None and score.r > score.r_shuffled + 0.1
    assert score.accuracy > 0.8
    # The reported r is the Pearson r of the table's columns (independent formula: numpy).
    assert math.isclose(score.r, np.corrcoef(held.model_rt_s, held.human_rt_s)[0, 1], abs_tol=1e-9)
    # A percentile bootstrap interval of r over ~225 images brackets the estimate (it is ≈ ±0.1 wide).
    lo, hi = score.r_ci95
    assert lo < score.r < hi and hi - lo < 0.4
    summary = score.summary()
    assert summary["r_heldout"] == score.r and summary["n_heldout"] == len(held)


def test_rtify_fit_from_random_init_learns_from_the_rts(backbone, digits, rt_table):
    est = fit_items(backbone, digits, rt_table, init="random", epochs=100, lr=0.01, shuffled_control=False)
    score = est.score()
    # A random evidence map knows nothing about difficulty; after fitting, held-out r must be positive
    # and above where it started (≈ −0.26 → 0.27 observed).
    assert score.r > 0.1 and score.r > score.r_initial + 0.2
    assert score.r_shuffled is None and score.z_diff is None and score.beats_control is None


def test_wong_wang_driven_by_logits(backbone, digits, rt_table):
    ww = nat.LogitWongWang(10)
    torch.testing.assert_close(ww.mix.weight, 0.2 * torch.eye(10))
    J = ww.ww.J.detach()
    # Total inhibition per population equals the two-population model's single cross term.
    assert math.isclose(float(-(J.sum(1) - J.diag())[0]), WW_DEFAULTS["j_cross"], rel_tol=1e-6)
    logits = nat.extract(backbone, digits.test.images[:64]).logits[:, -1]
    torch.testing.assert_close(ww.drive(logits), (0.2 * logits).abs())
    out = ww(logits, generator=torch.Generator().manual_seed(0))
    out.rt_s[out.decided].sum().backward()
    g = ww.mix.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    with pytest.raises(PerceptAlignError, match=r"\(B, 10\)"):
        ww.drive(torch.zeros(3, 4))
    steps = nat.extract(backbone, digits.test.images[:8]).logits  # per-step logits as a time series
    with torch.no_grad():
        assert ww(steps, generator=torch.Generator().manual_seed(0)).rt_s.shape == (8,)

    est = fit_items(
        backbone, digits, rt_table, decider="wong-wang", epochs=8, shuffled_control=False, eval_repeats=4
    )
    score = est.score()
    assert score.no_decision_rate < 0.05
    assert score.r > 0.2  # ≈0.4 before fitting, ≈0.55 after 40 epochs
    assert score.table.model_rt_s.min() >= WW_DEFAULTS["motor_delay_s"]
    assert est.fit_table_.model_rt_s.min() >= WW_DEFAULTS["motor_delay_s"]
    # Trainable scalars: the 10×10 mixing matrix, the 10×10 coupling J and J_ext, I₀, σ, θ.
    assert est.n_parameters == 100 + 100 + 4
    assert set(est.params()) >= {"J_ext", "I0", "sigma", "threshold", "mix_diagonal_mean"}


def test_item_fit_data_errors(backbone, digits, rt_table):
    est = nat.ItemRTEstimator(nat.ItemRTConfig(epochs=1), backbone, digits.test)
    with pytest.raises(PerceptAlignError, match="only 0 of the RT table"):
        est.fit(rt_table.assign(image_id="zzz-" + rt_table.image_id))
    with pytest.raises(PerceptAlignError, match="constant"):
        est.fit(rt_table.assign(rt_s=0.5))
    with pytest.raises(PerceptAlignError, match="cannot be split into training and validation"):
        nat.ItemRTEstimator(nat.ItemRTConfig(val_fraction=0.15), backbone, digits.test).fit(rt_table.head(20))
    with pytest.raises(PerceptAlignError, match="init"):
        nat.make_item_head(backbone, init="zeros")


# --- self-penalised -------------------------------------------------------------------------------


def self_penalised(backbone, **settings) -> nat.ItemSelfPenalisedEstimator:
    return nat.ItemSelfPenalisedEstimator(nat.ItemSelfPenaltyConfig(**settings), backbone)


def test_self_penalised_larger_lambda_gives_faster_decisions(backbone, digits):
    train = nat.features_of(backbone, digits.train)
    test = nat.features_of(backbone, digits.test)
    taus = [
        self_penalised(backbone, lam=lam, penalty="tau", epochs=10)
        .fit(train)
        .score(test)
        .summary()["mean_tau"]
        for lam in (0.0, 0.003, 0.03)
    ]
    # Property: mean τ is non-increasing in λ (ties allowed: τ is in whole steps and saturates),
    # and strong pressure is clearly faster than none.
    assert taus[0] >= taus[1] >= taus[2]
    assert taus[2] < taus[0] - 1.0


def test_self_penalised_finetune_trains_a_copy(backbone, digits):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    small = digits.train.subset(np.arange(64))
    est = self_penalised(backbone, lam=0.01, epochs=1, finetune_backbone=True).fit(small)
    score = est.score(digits.test.subset(np.arange(32)))
    row = score.summary()
    assert 0 <= row["accuracy"] <= 1 and row["kind"] == "margin" and row["n_images"] == 32
    assert list(score.table.image_id[:2]) == ["test-00000", "test-00001"]
    assert est.network_ is not backbone and est.n_parameters == 0  # nothing fitted to human data
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k])
    feats = nat.features_of(backbone, small)
    with pytest.raises(PerceptAlignError, match="`finetune_backbone`"):
        self_penalised(backbone, lam=0.1, finetune_backbone=True).fit(feats)
    with pytest.raises(PerceptAlignError, match="`lam`"):
        nat.ItemSelfPenaltyConfig(lam=-1.0)
    with pytest.raises(PerceptAlignError, match="`penalty`"):
        nat.ItemSelfPenaltyConfig(penalty="speed")
    with pytest.raises(PerceptAlignError, match=r"not fitted yet.*score\(\)"):
        self_penalised(backbone).score(feats)


# --- saliency -------------------------------------------------------------------------------------


def _half_decided_head(backbone, images):
    head = nat.make_item_head(backbone)
    with torch.no_grad():
        feats = nat.extract(backbone, images).features
        phi = torch.cumsum(torch.nn.functional.softplus(head.evidence(feats)), 1)
        theta = torch.quantile(phi[:, -1].amax(-1), 0.5)  # about half the images never reach it
        head.raw_threshold.copy_(torch.log(torch.expm1(theta)))
    return head


def test_tau_saliency_is_zero_exactly_when_undecided(backbone, digits):
    images = digits.test.images[:24]
    head = _half_decided_head(backbone, images)
    maps = nat.saliency(backbone, head, images)
    decided = maps.decided
    assert 0 < int(decided.sum()) < len(decided)
    per_image = maps.tau_gradient.abs().flatten(1).sum(1)
    assert torch.isfinite(maps.tau_gradient).all() and torch.isfinite(maps.class_gradient).all()
    assert torch.all(per_image[decided] > 0)
    assert torch.all(maps.tau_gradient[~decided] == 0)  # censored decisions carry no gradient
    assert torch.all(maps.class_gradient.abs().flatten(1).sum(1) > 0)


def test_tau_saliency_matches_the_implicit_rule(backbone, digits):
    """∂τ/∂x = −(1/Φ̇_τ)·∂Φ_τ,c/∂x for the winning class c, computed here directly from the head's parts."""
    images = digits.test.images[:6]
    head = _half_decided_head(backbone, images)
    maps = nat.saliency(backbone, head, images)
    i = int(torch.nonzero(maps.decided)[0])
    tau = int(maps.tau[i])
    x = images[i : i + 1].clone().requires_grad_(True)
    out = head(backbone(x).features)
    c = int(out.decision.choice[0])
    phi = torch.cumsum(torch.nn.functional.softplus(head.evidence(backbone(x).features)), 1)[0, :, c]
    before = phi[tau - 1] if tau > 0 else torch.zeros(())
    slope = (phi[tau] - before).detach().clamp_min(head.min_slope)
    frac = ((head.threshold - before) / slope).detach().clamp(0, 1)
    # dt*/dx of the interpolated crossing: −(f·∂Φ_s/∂x + (1 − f)·∂Φ_{s−1}/∂x)/Δ
    (grad,) = torch.autograd.grad(frac * phi[tau] + (1 - frac) * before, x)
    expected = -(grad / slope).sum(1)[0]
    torch.testing.assert_close(maps.tau_gradient[i], expected, rtol=1e-4, atol=1e-7)


def test_figures(backbone, digits, rt_table):
    images = digits.test.images[:3]
    maps = nat.saliency(backbone, _half_decided_head(backbone, images), images)
    fig = nat.saliency_figure(maps, [str(k) for k in range(10)])
    assert isinstance(fig, Figure) and len(fig.axes) == 9
    score = fit_items(backbone, digits, rt_table, epochs=2).score()
    scatter = nat.rt_scatter_figure([score], ["head"])
    lo, hi = score.r_ci95
    assert f"r = {score.r:.2f} [{lo:.2f}, {hi:.2f}]" in scatter.axes[0].get_title()
    assert f"shuffled control r = {score.r_shuffled:.2f}" in scatter.axes[0].get_title()
    with pytest.raises(PerceptAlignError, match="names"):
        nat.rt_scatter_figure([score], ["a", "b"])
    with pytest.raises(PerceptAlignError, match="at least one"):
        nat.rt_scatter_figure([])


# --- the whole experiment / CLI --------------------------------------------------------------------


def test_cli_reports_bad_dataset(tmp_path):
    from typer.testing import CliRunner

    import perceptalign.cli.rtify_images  # noqa: F401  (registers the command)
    from perceptalign.cli.rtify import rtify_app

    result = CliRunner().invoke(rtify_app, ["images", "--dataset", "cifar", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown image dataset" in result.output
    result = CliRunner().invoke(
        rtify_app, ["images", "--data-path", str(tmp_path / "none"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "dataset-fashion-mnist" in result.output


@pytest.mark.slow
def test_cli_end_to_end_on_digits(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import perceptalign.cli.rtify_images  # noqa: F401
    from perceptalign.cli.rtify import rtify_app
    from perceptalign.io import read_json

    monkeypatch.setenv("PERCEPTALIGN_CACHE", str(tmp_path / "cache"))
    args = ["images", "-d", "digits", "--width", "8", "--epochs", "10", "--threads", "1"]
    result = CliRunner().invoke(
        rtify_app, [*args, "-o", str(tmp_path / "out"), "--fit-epochs", "60", "--ww-epochs", "10"]
    )
    assert result.exit_code == 0, result.output
    summary = read_json(tmp_path / "out" / "images.json")
    assert len(summary["accuracy_per_step"]) == 6 and summary["accuracy_per_step"][-1] > 0.8
    assert summary["schema"] == 2
    rtify = summary["rtify"]
    assert rtify["r_heldout"] > rtify["r_shuffled_heldout"]
    assert rtify["r_heldout_ci95"][0] < rtify["r_heldout"] < rtify["r_heldout_ci95"][1]
    assert rtify["estimator"]["config"]["decider"] == "rtify" and rtify["n_fit"] + rtify["n_heldout"] > 0
    assert len(summary["self_penalised"]) == 12
    for name in ("rt_scatter.png", "saliency.png", "item_rts.csv", "synthetic_rts.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # The generated table is a valid --rt-table input: rerun on it with the cached backbone.
    again = CliRunner().invoke(
        rtify_app,
        [
            *args,
            "--rt-table",
            str(tmp_path / "out" / "synthetic_rts.csv"),
            "--fit-epochs",
            "5",
            "--ww-epochs",
            "1",
            "-o",
            str(tmp_path / "out2"),
        ],
    )
    assert again.exit_code == 0, again.output
    assert read_json(tmp_path / "out2" / "images.json")["backbone"]["loaded_from_cache"] is True

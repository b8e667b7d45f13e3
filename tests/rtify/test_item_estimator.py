"""The per-image RT estimators (ItemRTEstimator, ItemSelfPenalisedEstimator) on planted data.

No CNN is trained here: a tiny untrained RecurrentCNN only fixes the sizes and the read-out the head starts
from, and the per-step features are written by hand, so the relation between images and RTs is known
exactly. Each fit takes well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import perceptalign.rtify.experiments.natural as nat
from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.natural.deciders import set_threshold_from_data
from perceptalign.rtify.experiments.natural.image_data import ImageSplit
from perceptalign.rtify.experiments.natural.recurrent_cnn import RecurrentCNN
from perceptalign.rtify.losses import self_penalty_objective

N, STEPS, CLASSES = 300, 6, 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is several times faster than two on a shared machine, and deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def planted():
    """Features whose dim 0 is a per-image "speed" s ~ U(0, 1) and dims 1–3 independent N(0, 1) nuisance,
    constant over steps; a read-out whose class-0 evidence reads nuisance dim 1 only (it ignores s)."""
    torch.manual_seed(0)
    backbone = RecurrentCNN(CLASSES, width=2, n_steps=STEPS, pool=1).eval()
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 1, N)
    feats = np.zeros((N, STEPS, backbone.feature_size), np.float32)
    feats[:, :, 0] = s[:, None]
    feats[:, :, 1:4] = rng.normal(size=(N, 1, 3))
    labels = torch.as_tensor(rng.integers(0, CLASSES, N))
    with torch.no_grad():
        backbone.readout.weight.zero_()
        backbone.readout.bias.zero_()
        backbone.readout.weight[0, 1] = 1.0
        backbone.readout.bias[0] = 1.0
        f = torch.as_tensor(feats)
        features = nat.FeatureSet(f, backbone.readout(f), labels)
    ids = np.array([f"img-{i:04d}" for i in range(N)])
    images = ImageSplit(torch.zeros(N, 1, 28, 28), labels, ids)
    return backbone, images, features, s, ids


def estimator(planted, features=None, **settings) -> nat.ItemRTEstimator:
    backbone, images, feats, _, _ = planted
    base = {"epochs": 100, "lr": 0.02, "ce_weight": 0.0, "n_bootstrap": 500}
    return nat.ItemRTEstimator(nat.ItemRTConfig(**{**base, **settings}), backbone, images, features or feats)


def planted_table(planted) -> pd.DataFrame:
    _, _, _, s, ids = planted
    return pd.DataFrame({"image_id": ids, "rt_s": 0.3 + 0.4 * (1 - s) ** 2})  # monotone in s, no noise


# --- configuration and refusal ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("decider", "lstm"),
        ("init", "zeros"),
        ("holdout_fraction", 1.0),
        ("holdout_fraction", 0),
        ("val_fraction", 1.0),
        ("epochs", -1),
        ("epochs", 2.5),
        ("lr", 0.0),
        ("ce_weight", -0.1),
        ("ce_weight", math.nan),
        ("batch_size", 2),
        ("shuffled_control", 1),
        ("eval_repeats", 0),
        ("ww_input", "mean"),
        ("ww_mix_init", 0.0),
        ("ww_dt_ms", -1.0),
        ("ww_max_time_s", 0.001),
        ("n_bootstrap", 10),
        ("seed", -1),
        ("seed", True),
    ],
)
def test_item_config_errors_name_the_field(name, value):
    with pytest.raises(PerceptAlignError, match=f"ItemRTConfig: `{name}`"):
        nat.ItemRTConfig(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [("lam", -1.0), ("lam", math.inf), ("penalty", "speed"), ("epochs", 0), ("lr", -1), ("batch_size", 0)],
)
def test_self_penalty_config_errors_name_the_field(name, value):
    with pytest.raises(PerceptAlignError, match=f"ItemSelfPenaltyConfig: `{name}`"):
        nat.ItemSelfPenaltyConfig(**{name: value})


def test_config_is_frozen_and_records_what_runs():
    cfg = nat.ItemRTConfig(decider="wong-wang")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    record = cfg.to_dict()
    assert (record["epochs"], record["lr"]) == (40, 0.003)  # the Wong–Wang defaults, resolved
    assert nat.ItemRTConfig(**record).to_dict() == record


def test_refuses_use_before_fit_and_wrong_inputs(planted):
    backbone, images, feats, _, _ = planted
    est = estimator(planted)
    for use in (est.score, est.predict, est.params, lambda: est.n_parameters):
        with pytest.raises(PerceptAlignError, match="ItemRTEstimator is not fitted yet"):
            use()
    assert set(est.to_dict()) == {"method", "config"} and repr(est) == "ItemRTEstimator(not fitted)"
    with pytest.raises(PerceptAlignError, match="expects an ItemRTConfig"):
        nat.ItemRTEstimator({"decider": "rtify"}, backbone, images)  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="`features` hold 10 images but the split has 300"):
        nat.ItemRTEstimator(
            nat.ItemRTConfig(), backbone, images, nat.FeatureSet(*(x[:10] for x in vars(feats).values()))
        )
    sp = nat.ItemSelfPenalisedEstimator(nat.ItemSelfPenaltyConfig(), backbone)
    with pytest.raises(PerceptAlignError, match="ItemSelfPenalisedEstimator is not fitted yet"):
        sp.score(feats)


# --- the held-out split ------------------------------------------------------------------------------


def test_heldout_images_never_enter_the_fit(planted):
    _, _, feats, _, ids = planted
    table = planted_table(planted)
    est = estimator(planted).fit(table)
    train, val, held = set(est.train_ids_), set(est.val_ids_), set(est.heldout_ids_)
    assert train.isdisjoint(held) and val.isdisjoint(held) and train.isdisjoint(val)
    assert train | val | held == set(ids)
    assert len(held) == round(0.5 * N) and len(val) == round(0.25 * (N - len(held)))
    assert set(est.fit_table_.image_id) == train | val and set(est.score().table.image_id) == held

    # Poison the held-out images: NaN features and logits, reversed RTs. If any of them entered the fit
    # (threshold, training, early stopping, the shuffled control), the fitted parameters would change or
    # turn NaN; they must come out bit-identical.
    rows = np.isin(ids, list(held))
    poisoned = nat.FeatureSet(feats.features.clone(), feats.logits.clone(), feats.labels)
    poisoned.features[torch.as_tensor(rows)] = math.nan
    poisoned.logits[torch.as_tensor(rows)] = math.nan
    bad_table = table.copy()
    bad_table.loc[rows, "rt_s"] = bad_table.loc[rows, "rt_s"].to_numpy()[::-1]
    again = estimator(planted, poisoned).fit(bad_table)
    assert list(again.heldout_ids_) == list(est.heldout_ids_)
    for a, b in ((est.decider_, again.decider_), (est.control_, again.control_)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), name
    assert again.history_ == est.history_
    pd.testing.assert_frame_equal(again.fit_table_, est.fit_table_)


def test_score_refuses_fit_images_and_accepts_heldout_ones(planted):
    table = planted_table(planted)
    est = estimator(planted, epochs=5).fit(table)
    with pytest.raises(PerceptAlignError, match=r"150 of the images to score were used to fit"):
        est.score(table)
    held_only = table[table.image_id.isin(est.heldout_ids_)]
    assert math.isclose(est.score(held_only).r, est.score().r, rel_tol=0, abs_tol=1e-12)
    some = held_only.iloc[:40]
    assert est.score(some).n_images == 40


# --- what r measures -----------------------------------------------------------------------------


def test_planted_monotone_feature_gives_r_near_one_on_heldout_images(planted):
    score = estimator(planted, seed=1).fit(planted_table(planted)).score()
    n = score.n_images
    # Before fitting the race reads only nuisance dims, independent of s: its r with the planted RTs is a
    # permutation-null draw, sd 1/√(n−1) ≈ 0.08; 4 sd bounds it.
    assert abs(score.r_initial) < 4 / math.sqrt(n - 1)
    # The RTs are a noiseless monotone function of s and the race's crossing time is monotone in the
    # learnt evidence, so only the curvature mismatch is left: r ≈ 0.99 observed over 6 seeds (≥ 0.987).
    assert score.r > 0.95
    lo, hi = score.r_ci95
    assert 0.9 < lo <= score.r <= hi <= 1.0
    # The control fitted to permuted RTs learns no s-ranking (its r was −0.46…0.27 over 6 seeds; it
    # varies because it fits noise): the fit beats it far beyond image-sampling noise.
    assert score.r_shuffled is not None and score.r_shuffled < 0.6
    assert score.beats_control is True and score.p_not_above_control < 0.01
    assert math.isclose(score.z_diff, math.atanh(score.r) - math.atanh(score.r_shuffled), rel_tol=1e-12)


def test_rts_without_item_information_give_r_near_zero(planted):
    _, _, _, _, ids = planted
    rng = np.random.default_rng(7)
    noise = pd.DataFrame({"image_id": ids, "rt_s": rng.lognormal(math.log(0.6), 0.3, N)})
    score = estimator(planted, seed=2).fit(noise).score()
    # The held-out RTs are iid and independent of everything the fit saw, so whatever the fitted models
    # predict, r (the fit's and the shuffled control's alike) has the permutation-null distribution:
    # mean 0, sd 1/√(n−1) ≈ 0.08. 4 sd: a false failure has probability ≈ 6e-5.
    bound = 4 / math.sqrt(score.n_images - 1)
    assert abs(score.r) < bound and abs(score.r_shuffled) < bound
    # Under this null the paired 95 % interval of the z difference covers 0 (fails for ≈ 5 % of seeds;
    # the seed is fixed), so the report does not claim the fit beats the control.
    lo, hi = score.z_diff_ci95
    assert lo < 0 < hi and score.beats_control is False


# --- the bootstrap -------------------------------------------------------------------------------------


def test_bootstrap_resamples_images_as_pairs():
    x = np.random.default_rng(0).normal(size=200)
    # Identical model and human RTs: r = 1 in every replicate only if each image keeps its pair.
    boot = nat.bootstrap_heldout_r(x, x.copy(), x.copy(), n_bootstrap=300)
    assert boot["r_ci95"][0] > 1 - 1e-9 and boot["z_diff_ci95"] == (0.0, 0.0)
    assert boot["p_not_above_control"] == 1.0  # every replicate's difference is 0, i.e. ≤ 0


def test_bootstrap_interval_matches_the_fisher_interval_for_normal_data():
    rng = np.random.default_rng(3)
    n, rho = 400, 0.5
    h = rng.normal(size=n)
    m = rho * h + math.sqrt(1 - rho**2) * rng.normal(size=n)
    r = float(np.corrcoef(h, m)[0, 1])
    boot = nat.bootstrap_heldout_r(h, m, n_bootstrap=4000, seed=1)
    # For bivariate normal data the Fisher interval tanh(z ± 1.96/√(n−3)) is accurate; the percentile
    # bootstrap agrees with it to O(1/n) plus Monte-Carlo error (≈ 0.003 for 4,000 replicates).
    half = 1.959964 / math.sqrt(n - 3)
    expected = (math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half))
    np.testing.assert_allclose(boot["r_ci95"], expected, atol=0.02)
    assert nat.bootstrap_heldout_r(h, m, n_bootstrap=4000, seed=1) == boot  # reproducible
    with pytest.raises(PerceptAlignError, match="≥ 3 images"):
        nat.bootstrap_heldout_r(h[:2], m[:2])


# --- description -----------------------------------------------------------------------------------------


def test_parameters_and_record(planted):
    backbone, _, _, _, _ = planted
    est = estimator(planted, epochs=3, ce_weight=0.1).fit(planted_table(planted))
    h, c = backbone.feature_size, CLASSES
    # evidence and classifier (trained by the CE term) are Linear(h → c) each, plus θ and t0.
    assert est.n_parameters == 2 * (h * c + c) + 2
    no_ce = estimator(planted, epochs=3).fit(planted_table(planted))
    assert no_ce.n_parameters == h * c + c + 2  # without CE the classifier is never trained
    record = json.loads(json.dumps(est.to_dict()))  # JSON-ready
    assert record["method"] == "item-rt-rtify" and record["n_parameters"] == est.n_parameters
    assert record["n_train"] + record["n_val"] + record["n_heldout"] == N
    assert record["params"]["threshold"] > 0 and record["config"]["ce_weight"] == 0.1
    pred = est.predict(["img-0003", "img-0001"])
    assert list(pred.image_id) == ["img-0001", "img-0003"]  # predicted together, in split order
    with pytest.raises(PerceptAlignError, match="not in this split"):
        est.predict(["nope"])


def test_self_penalised_minimises_the_shared_objective(planted):
    backbone, _, feats, _, _ = planted
    config = nat.ItemSelfPenaltyConfig(lam=0.05, penalty="tau", epochs=1, batch_size=N, lr=1e-9)
    est = nat.ItemSelfPenalisedEstimator(config, backbone).fit(feats)
    # One epoch of one full batch: the recorded loss is the shared self_penalty_objective of the start
    # head (read-out init, θ from the data), computed here independently of the estimator.
    torch.manual_seed(0)
    head = nat.make_item_head(backbone)
    set_threshold_from_data(head, feats.features)
    with torch.no_grad():
        expected = float(self_penalty_objective(head(feats.features), feats.labels, lam=0.05, kind="tau"))
    assert math.isclose(est.history_[0], expected, rel_tol=1e-5)
    row = est.score(feats).summary()
    assert row["kind"] == "tau" and row["n_images"] == N and 0 <= row["no_decision_rate"] <= 1

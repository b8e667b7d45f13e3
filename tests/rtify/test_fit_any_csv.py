"""`rtify fit` on any trials CSV: test coherences without training trials, RTs beyond the fit's window.

Tiny settings throughout (a 5-step GRU, 5 head steps): these tests check what happens to the trials,
not how good the fits are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.rdm import (
    FitConfig,
    HumanTargets,
    check_split_tables,
    run_fit,
    table_loss,
)
from perceptalign.rtify.experiments.rdm.fit_experiment import fit_conditions
from perceptalign.rtify.experiments.rdm.human_fit import rt_window_s
from perceptalign.rtify.experiments.rdm.task import GRUTrainConfig, RDMTaskConfig
from perceptalign.rtify.metrics import fit_quality

TASK = RDMTaskConfig(dt=0.05, n_steps=40)  # 2 s of stimulus, as in the default task
GRU = GRUTrainConfig(hidden_size=8, steps=5, batch_size=32, seed=0)
TINY = FitConfig(head_steps=5, n_train=20, n_eval=100)
SLOW_RT = 3.2  # beyond the 2.5 s window and beyond anything the head can produce (2 s + t₀ ≤ 0.8 s)


def _trials(conds_by_split: dict[str, tuple[float, ...]], n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Shifted-gamma RTs (0.3 s + Gamma(2, 0.15)), 80 % correct, per split and coherence."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, conds in conds_by_split.items():
        for cond in conds:
            rows.append(
                pd.DataFrame(
                    {
                        "split": split,
                        "condition": cond,
                        "rt_s": 0.3 + rng.gamma(2.0, 0.15, n),
                        "correct": rng.random(n) < 0.8,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def _split(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        table[table["split"] == "train"].reset_index(drop=True),
        table[table["split"] == "test"].reset_index(drop=True),
    )


def _fit(train: pd.DataFrame, test: pd.DataFrame, cache: Path, *, baselines: bool = False):
    return run_fit(train, test, TINY, task=TASK, gru=GRU, baselines=baselines, cache=cache)


# ---------------------------------------------------------------- (a), (d): which conditions are scored


def test_fit_conditions_accept_unseen_numeric_coherences_and_refuse_labels() -> None:
    train, test = _split(_trials({"train": (6.4, 51.2), "test": (6.4, 25.6, 51.2)}, n=5))
    split = fit_conditions(train, test)
    assert (split.train, split.test, split.unseen) == ([6.4, 51.2], [6.4, 25.6, 51.2], [25.6])
    # commands whose methods have per-coherence parameters keep the strict check
    with pytest.raises(PerceptAlignError, match=r"test coherence\(s\) \[25\.6\] have no training trials"):
        check_split_tables(train, test)
    # a labelled test-only condition: no method can take it, so the error comes before any fitting and
    # names the label and its split (the numeric test coherences are not blamed)
    labelled = test.assign(condition=test["condition"].astype(object))
    labelled.loc[labelled["condition"] == 25.6, "condition"] = "catch"
    with pytest.raises(
        PerceptAlignError, match=r"has labels \(test split: \['catch'\]\)\. Every method"
    ) as err:
        fit_conditions(train, labelled, source="d.csv")
    assert str(err.value).startswith("d.csv: ") and "6.4" not in str(err.value)
    with pytest.raises(PerceptAlignError, match=r"has labels \(test split: \['catch'\]\)"):
        check_split_tables(train, labelled)  # the same clear message for the strict check
    with pytest.raises(PerceptAlignError, match=r"\(test split\) must be finite percentages.*got 150"):
        fit_conditions(train, test.replace({"condition": {25.6: 150.0}}))
    with pytest.raises(PerceptAlignError, match=r"test split has no trials for coherence\(s\) \[51\.2\]"):
        fit_conditions(train, test[test["condition"] != 51.2])


def test_unseen_test_coherence_is_predicted_not_fitted(tmp_path: Path) -> None:
    table = _trials({"train": (6.4, 51.2), "test": (6.4, 25.6, 51.2)})
    train, test = _split(table)
    result = _fit(train, test, tmp_path)
    data = result.report["data"]
    assert data["conditions"] == [6.4, 25.6, 51.2] and data["train_conditions"] == [6.4, 51.2]
    assert data["unseen_test_conditions"] == [25.6]
    assert any("[25.6] have no training trials" in note for note in data["notes"])
    rows = {r["condition"]: r for r in result.report["rtify"]["per_condition"]}
    assert list(rows) == [6.4, 25.6, 51.2]
    assert rows[25.6]["n_model"] == TINY.n_eval and np.isfinite(rows[25.6]["wasserstein"])
    assert np.isfinite(result.report["rtify"]["test_loss"])
    # The unseen coherence never reaches the fit: the same run without it fits the same head.
    alone = _fit(train, test[test["condition"] != 25.6], tmp_path)
    assert alone.report["data"]["unseen_test_conditions"] == []
    assert [h["loss"] for h in alone.report["history"]] == [h["loss"] for h in result.report["history"]]
    for name in ("threshold", "t0"):
        assert alone.report["rtify"]["params"][name] == result.report["rtify"]["params"][name]


# ---------------------------------------------------------------- (b), (c): RTs beyond the window


def test_human_targets_count_late_rts_as_missing_mass() -> None:
    config = FitConfig(loss="wasserstein", acc_weight=0.0)  # the histogram distance alone
    human = _trials({"test": (6.4, 51.2)}, n=200).drop(columns="split")
    late = human.index[human["condition"] == 6.4][:40]  # 20 % of the 6.4 % trials
    human.loc[late, "rt_s"] = SLOW_RT
    assert rt_window_s(config) == 2.5
    with pytest.raises(PerceptAlignError, match=r"40 of 400 trials have reaction times above 2\.75 s"):
        HumanTargets.from_table(human, [6.4, 51.2], config)  # the default still refuses them
    counted = HumanTargets.from_table(human, [6.4, 51.2], config, beyond_window="count")
    inside = HumanTargets.from_table(human.drop(index=late), [6.4, 51.2], config)
    # 6.4 %: the in-window histogram, scaled to the 80 % of trials that responded within the window
    # (float32 kernel sums: 1e-6); 51.2 % has no late trials and keeps its histogram exactly.
    assert float(counted.hist[0].sum()) == pytest.approx(0.8, abs=1e-6)
    torch.testing.assert_close(counted.hist[0], 0.8 * inside.hist[0], rtol=1e-5, atol=1e-7)
    assert torch.equal(counted.hist[1], inside.hist[1])
    # A model that leaves exactly those trials without a response (undecided at the window) matches
    # the counted targets; a model that answers them inside the window does not, and dropping the late
    # trials from the targets would hide that difference.
    censored = human.assign(decided=human["rt_s"] < 2.5, rt_s=human["rt_s"].clip(upper=2.5))
    answers_all = human.assign(decided=True, rt_s=human["rt_s"].clip(upper=2.0))
    assert table_loss(censored, counted, config) == pytest.approx(0.0, abs=1e-6)
    assert table_loss(answers_all, counted, config) > 0.05  # 20 % of the mass misplaced by ≥ 0.5 s
    assert table_loss(censored, inside, config) > 0.05


def test_late_test_rts_are_reported_and_make_w1_worse(tmp_path: Path) -> None:
    train, test = _split(_trials({"train": (6.4, 51.2), "test": (6.4, 51.2)}))
    late = test.index[test["condition"] == 6.4][:10]
    test.loc[late, "rt_s"] = SLOW_RT
    result = _fit(train, test, tmp_path)
    data = result.report["data"]
    assert data["rt_window_s"] == 2.5
    assert data["rt_beyond_window"] == {"train": {"6.4": 0, "51.2": 0}, "test": {"6.4": 10, "51.2": 0}}
    assert any(
        note.startswith("10 test trial(s) have RTs at or beyond the 2.5 s window") for note in data["notes"]
    )
    model = result.tables[TINY.model_name]
    assert float(model["rt_s"].max()) < SLOW_RT  # the model produces no such slow RTs
    reported = {r["condition"]: r["wasserstein"] for r in result.report["rtify"]["per_condition"]}
    dropped = fit_quality(model, test.drop(index=late)).set_index("condition")["wasserstein"]
    # The late trials are in the reported W1 (it is fit_quality on the whole test split) and they make
    # it worse: 10 of 60 trials at 3.2 s, ≥ 0.9 s beyond every model RT, add about 0.15 s of transport.
    kept = fit_quality(model, test).set_index("condition")["wasserstein"]
    assert reported[6.4] == pytest.approx(kept[6.4], rel=1e-12)
    assert reported[6.4] > dropped[6.4] + 0.05
    assert reported[51.2] == pytest.approx(dropped[51.2], rel=1e-12)  # no late trials there


def test_a_condition_entirely_beyond_the_window_is_fitted_and_scored(tmp_path: Path) -> None:
    """Every 6.4 % trial, train and test, is late: an all-missing target histogram, never a crash."""
    train, test = _split(_trials({"train": (6.4, 51.2), "test": (6.4, 51.2)}))
    for table in (train, test):
        slow = table["condition"] == 6.4
        table.loc[slow, "rt_s"] = SLOW_RT + np.linspace(0.0, 0.8, int(slow.sum()))
    result = _fit(train, test, tmp_path)
    data = result.report["data"]
    assert data["rt_beyond_window"] == {"train": {"6.4": 60, "51.2": 0}, "test": {"6.4": 60, "51.2": 0}}
    entry = result.report["rtify"]
    assert np.isfinite(entry["test_loss"])
    row = next(r for r in entry["per_condition"] if r["condition"] == 6.4)
    assert row["n_human"] == 60
    # W1 ≥ the gap between the mean |RT|s (|x| is 1-Lipschitz; Kantorovich–Rubinstein): the late trials count.
    model = result.tables[TINY.model_name]
    gap = float(test.loc[test["condition"] == 6.4, "rt_s"].mean()) - float(
        model.loc[(model["condition"] == 6.4) & model["decided"], "rt_s"].mean()
    )
    assert gap > 0.5 and row["wasserstein"] >= gap - 1e-9


def test_late_training_rts_are_censored_in_the_ddm_likelihood(tmp_path: Path) -> None:
    """5 late training trials at 6.4 % and a test condition entirely late, with every baseline."""
    train, test = _split(_trials({"train": (6.4, 51.2), "test": (6.4, 51.2)}))
    train.loc[train.index[train["condition"] == 6.4][:5], "rt_s"] = SLOW_RT
    slow = test["condition"] == 6.4
    test.loc[slow, "rt_s"] = SLOW_RT + np.linspace(0.0, 0.8, int(slow.sum()))
    result = _fit(train, test, tmp_path, baselines=True)
    assert result.report["data"]["rt_beyond_window"]["train"] == {"6.4": 5, "51.2": 0}
    for name in ("ddm", "ddm-simple"):
        notes = result.report["baselines"][name]["notes"]
        assert notes[0].startswith("5 training trial(s) with RTs at or beyond max_time_s = 2.5 s"), name
        # censored, not conditioned on a response: P(no response within 2.5 s) is in the likelihood
        assert result.fitted[name].model_.config.condition_on_response is False, name
    for name, entry in [("rtify", result.report["rtify"]), *result.report["baselines"].items()]:
        assert np.isfinite(entry["test_loss"]), name
        row = next(r for r in entry["per_condition"] if r["condition"] == 6.4)
        assert row["n_human"] == 60 and np.isfinite(row["wasserstein"]), name

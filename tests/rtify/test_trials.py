"""Trial tables: validation errors, signed-RT conversion, CSV loading and the registered human dataset."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.trials import (
    RT_DATASETS,
    censor_beyond,
    check_split_column,
    conditions,
    load_rt_dataset,
    load_trials_csv,
    normalise_conditions,
    packaged_data_path,
    rt_beyond,
    split_trials,
    trials_from_signed_rt,
    validate_trials,
)

HUMAN_CSV = packaged_data_path("rdm_human_rt.csv.gz")  # ships with the package: never skipped


def _table(**overrides: object) -> pd.DataFrame:
    base = {"condition": [1.0, 1.0, 2.0], "rt_s": [0.5, 0.7, 0.4], "correct": [True, False, True]}
    base.update(overrides)
    return pd.DataFrame(base)


def test_validate_returns_normalised_copy() -> None:
    raw = _table(condition=["1", "1", "2"], rt_s=["0.5", "0.7", "0.4"], correct=[1, 0, "true"])
    raw.index = [10, 11, 12]
    clean = validate_trials(raw)
    assert clean["condition"].dtype == float and clean["rt_s"].dtype == float
    assert clean["correct"].dtype == bool
    assert clean["correct"].tolist() == [True, False, True]
    assert clean.index.tolist() == [0, 1, 2]
    assert raw["rt_s"].tolist() == ["0.5", "0.7", "0.4"]  # the input is not modified


def test_string_conditions_stay_strings() -> None:
    clean = validate_trials(_table(condition=["easy", "easy", "hard"]))
    assert conditions(clean) == ["easy", "hard"]


def test_missing_columns_are_listed_with_meaning() -> None:
    with pytest.raises(PerceptAlignError, match=r"missing column\(s\) \['rt_s', 'correct'\].*seconds"):
        validate_trials(pd.DataFrame({"condition": [1.0]}))


def test_not_a_dataframe() -> None:
    with pytest.raises(PerceptAlignError, match="DataFrame"):
        validate_trials({"condition": [1.0]})  # type: ignore[arg-type]


def test_empty_table() -> None:
    with pytest.raises(PerceptAlignError, match="empty"):
        validate_trials(_table().iloc[:0])


def test_non_numeric_rt_shows_offending_row() -> None:
    with pytest.raises(PerceptAlignError, match=r"non-numeric[\s\S]*fast"):
        validate_trials(_table(rt_s=[0.5, "fast", 0.4]))


def test_nan_rt() -> None:
    with pytest.raises(PerceptAlignError, match="missing \\(NaN\\)"):
        validate_trials(_table(rt_s=[0.5, np.nan, 0.4]))


def test_infinite_rt() -> None:
    with pytest.raises(PerceptAlignError, match="infinite"):
        validate_trials(_table(rt_s=[0.5, np.inf, 0.4]))


@pytest.mark.parametrize("bad", [0.0, -0.3])
def test_non_positive_rt(bad: float) -> None:
    with pytest.raises(PerceptAlignError, match=r"(?s)must be > 0.*signed-RT table.*signed_rt_s"):
        validate_trials(_table(rt_s=[0.5, bad, 0.4]))


@pytest.mark.parametrize("bad", [2, "maybe", None])
def test_correct_not_boolean_like(bad: object) -> None:
    with pytest.raises(PerceptAlignError, match="'correct'"):
        validate_trials(_table(correct=[True, bad, False]))


def test_decided_column_is_validated_and_kept() -> None:
    clean = validate_trials(_table(decided=[1, 1, 0]))
    assert clean["decided"].tolist() == [True, True, False]
    with pytest.raises(PerceptAlignError, match="'decided'"):
        validate_trials(_table(decided=[1, 5, 0]))


def test_missing_condition_value() -> None:
    with pytest.raises(PerceptAlignError, match="'condition' has missing"):
        validate_trials(_table(condition=[1.0, None, 2.0]))


def test_required_conditions() -> None:
    validate_trials(_table(), required_conditions=[1, 2.0])  # ints and floats compare equal
    with pytest.raises(PerceptAlignError, match=r"no trials for condition\(s\) \[3.0\]") as info:
        validate_trials(_table(), required_conditions=[1.0, 3.0])
    assert "required_conditions" not in str(info.value)  # no Python argument names in the message


def test_signed_rt_conversion() -> None:
    raw = pd.DataFrame(
        {
            "split": ["train", "test", "train"],
            "coherence_pct": [3.2, 3.2, 51.2],
            "signed_rt_s": [0.6, -0.9, 0.3],
        }
    )
    trials = trials_from_signed_rt(raw)
    assert trials["rt_s"].tolist() == [0.6, 0.9, 0.3]
    assert trials["correct"].tolist() == [True, False, True]
    assert trials["split"].tolist() == ["train", "test", "train"]
    # Round trip: sign(correct) * rt gives the input back exactly.
    back = np.where(trials["correct"], trials["rt_s"], -trials["rt_s"])
    np.testing.assert_array_equal(back, raw["signed_rt_s"].to_numpy())


def test_signed_rt_zero_is_an_error() -> None:
    raw = pd.DataFrame({"coherence_pct": [3.2, 3.2], "signed_rt_s": [0.6, 0.0]})
    with pytest.raises(PerceptAlignError, match="signed RT of 0"):
        trials_from_signed_rt(raw)


def test_signed_rt_missing_column() -> None:
    with pytest.raises(PerceptAlignError, match="signed_rt_s"):
        trials_from_signed_rt(pd.DataFrame({"coherence_pct": [1.0]}))


def test_load_trials_csv_ms_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame(
        {"coh": [5, 5, 10], "RT": [450, 800, 300], "acc": [1, 0, 1], "subj": ["a", "b", "a"]}
    ).to_csv(path, index=False)
    trials = load_trials_csv(
        path,
        condition_column="coh",
        rt_column="RT",
        correct_column="acc",
        rt_unit="ms",
        subject_column="subj",
    )
    np.testing.assert_allclose(trials["rt_s"], [0.45, 0.8, 0.3])
    assert trials["subject"].tolist() == ["a", "b", "a"]
    signed = tmp_path / "s.csv"
    pd.DataFrame({"coh": [5, 10], "srt": [-450, 300]}).to_csv(signed, index=False)
    trials = load_trials_csv(signed, condition_column="coh", signed_rt_column="srt", rt_unit="ms")
    assert trials["correct"].tolist() == [False, True]
    np.testing.assert_allclose(trials["rt_s"], [0.45, 0.3])


def test_load_trials_csv_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"coh": [5], "RT": [0.4], "acc": [1]}).to_csv(path, index=False)
    with pytest.raises(PerceptAlignError, match="does not exist"):
        load_trials_csv(tmp_path / "nope.csv", condition_column="coh", rt_column="RT", correct_column="acc")
    with pytest.raises(PerceptAlignError, match="not both and not neither"):
        load_trials_csv(path, condition_column="coh")
    with pytest.raises(PerceptAlignError, match="needs correct_column"):
        load_trials_csv(path, condition_column="coh", rt_column="RT")
    with pytest.raises(PerceptAlignError, match=r"\['Rt'\] not found"):
        load_trials_csv(path, condition_column="coh", rt_column="Rt", correct_column="acc")
    with pytest.raises(PerceptAlignError, match="rt_unit"):
        load_trials_csv(path, condition_column="coh", rt_column="RT", correct_column="acc", rt_unit="min")  # type: ignore[arg-type]


def test_split_trials_and_conditions() -> None:
    trials = validate_trials(_table(split=["train", "test", "train"]))
    assert len(split_trials(trials, "train")) == 2
    with pytest.raises(PerceptAlignError, match=r"available splits: \['test', 'train'\]"):
        split_trials(trials, "valid")
    with pytest.raises(PerceptAlignError, match="no 'split' column"):
        split_trials(validate_trials(_table()), "train")
    assert conditions(trials) == [1.0, 2.0]
    assert normalise_conditions([1, "2.5"]) == [1.0, 2.5]


def test_split_column_holds_only_train_and_test() -> None:
    check_split_column(_table(split=["train", "test", "train"]))
    # 'Test' and a blank would each be skipped silently by split_trials(…, 'train' / 'test')
    bad = _table(split=["train", "Test", None])
    with pytest.raises(PerceptAlignError, match=r"2 row\(s\) have 'Test', \(empty\):\n") as err:
        check_split_column(bad, name="f.csv")
    assert str(err.value).startswith("f.csv: column 'split' must hold only 'train' or 'test'")
    assert "Relabel them" in str(err.value) and "0    train" not in str(err.value)  # only bad rows shown
    with pytest.raises(PerceptAlignError, match="no 'split' column; add one with the values train, test"):
        check_split_column(_table())


def test_rts_at_or_beyond_a_window_are_counted_and_censored() -> None:
    table = _table(rt_s=[0.5, 2.5, 3.1])  # conditions 1, 1, 2
    assert rt_beyond(table, 2.5).to_dict() == {1.0: 1, 2.0: 1}  # "at" counts: no model responds at 2.5 s
    assert rt_beyond(table, 10.0).to_dict() == {1.0: 0, 2.0: 0}
    censored = censor_beyond(table, 2.5)
    assert censored["decided"].tolist() == [True, False, False]
    assert censored["rt_s"].tolist() == [0.5, 2.5, 2.5]  # the censoring time, as model tables have it
    assert censored["correct"].tolist() == table["correct"].tolist()
    # a trial that was undecided already stays undecided
    assert censor_beyond(table.assign(decided=[False, True, True]), 9.0)["decided"].tolist() == [
        False,
        True,
        True,
    ]


def test_rdm_human_dataset() -> None:
    record = RT_DATASETS["rdm-human"]
    assert "serre-lab/RTify" in record.source_url and len(record.sha256) == 64
    train = load_rt_dataset("rdm-human", split="train", path=HUMAN_CSV)
    test = load_rt_dataset("rdm-human", split="test", path=HUMAN_CSV)
    assert (len(train), len(test)) == (46_644, 11_794)
    assert conditions(train) == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2]
    accuracy = train.groupby("condition")["correct"].mean()
    assert accuracy.is_monotonic_increasing  # more coherent motion → more correct responses
    assert 0.5 < accuracy.iloc[0] < 0.56 and accuracy.iloc[-1] > 0.97
    assert train["rt_s"].between(0.15, 2.5).all()
    # Errors are slower than correct responses (a classic feature of this task) on the whole training set.
    assert train.loc[~train["correct"], "rt_s"].mean() > train.loc[train["correct"], "rt_s"].mean()


def _plain_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "rdm_human_rt.csv"
    with gzip.open(HUMAN_CSV, "rb") as src, copy.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return copy


def test_rdm_human_loads_in_a_bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No repository around, an empty cache, no environment variable: the packaged copy is used."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERCEPTALIGN_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("PERCEPTALIGN_RDM_HUMAN", raising=False)
    table = load_rt_dataset("rdm-human")
    assert len(table) == 58_438 and (table["split"] == "train").sum() == 46_644
    assert HUMAN_CSV.parent.name == "data" and HUMAN_CSV.parent.parent.name == "perceptalign"


def test_rdm_human_resolution_via_env_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    copy = _plain_copy(tmp_path)  # an uncompressed copy verifies against the same checksum
    monkeypatch.setenv("PERCEPTALIGN_RDM_HUMAN", str(copy))
    assert len(load_rt_dataset("rdm-human")) == 46_644 + 11_794
    monkeypatch.setenv("PERCEPTALIGN_RDM_HUMAN", str(tmp_path / "missing.csv"))
    with pytest.raises(PerceptAlignError, match=r"PERCEPTALIGN_RDM_HUMAN.*does not exist"):
        load_rt_dataset("rdm-human")
    assert len(load_rt_dataset("rdm-human", split="test", path=copy)) == 11_794


def test_rdm_human_checksum_mismatch(tmp_path: Path) -> None:
    copy = _plain_copy(tmp_path)
    with copy.open("a") as fh:
        fh.write("test,0.8,0.5\n")
    with pytest.raises(PerceptAlignError, match=r"checksum mismatch.*restore it from https://github\.com"):
        load_rt_dataset("rdm-human", path=copy)
    # The same file read as a plain CSV path is accepted (no registry checksum applies).
    assert len(load_rt_dataset(str(copy))) == 46_644 + 11_794 + 1


def test_rdm_human_missing_packaged_copy_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import perceptalign.rtify.trials as trials_module

    monkeypatch.delenv("PERCEPTALIGN_RDM_HUMAN", raising=False)
    monkeypatch.setattr(trials_module, "packaged_data_path", lambda name: tmp_path / name)
    with pytest.raises(PerceptAlignError, match=r"packaged copy .* is missing.*reinstall"):
        load_rt_dataset("rdm-human")


def test_unknown_dataset_name() -> None:
    with pytest.raises(PerceptAlignError, match=r"neither a registered dataset \(\['rdm-human'\]\)"):
        load_rt_dataset("rdm-monkey")


def test_plain_trials_csv_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    _table(split=["train", "train", "test"]).to_csv(path, index=False)
    assert len(load_rt_dataset(str(path), split="train")) == 2

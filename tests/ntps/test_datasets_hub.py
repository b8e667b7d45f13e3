"""The hub path, exercised by replacing ``datasets.load_dataset`` with in-memory DatasetDicts."""

from __future__ import annotations

import datasets as hf
import numpy as np
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.datasets import OFFLINE_SPECS, load_text_dataset


@pytest.fixture
def hub(monkeypatch):
    """Register fake hub contents per id; records the ids that were requested."""
    store: dict[str, hf.DatasetDict] = {}
    calls: list[str] = []

    def fake_load_dataset(path, *args, **kwargs):
        calls.append(path)
        if path not in store:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")
        return store[path]

    monkeypatch.setattr(hf, "load_dataset", fake_load_dataset)
    return store, calls


def test_medical_pairs_concatenate_every_row_and_use_the_published_split(hub):
    store, calls = hub
    n = 40
    q1 = [f"first question {i}?" for i in range(n)]
    q2 = [f"second question {i}?" for i in range(n)]
    labels = [i % 2 for i in range(n)]
    features = hf.Features(
        {
            "dr_id": hf.Value("int64"),
            "question_1": hf.Value("string"),
            "question_2": hf.Value("string"),
            "label": hf.ClassLabel(names=["different", "similar"]),
        }
    )
    train = hf.Dataset.from_dict(
        {"dr_id": list(range(n)), "question_1": q1, "question_2": q2, "label": labels}, features=features
    )
    store["curaihealth/medical_questions_pairs"] = hf.DatasetDict({"train": train})
    tr = load_text_dataset("medical_pairs", "train")
    te = load_text_dataset("medical_pairs", "test")
    assert calls[0] == "curaihealth/medical_questions_pairs"
    everything = sorted(tr.texts + te.texts)
    assert everything == sorted(f"{a} {b}" for a, b in zip(q1, q2, strict=True))  # every row has its pair
    assert len(te) == 12 and len(tr) == 28  # 30 % of 40
    # The published split: datasets' own train_test_split(test_size=0.3, shuffle=True, seed=42).
    ref = train.train_test_split(test_size=0.3, shuffle=True, seed=42)
    assert te.texts == [
        f"{a} {b}" for a, b in zip(ref["test"]["question_1"], ref["test"]["question_2"], strict=True)
    ]
    assert te.labels.tolist() == ref["test"]["label"]
    assert tr.class_names == ["different", "similar"] and "train_test_split" in tr.source
    # The same id as the paper spelled it resolves to the same entry.
    assert load_text_dataset("medical_questions_pairs", "test").texts == te.texts


def test_class_count_comes_from_the_classlabel_feature(hub):
    store, _ = hub
    names = ["sadness", "joy", "love", "anger", "fear", "surprise"]
    feats = hf.Features({"text": hf.Value("string"), "label": hf.ClassLabel(names=names)})
    store["dair-ai/emotion"] = hf.DatasetDict(
        {
            "train": hf.Dataset.from_dict(
                {"text": [f"t{i}" for i in range(8)], "label": [0, 1, 2, 3, 4, 0, 1, 2]}, features=feats
            ),
            "validation": hf.Dataset.from_dict({"text": ["v0", "v1"], "label": [0, 1]}, features=feats),
            "test": hf.Dataset.from_dict({"text": ["s0", "s1", "s2"], "label": [1, 0, 1]}, features=feats),
        }
    )
    test = load_text_dataset("emotion", "test")
    assert test.n_classes == 6 and test.class_names == names  # 'surprise' occurs in no split at all
    assert test.texts == ["s0", "s1", "s2"] and test.labels.tolist() == [1, 0, 1]
    assert len(load_text_dataset("emotion", "validation")) == 2
    assert len(load_text_dataset("emotion", "all")) == 13
    with pytest.raises(
        PerceptAlignError, match=r"unknown split 'dev'.*\['train', 'validation', 'test', 'all'\]"
    ):
        load_text_dataset("emotion", "dev")


def test_sst2_test_is_validation_and_unlabelled_rows_are_dropped(hub):
    store, _ = hub
    feats = hf.Features(
        {
            "idx": hf.Value("int32"),
            "sentence": hf.Value("string"),
            "label": hf.ClassLabel(names=["negative", "positive"]),
        }
    )

    def split(prefix, labels):
        return hf.Dataset.from_dict(
            {
                "idx": list(range(len(labels))),
                "sentence": [f"{prefix}{i}" for i in range(len(labels))],
                "label": labels,
            },
            features=feats,
        )

    store["stanfordnlp/sst2"] = hf.DatasetDict(
        {
            "train": split("tr", [0, 1, 1, 0]),
            "validation": split("va", [1, 0, 1]),
            "test": split("te", [-1, -1]),
        }
    )
    test = load_text_dataset("sst2", "test")
    assert test.texts == ["va0", "va1", "va2"] and test.labels.tolist() == [1, 0, 1]
    assert "test := validation" in test.source
    with pytest.raises(PerceptAlignError, match=r"available splits: \['train', 'test', 'all'\]"):
        load_text_dataset("sst2", "validation")


def test_string_labels_use_the_sorted_union_of_all_splits(hub):
    store, _ = hub
    store["Bhuvaneshwari/intent_classification"] = hf.DatasetDict(
        {
            "train": hf.Dataset.from_dict(
                {
                    "text": ["play x", "book y", "play z"],
                    "intent": ["PlayMusic", "BookRestaurant", "PlayMusic"],
                }
            ),
            "test": hf.Dataset.from_dict(
                {"text": ["weather?", "book q"], "intent": ["GetWeather", "BookRestaurant"]}
            ),
        }
    )
    train = load_text_dataset("intent", "train")
    test = load_text_dataset("intent", "test")
    assert train.class_names == test.class_names == ["BookRestaurant", "GetWeather", "PlayMusic"]
    # Encoding each split on its own (the published bug) maps GetWeather → 1 in test, PlayMusic → 1 in train.
    assert test.labels.tolist() == [1, 0] and train.labels.tolist() == [2, 0, 2]


def test_integer_labels_take_classes_from_all_splits(hub):
    store, _ = hub
    store["PriyaPatel/Bias_identification"] = hf.DatasetDict(
        {
            "train": hf.Dataset.from_dict(
                {"context": [f"c{i}" for i in range(10)], "bias_type": list(range(10))}
            ),
            "test": hf.Dataset.from_dict({"context": ["x", "y"], "bias_type": [0, 3]}),
        }
    )
    test = load_text_dataset("bias", "test")
    assert test.n_classes == 10 and test.labels.tolist() == [0, 3]


def test_commonsense_text_format_answer_keys_and_splits(hub):
    store, _ = hub

    def split(keys):
        n = len(keys)
        return hf.Dataset.from_dict(
            {
                "id": [str(i) for i in range(n)],
                "question": [f"Where is {i}?" for i in range(n)],
                "question_concept": ["x"] * n,
                "choices": [
                    {"label": list("ABCDE"), "text": [f"p{i}{j}" for j in range(5)]} for i in range(n)
                ],
                "answerKey": keys,
            }
        )

    store["tau/commonsense_qa"] = hf.DatasetDict(
        {"train": split(["A", "E", "C"]), "validation": split(["B", "D"]), "test": split(["", ""])}
    )
    train = load_text_dataset("commonsense_qa", "train")
    assert train.texts[1] == "Where is 1? (0) p10 (1) p11 (2) p12 (3) p13 (4) p14"
    assert train.labels.tolist() == [0, 4, 2] and train.class_names == list("ABCDE")
    test = load_text_dataset("commonsense_qa", "test")
    assert test.labels.tolist() == [1, 3] and test.n_classes == 5


def test_clickbait_without_test_split_gets_a_disjoint_70_30_split(hub):
    store, _ = hub
    n = 50
    store["marksverdhei/clickbait_title_classification"] = hf.DatasetDict(
        {
            "train": hf.Dataset.from_dict(
                {"title": [f"title {i}" for i in range(n)], "clickbait": [i % 2 for i in range(n)]}
            )
        }
    )
    train = load_text_dataset("clickbait", "train")
    test = load_text_dataset("clickbait", "test")
    assert len(train) == 35 and len(test) == 15
    assert not set(train.texts) & set(test.texts) and set(train.texts) | set(test.texts) == {
        f"title {i}" for i in range(n)
    }
    assert train.class_names == ["0", "1"]
    sub = load_text_dataset("clickbait", "train", max_samples=10, seed=1)
    assert len(sub) == 10 and np.bincount(sub.labels).min() >= 4  # stratified


def test_generic_hub_id_and_column_overrides(hub):
    store, calls = hub
    store["someone/reviews"] = hf.DatasetDict(
        {
            "train": hf.Dataset.from_dict({"body": ["good", "bad", "fine"], "stars": ["5", "1", "3"]}),
            "test": hf.Dataset.from_dict({"body": ["meh"], "stars": ["3"]}),
        }
    )
    with pytest.raises(
        PerceptAlignError, match=r"no column\(s\) \['text', 'label'\]; available columns: \['body', 'stars'\]"
    ):
        load_text_dataset("someone/reviews")
    ds = load_text_dataset("someone/reviews", "train", text_column="body", label_column="stars")
    assert (
        ds.class_names == ["1", "3", "5"]
        and ds.labels.tolist() == [2, 0, 1]
        and ds.source == "hub:someone/reviews"
    )
    assert calls[-1] == "someone/reviews"


def test_regression_targets_are_rejected(hub):
    store, _ = hub
    store["someone/scores"] = hf.DatasetDict(
        {"train": hf.Dataset.from_dict({"text": ["a", "b"], "label": [0.5, 1.25]})}
    )
    with pytest.raises(PerceptAlignError, match="non-integer numbers"):
        load_text_dataset("someone/scores")


def test_unreachable_hub_names_the_offline_alternatives(hub):
    with pytest.raises(PerceptAlignError, match="unreachable") as err:
        load_text_dataset("imdb")
    assert all(name in str(err.value) for name in OFFLINE_SPECS)
    assert "ConnectionError" in str(err.value) and "stanfordnlp/imdb" in str(err.value)


def test_real_load_dataset_fails_fast_offline():
    # The real client with HF_DATASETS_OFFLINE=1 (tests/conftest.py): no network, a clear error.
    with pytest.raises(PerceptAlignError, match=r"Hugging Face hub.*vader-movie"):
        load_text_dataset("perceptalign-tests/no-such-dataset")

"""The results store: exact round trip, whole-cell atomic replacement, resume-safety and input errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.store import NO_LAYER, ResultsStore, slug


def _cell(model: str, dataset: str, method: str = "ntps", offset: float = 0.0) -> list[dict]:
    rows = [
        {
            "model": model,
            "dataset": dataset,
            "method": method,
            "metric": "ntps",
            "layer": layer,
            "config": f,
            "value": offset + 0.1 * layer + f,
            "settings": "s1",
            "model_fingerprint": "fp",
            "n_texts": 10,
        }
        for layer in range(3)
        for f in (0.25, 0.5)
    ]
    rows.append(
        {
            "model": model,
            "dataset": dataset,
            "method": method,
            "metric": "cell_seconds",
            "value": 1.5,
            "settings": "s1",
        }
    )
    return rows


def test_round_trip_is_exact_and_keeps_missing_config_as_nan(tmp_path):
    store = ResultsStore(tmp_path)
    rows = _cell("m/1", "d.csv") + _cell("m/1", "other", offset=1 / 3)
    assert store.add(rows) == len(rows)
    table = store.table()
    assert len(table) == len(rows)
    for row in rows:
        hit = table[
            (table["dataset"] == row["dataset"])
            & (table["metric"] == row["metric"])
            & (table["layer"] == row.get("layer", NO_LAYER))
        ]
        if "config" in row:
            hit = hit[np.isclose(hit["config"], row["config"])]
        else:
            assert hit["config"].isna().all()
        assert len(hit) == 1
        assert hit["value"].iloc[0] == row["value"]  # JSON keeps the shortest repr of a float: exact
    assert sorted(store.cells()) == [("m/1", "d.csv", "ntps"), ("m/1", "other", "ntps")]


def test_adding_a_cell_again_replaces_it_instead_of_duplicating(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(_cell("m", "d"))
    store.add(_cell("m", "d", offset=5.0)[:2])
    table = store.table()
    assert len(table) == 2 and table["value"].min() >= 5.0


def test_has_checks_cell_and_settings(tmp_path):
    store = ResultsStore(tmp_path)
    assert not store.has("m", "d", "ntps")
    store.add(_cell("m", "d"))
    assert store.has("m", "d", "ntps")
    assert store.has("m", "d", "ntps", settings="s1")
    assert not store.has("m", "d", "ntps", settings="other-settings")
    assert not store.has("m", "d", "probe")
    assert store.remove("m", "d", "ntps") and not store.has("m", "d", "ntps")


def test_leftovers_of_an_interrupted_write_are_not_part_of_the_table(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(_cell("m", "d"))
    path = store.cell_path("m", "d2", "ntps")
    path.parent.mkdir(parents=True, exist_ok=True)
    # What atomic_path leaves if the process dies mid-write: a hidden temporary beside the target.
    (path.parent / f".{path.name}.abc.tmp").write_text('{"model": "m", "dataset": "d2", "meth')
    assert not store.has("m", "d2", "ntps")
    assert set(store.table()["dataset"]) == {"d"}


def test_damaged_cell_is_reported_with_the_fix(tmp_path):
    store = ResultsStore(tmp_path)
    store.add(_cell("m", "d"))
    store.cell_path("m", "d", "ntps").write_text("not json\n")
    with pytest.raises(PerceptAlignError, match="delete it to recompute"):
        store.table()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"model": "m", "dataset": "d", "method": "ntps", "value": 1.0}, "lacks"),
        (
            {"model": "m", "dataset": "d", "method": "ntps", "metric": "x", "value": 1.0, "colour": 1},
            "unknown",
        ),
        ({"model": "m", "dataset": "d", "method": "ntps", "metric": "x", "value": 1.0, "layer": -3}, "layer"),
        ({"model": "", "dataset": "d", "method": "ntps", "metric": "x", "value": 1.0}, "non-empty"),
    ],
)
def test_bad_rows_are_refused(tmp_path, row, message):
    with pytest.raises(PerceptAlignError, match=message):
        ResultsStore(tmp_path).add([row])


def test_duplicate_keys_in_one_cell_are_refused(tmp_path):
    row = {"model": "m", "dataset": "d", "method": "ntps", "metric": "x", "layer": 1, "value": 1.0}
    with pytest.raises(PerceptAlignError, match="share the key"):
        ResultsStore(tmp_path).add([row, dict(row, value=2.0)])
    missing = {"model": "m", "dataset": "d", "method": "probe", "metric": "x", "value": 1.0}
    with pytest.raises(PerceptAlignError, match="share the key"):  # NaN configs are equal keys too
        ResultsStore(tmp_path).add([missing, dict(missing)])


def test_slugs_of_same_named_paths_differ():
    a, b = slug("/tmp/a/model"), slug("/tmp/b/model")
    assert a != b and a.startswith("model-") and b.startswith("model-")
    assert "/" not in slug("owner/name") and slug("owner/name") != slug("other/name")


def test_slugs_are_the_same_in_another_process():
    """A rerun (a new interpreter, another hash seed) must find the cells an earlier run wrote."""
    import subprocess
    import sys

    names = ["owner/name", "/tmp/a/model", "vader-movie"]
    code = f"from perceptalign.ntps.store import slug; print([slug(n) for n in {names!r}])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert other.stdout.strip() == str([slug(n) for n in names])


def test_empty_store_gives_empty_typed_table(tmp_path):
    table = ResultsStore(tmp_path).table()
    assert table.empty and list(table.columns)[:7] == [
        "model",
        "dataset",
        "method",
        "metric",
        "layer",
        "config",
        "value",
    ]

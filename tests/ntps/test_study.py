"""The study runner: grid order, skip and resume through the store, settings guard, failures; and a
miniature real study (2 tiny models × 2 tiny datasets) whose stored rows equal the per-cell job outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.jobs import study as study_mod
from perceptalign.ntps.jobs.study import StudyConfig, cell_dir, run_study
from perceptalign.ntps.store import ResultsStore

from ..conftest import make_sentences


class FakeRunners:
    """Deterministic stand-ins for the per-cell jobs, counting calls; optionally dying at one call."""

    def __init__(self, die_at: int | None = None, fail: set[tuple[str, str, str]] | None = None) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.die_at = die_at
        self.fail = fail or set()

    def make(self, measure: str):
        def run(config, model, dataset, status, on_batch):
            if self.die_at is not None and len(self.calls) == self.die_at:
                raise KeyboardInterrupt  # the process is killed inside this cell
            self.calls.append((model, dataset, measure))
            if (model, dataset, measure) in self.fail:
                raise PerceptAlignError("dataset too small")
            seed = abs(hash((model, dataset, measure))) % 1000
            return [
                {"metric": "score", "layer": layer, "config": 0.5, "value": seed + layer}
                for layer in range(2)
            ]

        return run

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(study_mod, "RUNNERS", {m: self.make(m) for m in study_mod.MEASURES})


def _config(tmp_path, **kw) -> StudyConfig:
    return StudyConfig(
        models=kw.pop("models", ["m1", "m2"]),
        datasets=kw.pop("datasets", ["a", "b"]),
        out=tmp_path / "study",
        **kw,
    )


def test_grid_runs_every_cell_once_in_declared_order(tmp_path, monkeypatch):
    fake = FakeRunners()
    fake.install(monkeypatch)
    result = run_study(_config(tmp_path))
    expected = [(m, d, s) for m in ("m1", "m2") for d in ("a", "b") for s in ("ntps", "probe", "peers")]
    assert fake.calls == expected and result.ran == expected and not result.skipped
    table = ResultsStore(tmp_path / "study").table()
    # 2 rows per cell + its cell_seconds row
    assert len(table) == 3 * len(expected)
    assert (tmp_path / "study" / "results.csv").is_file()


def test_rerun_skips_every_stored_cell(tmp_path, monkeypatch):
    FakeRunners().install(monkeypatch)
    run_study(_config(tmp_path))
    before = ResultsStore(tmp_path / "study").table()
    again = FakeRunners()
    again.install(monkeypatch)
    result = run_study(_config(tmp_path))
    assert again.calls == [] and len(result.skipped) == 12
    pd.testing.assert_frame_equal(ResultsStore(tmp_path / "study").table(), before)


def test_killed_study_leaves_a_consistent_store_and_resumes_where_it_stopped(tmp_path, monkeypatch):
    dying = FakeRunners(die_at=5)
    dying.install(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_study(_config(tmp_path))
    store = ResultsStore(tmp_path / "study")
    assert store.cells() == sorted((m, d, s) for m, d, s in dying.calls)  # exactly the finished cells
    resumed = FakeRunners()
    resumed.install(monkeypatch)
    result = run_study(_config(tmp_path))
    assert set(resumed.calls).isdisjoint(dying.calls) and len(resumed.calls) == 12 - 5
    assert len(result.skipped) == 5
    full = FakeRunners()
    full.install(monkeypatch)
    run_study(_config(tmp_path / "uninterrupted"))
    keys = ["model", "dataset", "method", "metric", "layer"]

    def numbers(table: pd.DataFrame) -> pd.DataFrame:  # wall times differ between runs, numbers must not
        table = table[table["metric"] != "cell_seconds"]
        return table.sort_values(keys)[[*keys, "value"]].reset_index(drop=True)

    pd.testing.assert_frame_equal(
        numbers(store.table()), numbers(ResultsStore(tmp_path / "uninterrupted" / "study").table())
    )


def test_grid_may_grow_but_settings_may_not_change(tmp_path, monkeypatch):
    FakeRunners().install(monkeypatch)
    run_study(_config(tmp_path, models=["m1"], measures=["ntps"]))
    grown = FakeRunners()
    grown.install(monkeypatch)
    run_study(_config(tmp_path, models=["m1", "m2"], measures=["ntps", "probe"]))
    assert ("m1", "a", "ntps") not in grown.calls and ("m1", "a", "probe") in grown.calls
    stored = json.loads((tmp_path / "study" / "study.json").read_text())
    assert stored["models"] == ["m1", "m2"] and stored["measures"] == ["ntps", "probe"]
    with pytest.raises(PerceptAlignError, match="max_samples: stored None, now 50"):
        run_study(_config(tmp_path, max_samples=50))


def test_lora_settings_do_not_invalidate_other_measures():
    a = StudyConfig(models=["m"], datasets=["d"], out=".", lora_steps=10)
    b = StudyConfig(models=["m"], datasets=["d"], out=".", lora_steps=20)
    assert a.digest("ntps") == b.digest("ntps") and a.digest("lora") != b.digest("lora")
    c = StudyConfig(models=["m"], datasets=["d"], out=".", max_samples=10)
    assert a.digest("ntps") != c.digest("ntps")


def test_failed_cells_are_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    fake = FakeRunners(fail={("m1", "a", "probe")})
    fake.install(monkeypatch)
    result = run_study(_config(tmp_path))
    assert [f[:3] for f in result.failed] == [("m1", "a", "probe")] and len(result.ran) == 11
    assert json.loads((tmp_path / "study" / "failures.json").read_text())[0]["error"] == "dataset too small"
    with pytest.raises(PerceptAlignError, match="too small"):
        run_study(_config(tmp_path, keep_going=False))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"models": []}, "`models`"),
        ({"datasets": ["a", "a"]}, "twice"),
        ({"measures": ["ntps", "finetune"]}, "`measure`"),
        ({"fractions": [0.0]}, "`fractions`"),
        ({"peer_metrics": ["nope"]}, "unknown peer metrics"),
    ],
)
def test_bad_configuration_is_refused_before_anything_runs(tmp_path, kw, message):
    with pytest.raises(PerceptAlignError, match=message):
        run_study(_config(tmp_path, **kw))
    assert not (tmp_path / "study" / "study.json").exists()


# --------------------------------------------------------------------------------------------------
# miniature real study


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("study-data")
    paths = []
    for i, n in enumerate((90, 110)):
        path = root / f"toy{i}.csv"
        pd.DataFrame(make_sentences(n, seed=10 + i), columns=["text", "label"]).to_csv(path, index=False)
        paths.append(str(path))
    return paths


def test_miniature_study_end_to_end_stores_exactly_the_job_outputs(
    tiny_llama, tiny_gpt2_left, two_datasets, tmp_path
):
    config = StudyConfig(
        models=[str(tiny_llama), str(tiny_gpt2_left)],
        datasets=two_datasets,
        out=tmp_path,
        fractions=[0.5, 1.0],
        max_length=64,
        peer_metrics=["logme", "h_score", "nce", "leep", "fisher_ratio"],
    )
    result = run_study(config)
    assert not result.failed and len(result.ran) == 12
    table = ResultsStore(tmp_path).table()
    for model in config.models:
        for dataset in config.datasets:
            cell = cell_dir(tmp_path, model, dataset)
            rows = table[(table["model"] == model) & (table["dataset"] == dataset)]
            ntps = json.loads((cell / "ntps.json").read_text())
            for i, layer in enumerate(ntps["layers"]):
                for j, f in enumerate(ntps["fractions"]):
                    hit = rows[
                        (rows["method"] == "ntps")
                        & (rows["metric"] == "ntps")
                        & (rows["layer"] == layer)
                        & np.isclose(rows["config"], f)
                    ]
                    assert hit["value"].tolist() == [ntps["ntps"][i][j]]
            probe = pd.read_csv(cell / "probe.csv")
            stored = rows[(rows["method"] == "probe") & (rows["metric"] == "accuracy")].sort_values("layer")
            np.testing.assert_allclose(stored["value"], probe.sort_values("layer")["accuracy"], rtol=1e-12)
            peers = json.loads((cell / "peers.json").read_text())
            last = peers["rows"][-1]
            for metric in ("logme", "leep", "nce"):
                hit = rows[
                    (rows["method"] == "peers")
                    & (rows["metric"] == metric)
                    & (rows["layer"] == last["layer"])
                ]
                assert hit["value"].tolist() == [last[metric]]
            # one data hash for every measure of the cell: they saw the same texts
            assert rows.loc[rows["metric"] != "cell_seconds", "data_sha256"].nunique() == 1
    again = run_study(config)
    assert not again.ran and len(again.skipped) == 12


def test_lora_cell_stores_the_gain_and_ntps_before_after(tiny_llama, tmp_path):
    import pandas as pd

    from tests.conftest import make_sentences

    data = pd.DataFrame(make_sentences(120, seed=5), columns=["text", "label"])
    data["split"] = ["test" if i % 4 == 0 else "train" for i in range(len(data))]
    toy_csv = tmp_path / "split.csv"  # with a test split, LoRA trains on exactly the texts `ntps` read
    data.to_csv(toy_csv, index=False)
    config = StudyConfig(
        models=[str(tiny_llama)],
        datasets=[str(toy_csv)],
        out=tmp_path,
        measures=["ntps", "lora"],  # the lora cell reuses the ntps cell's base-model statistics
        layers=[0, -1],
        fractions=[0.5, 1.0],
        max_length=64,
        lora_steps=3,
        lora_batch_size=4,
        lora_lr=1e-3,
        lora_r=4,
        lora_alpha=4.0,
    )
    result = run_study(config)
    assert not result.failed, result.failed
    saved = json.loads((cell_dir(tmp_path, str(tiny_llama), str(toy_csv)) / "lora" / "lora.json").read_text())
    table = ResultsStore(tmp_path).table()
    assert table.loc[table["metric"] == "gain", "value"].item() == saved["gain"]
    assert saved["ntps_before_reused_cache"]
    # Provenance comes from the statistics the job used (a hash of the training texts, never missing).
    assert table["data_sha256"].notna().all() and table["data_sha256"].nunique() == 1
    for when in ("before", "after"):
        block = saved[f"ntps_{when}"]
        for i, layer in enumerate(block["layers"]):
            for j, f in enumerate(block["fractions"]):
                hit = table[
                    (table["metric"] == f"ntps_{when}_lora")
                    & (table["layer"] == layer)
                    & np.isclose(table["config"], f)
                ]
                assert hit["value"].tolist() == [block["ntps"][i][j]]

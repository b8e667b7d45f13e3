"""Issue #13, no silent wrong results: every bad input to `perceptalign rtify …` ends in one clear line.

Each case runs the real CLI (``perceptalign.cli.app``) and must stop with exit code 2 and a message that
names the problem, before any heavy work (no GRU training, no long simulation). Where a bad input has
a correct reading (milliseconds with ``--rt-unit ms``, a tab-separated ``.csv``), the library test
below checks that it loads to the same trials as the clean file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import perceptalign.io as perceptalign_io
import perceptalign.rtify.simulate as simulate_module
from perceptalign.cli import app
from perceptalign.io import PerceptAlignError, ensure_output_dir
from perceptalign.rtify.experiments.rdm import check_split_tables
from perceptalign.rtify.simulate import simulate_coherences, simulation_cost
from perceptalign.rtify.trials import check_coherences, load_rt_dataset, split_trials

runner = CliRunner()
COHERENCES = (6.4, 51.2)
TINY_FIT = ["--steps", "2", "--gru-steps", "2", "--hidden-size", "4", "--trials", "4", "--eval-trials", "4"]


def _trials(
    rt_scale: float = 1.0, *, coherences: tuple[float, ...] = COHERENCES, n: int = 12
) -> pd.DataFrame:
    """A clean trials table (condition, rt_s, correct, split) with RTs in seconds × ``rt_scale``."""
    rng = np.random.default_rng(0)
    rows = []
    for split in ("train", "test"):
        for coh in coherences:
            rows.append(
                pd.DataFrame(
                    {
                        "split": split,
                        "condition": coh,
                        "rt_s": np.round(0.35 + rng.gamma(2.0, 0.15, n), 4) * rt_scale,
                        "correct": rng.random(n) < 0.8,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def _write(path: Path, frame: pd.DataFrame, sep: str = ",") -> Path:
    frame.to_csv(path, index=False, sep=sep)
    return path


# Each file maker gets the folder and returns the path given to --data (or a path used elsewhere).
FileMaker = Callable[[Path], Path]


def _bytes(name: str, data: bytes) -> FileMaker:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def _table(name: str, frame_fn: Callable[[], pd.DataFrame], sep: str = ",") -> FileMaker:
    return lambda folder: _write(folder / name, frame_fn(), sep)


def _long_rt() -> pd.DataFrame:
    frame = _trials()
    frame.loc[3, "rt_s"] = 12.5  # a training trial far beyond the 2.5 s the fit can see
    return frame


def _split_typo() -> pd.DataFrame:
    frame = _trials()
    frame.loc[0, "split"] = "Test"  # would be silently skipped by selecting 'train' and 'test' rows
    frame.loc[5, "split"] = "val"
    return frame


def _labelled_test_condition() -> pd.DataFrame:
    frame = _trials()
    catch = frame[frame["split"] == "test"].head(3).assign(condition="catch")
    return pd.concat([frame, catch], ignore_index=True)


def _missing_test_condition() -> pd.DataFrame:
    frame = _trials()
    return frame[~((frame["split"] == "test") & (frame["condition"] == 51.2))]


def _coherence_150() -> pd.DataFrame:
    return _trials(coherences=(6.4, 150.0))


def _folder(folder: Path) -> Path:
    path = folder / "data.csv"
    path.mkdir()
    return path


def _fit_dir(text: str) -> FileMaker:
    """A fit folder (its path is {data}) whose fit.json holds ``text``."""

    def make(folder: Path) -> Path:
        path = folder / "fit"
        path.mkdir()
        (path / "fit.json").write_text(text)
        return path

    return make


_ROW = {
    "condition": 6.4,
    "accuracy_human": 0.8,
    "median_rt_correct_human": 0.6,
    "accuracy_model": 0.7,
    "median_rt_correct_model": 0.5,
    "wasserstein": 0.1,
}
VALID_FIT = json.dumps({"model": "rtify-human", "rtify": {"per_condition": [_ROW]}, "baselines": {}})
GOOD = _table("good.csv", _trials)
MS = _table("ms.csv", lambda: _trials(1000.0))
ITEM_RTS_MS = _table(
    "item_rts.csv", lambda: pd.DataFrame({"image_id": ["test-00001", "test-00002"], "rt_s": [650, 720]})
)

# (case id, file maker for --data or None, extra CLI args ({data}/{out}/{file} are filled in),
#  expected exit code, fragment of the expected message)
CASES = [
    # 1. trial files that pandas would misread or turn into a traceback
    (
        "empty-file",
        _bytes("empty.csv", b""),
        ["fit"],
        2,
        "is empty: it needs a header row and at least one row",
    ),
    (
        "latin1-file",
        _bytes("latin1.csv", "split,condition,rt_s,correct,note\ntrain,6.4,0.5,1,café\n".encode("latin-1")),
        ["fit"],
        2,
        "is not UTF-8: the first invalid byte is at byte 53 (line 2",
    ),
    (
        "ragged-row",
        _bytes("ragged.csv", b"split,condition,rt_s,correct\ntrain,6.4,0.5,1\ntest,6.4,0.6,1,extra\n"),
        ["fit"],
        2,
        "line 3 has 5 fields but the header has 4",
    ),
    (
        "extra-field-first-row",  # pandas would silently make the first column the index
        _bytes("shifted.csv", b"split,condition,rt_s,correct\ntrain,6.4,0.5,1,x\n"),
        ["fit"],
        2,
        "line 2 has 5 fields but the header has 4",
    ),
    ("header-only", _bytes("header.csv", b"split,condition,rt_s,correct\n"), ["fit"], 2, "but no data rows"),
    ("folder-as-data", _folder, ["fit"], 2, "is a folder; give the path of a table file"),
    (
        "excel-file",
        _bytes("data.xlsx", b"PK\x03\x04"),
        ["fit"],
        2,
        "cannot read a table from a file with '.xlsx'",
    ),
    (
        "wrong-columns",
        _bytes("cols.csv", b"a,b\n1,2\n"),
        ["fit"],
        2,
        "not a trials table (columns ['a', 'b'])",
    ),
    (
        "missing-correct-column",
        _bytes("nocorrect.csv", b"split,condition,rt_s\ntrain,6.4,0.5\n"),
        ["fit"],
        2,
        "It lacks 'correct'",
    ),
    (
        "split-other-than-train-test",
        _table("splits.csv", _split_typo),
        ["fit"],
        2,
        "column 'split' must hold only 'train' or 'test' (exactly, lower case); 2 row(s) have 'Test', 'val'",
    ),
    (
        "split-empty-cell",
        _bytes("nosplit.csv", b"split,condition,rt_s,correct\ntrain,6.4,0.5,1\n,6.4,0.6,0\ntest,6.4,0.7,1\n"),
        ["fit"],
        2,
        "1 row(s) have (empty)",
    ),
    # 2. RT units
    ("ms-as-seconds", MS, ["fit"], 2, "reaction times look like milliseconds, not seconds (median"),
    ("ms-hint-names-flag", MS, ["fit"], 2, "--rt-unit ms"),
    ("seconds-as-ms", GOOD, ["fit", "--rt-unit", "ms"], 2, "the values look like seconds already"),
    ("bad-rt-unit", GOOD, ["fit", "--rt-unit", "min"], 2, "--rt-unit must be s or ms, got 'min'"),
    ("registered-in-ms", None, ["fit", "--data", "rdm-human", "--rt-unit", "ms"], 2, "drop --rt-unit ms"),
    # 3. RTs beyond the window the model simulates: fit-ww refuses them (`fit` counts them, see
    #    test_fit_any_csv.py)
    ("rt-beyond-window-ww", _table("long.csv", _long_rt), ["fit-ww"], 2, "(longest 12.5 s)"),
    # 4. one coherence check everywhere
    (
        "fit-coherence-150",
        _table("coh.csv", _coherence_150),
        ["fit"],
        2,
        "between 0 and 100 (e.g. 6.4 or 51.2); got 150",
    ),
    (
        "sim-coherence-150",
        None,
        ["simulate-ww", "--coherences", "150"],
        2,
        "--coherences must be finite percentages",
    ),
    (
        "sim-coherence-nan",
        None,
        ["simulate-ww", "--coherences", "nan"],
        2,
        "between 0 and 100 (e.g. 6.4 or 51.2); got nan.",
    ),
    # 5. a test split without a training condition: named condition, file and fix, no Python argument
    (
        "test-split-missing-condition",
        _table("split.csv", _missing_test_condition),
        ["fit"],
        2,
        "split.csv: the test split has no trials for coherence(s) [51.2] of the train split",
    ),
    # ... and a labelled test-only condition, which no method of `fit` can take as input
    (
        "test-only-labelled-condition",
        _table("label.csv", _labelled_test_condition),
        ["fit"],
        2,
        "label.csv: column 'condition' must hold motion coherences in % (numbers), but has labels (test "
        "split: ['catch'])",
    ),
    # 6. long simulations are refused with an estimate; bad steps before any work
    (
        "sim-too-large",
        None,
        ["simulate-ww", "--trials", "10000000"],
        2,
        "7 coherences × 10000000 trials × 2000 steps",
    ),
    ("sim-too-large-fix", None, ["simulate-ww", "--trials", "10000000"], 2, "pass --yes to run it anyway"),
    ("sim-dt-zero", None, ["simulate-ww", "--dt", "0"], 2, "--dt must be in (0, 50] ms, got 0"),
    ("sim-dt-nan", None, ["simulate-ww", "--dt", "nan"], 2, "--dt must be in (0, 50] ms, got nan"),
    (
        "sim-max-time-zero",
        None,
        ["simulate-ww", "--max-time", "0"],
        2,
        "--max-time must be a positive number",
    ),
    (
        "sim-max-time-below-dt",
        None,
        ["simulate-ww", "--max-time", "0.005", "--dt", "10"],
        2,
        "shorter than one Euler step",
    ),
    ("fit-ww-dt", GOOD, ["fit-ww", "--dt", "60"], 2, "--dt must be in (0, 50] ms, got 60"),
    (
        "fit-ww-fine-dt",
        GOOD,
        ["fit-ww", "--fine-dt", "-1"],
        2,
        "--fine-dt must be in (0, 50] ms or 0 to skip",
    ),
    # 7. output folders are checked before the work
    ("sim-out-is-file", None, ["simulate-ww", "--out", "{file}"], 2, "is an existing file; choose a folder"),
    ("fit-out-is-file", GOOD, ["fit", "--out", "{file}"], 2, "is an existing file; choose a folder"),
    # ... which also proves that the millisecond file loads with --rt-unit ms (the out check comes after)
    ("ms-with-rt-unit-loads", MS, ["fit", "--rt-unit", "ms", "--out", "{file}"], 2, "is an existing file"),
    ("fit-ww-out-under-file", GOOD, ["fit-ww", "--out", "{file}/sub"], 2, "which is a file; choose a folder"),
    ("compare-no-fit", None, ["compare", "{out}"], 2, "no fit.json found"),
    ("compare-fit-not-json", _fit_dir("{not json"), ["compare", "{data}"], 2, "cannot be read as JSON"),
    (
        "compare-fit-incomplete",
        _fit_dir('{"model": "m", "rtify": {}}'),
        ["compare", "{data}"],
        2,
        "is incomplete",
    ),
    (
        "compare-out-is-folder",
        _fit_dir(VALID_FIT),
        ["compare", "{data}", "--out", "{data}"],
        2,
        "is a folder; give the path of a Markdown file",
    ),
    (
        "images-rt-table-ms",
        ITEM_RTS_MS,
        ["images", "--rt-table", "{data}"],
        2,
        "RT table item_rts.csv: reaction times look like milliseconds",
    ),
    ("images-rt-table-columns", MS, ["images", "--rt-table", "{data}"], 2, "lacks column(s) ['image_id']"),
    (
        "images-rt-table-latin1",
        _bytes("rts.csv", b"image_id,rt_s\ntest-\xe9,0.5\n"),
        ["images", "--rt-table", "{data}"],
        2,
        "is not UTF-8",
    ),
    (
        "images-rt-unit-without-table",
        None,
        ["images", "--rt-unit", "ms"],
        2,
        "--rt-unit applies to --rt-table",
    ),
    ("pixel-rdm-no-backbone", GOOD, ["pixel-rdm", "--backbone", "{out}"], 2, "no outputs.safetensors"),
]


@pytest.mark.parametrize(
    ("case", "make_file", "args", "exit_code", "fragment"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_ends_in_one_clear_error(
    case: str,
    make_file: FileMaker | None,
    args: list[str],
    exit_code: int,
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PERCEPTALIGN_CACHE", str(tmp_path / "cache"))
    data = make_file(tmp_path) if make_file is not None else None
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder\n")
    out = tmp_path / "out"
    values = {"{data}": str(data), "{out}": str(out), "{file}": str(a_file)}
    filled = []
    for arg in args:
        for key, value in values.items():
            arg = arg.replace(key, value)
        filled.append(arg)
    command = ["rtify", *filled]
    if data is not None and "--data" not in filled and command[1] in ("fit", "fit-ww", "pixel-rdm"):
        command += ["--data", str(data)]
    if "--out" not in filled and "-o" not in filled and command[1] != "compare":
        command += ["--out", str(out)]
    if command[1] == "fit":
        command += [*TINY_FIT, "--no-baselines", "--cache", str(tmp_path / "gru")]
    if command[1] == "simulate-ww" and "--trials" not in filled:
        command += ["--trials", "5", "--examples", "0"]
    result = runner.invoke(app, command)
    text = " ".join(result.output.split())
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # an exit, not a traceback
    assert "Traceback" not in result.output
    assert fragment in text, text
    assert text.startswith("error:") and text.count("error:") == 1, text  # one error line, nothing else
    for python_syntax in ("()", "required_conditions", "max_samples", "_column="):
        assert python_syntax not in text, text
    assert not (out / "fit.json").exists() and not (out / "simulation.json").exists()


# ------------------------------------------------------------------ the correct readings of fixable input


def test_milliseconds_with_rt_unit_give_the_same_trials_as_seconds(tmp_path: Path) -> None:
    seconds = load_rt_dataset(str(_write(tmp_path / "s.csv", _trials())))
    ms = load_rt_dataset(str(_write(tmp_path / "ms.csv", _trials(1000.0))), rt_unit="ms")
    pd.testing.assert_frame_equal(ms, seconds, check_exact=False, rtol=1e-9)
    signed = _trials(1000.0).rename(columns={"condition": "coherence_pct"})
    rt, correct = signed.pop("rt_s"), signed.pop("correct")
    signed["signed_rt_s"] = np.where(correct, rt, -rt)
    from_signed = load_rt_dataset(str(_write(tmp_path / "signed.csv", signed)), rt_unit="ms")
    np.testing.assert_allclose(from_signed["rt_s"], seconds["rt_s"], rtol=1e-9)
    assert from_signed["correct"].tolist() == seconds["correct"].tolist()
    with pytest.raises(PerceptAlignError, match="look like milliseconds"):
        load_rt_dataset(str(tmp_path / "ms.csv"))


@pytest.mark.parametrize("sep", ["\t", ";"])
def test_tab_or_semicolon_separated_csv_reads_like_the_comma_file(tmp_path: Path, sep: str) -> None:
    comma = load_rt_dataset(str(_write(tmp_path / "comma.csv", _trials())))
    other = load_rt_dataset(str(_write(tmp_path / "other.csv", _trials(), sep=sep)))
    pd.testing.assert_frame_equal(other, comma)


def test_split_check_names_the_source_and_the_missing_condition(tmp_path: Path) -> None:
    table = load_rt_dataset(str(_write(tmp_path / "s.csv", _missing_test_condition())))
    train, test = split_trials(table, "train"), split_trials(table, "test")
    with pytest.raises(
        PerceptAlignError, match=r"s\.csv: the test split has no trials for coherence\(s\) \[51\.2\]"
    ):
        check_split_tables(train, test, source="s.csv")
    assert check_split_tables(train, train) == [6.4, 51.2]


@pytest.mark.parametrize(
    ("values", "signed", "message"),
    [
        ([150.0], False, "got 150"),
        ([float("nan")], False, "got nan"),
        ([-3.2], False, "got -3.2"),
        (["fast"], False, "got 'fast'"),
        ([-150.0], True, "between -100 and 100"),
    ],
)
def test_check_coherences_rejects(values: list[object], signed: bool, message: str) -> None:
    with pytest.raises(PerceptAlignError, match=message):
        check_coherences(values, signed=signed)


def test_check_coherences_accepts_the_range() -> None:
    assert check_coherences([0, "6.4", 100]) == [0.0, 6.4, 100.0]
    assert check_coherences([-51.2, 51.2], signed=True) == [-51.2, 51.2]


def test_simulation_reports_progress_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate_module, "_CHUNK", 40)
    calls: list[tuple[int, int, float]] = []
    simulate_coherences(
        [6.4, 51.2], 100, dt_ms=20.0, max_time_s=0.5, n_examples=0, progress=lambda *a: calls.append(a)
    )
    assert calls == [
        (40, 200, 6.4),
        (80, 200, 6.4),
        (100, 200, 6.4),
        (140, 200, 51.2),
        (180, 200, 51.2),
        (200, 200, 51.2),
    ]


def test_simulation_cost_estimate() -> None:
    cost = simulation_cost(7, 10_000_000, dt_ms=1.0, max_time_s=2.0)
    assert cost.n_steps == 2000 and cost.trial_steps == pytest.approx(1.4e11) and cost.too_large
    assert "1.4e+11 trial-steps" in cost.describe() and " h " in cost.describe()
    assert not simulation_cost(7, 4000, dt_ms=1.0, max_time_s=2.0).too_large  # the README example
    with pytest.raises(PerceptAlignError, match="dt_ms"):
        simulation_cost(7, 10, dt_ms=0.0)


def test_large_simulation_runs_with_yes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(simulate_module, "MAX_TRIAL_STEPS", 10.0)  # every run counts as large
    base = ["rtify", "simulate-ww", "-c", "51.2", "-n", "5", "--dt", "20", "--examples", "0"]
    refused = runner.invoke(app, [*base, "-o", str(tmp_path / "a")])
    assert refused.exit_code == 2 and "--yes" in refused.output
    assert not (tmp_path / "a" / "simulation.json").exists()
    ran = runner.invoke(app, [*base, "--yes", "-o", str(tmp_path / "b")])
    assert ran.exit_code == 0, ran.output
    assert (tmp_path / "b" / "simulation.json").is_file()


# ------------------------------------------------------------------ ensure_output_dir


def test_ensure_output_dir_creates_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = ensure_output_dir(tmp_path / "new" / "deeper")
    assert made.is_dir() and list(made.iterdir()) == []  # the write probe is removed
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(PerceptAlignError, match=r"`out` .*f is an existing file; choose a folder"):
        ensure_output_dir(a_file)
    with pytest.raises(PerceptAlignError, match="which is a file; choose a folder"):
        ensure_output_dir(a_file / "sub")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(perceptalign_io.tempfile, "mkstemp", denied)
    with pytest.raises(
        PerceptAlignError, match=r"cannot write to .*ro \(permission denied\); choose another `out`"
    ):
        ensure_output_dir(tmp_path / "ro")


def test_unwritable_out_stops_the_cli_before_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(perceptalign_io.tempfile, "mkstemp", denied)
    result = runner.invoke(
        app, ["rtify", "simulate-ww", "-n", "5", "--examples", "0", "-o", str(tmp_path / "ro")]
    )
    assert result.exit_code == 2
    assert "(permission denied); choose another --out" in " ".join(result.output.split())


def test_item_rt_table_in_ms_reads_as_seconds_with_the_unit(tmp_path: Path) -> None:
    from perceptalign.rtify.experiments.natural import read_rt_table

    path = ITEM_RTS_MS(tmp_path)
    assert read_rt_table(path, rt_unit="ms").to_dict() == {"test-00001": 0.65, "test-00002": 0.72}
    with pytest.raises(PerceptAlignError, match="look like milliseconds"):
        read_rt_table(path)


def test_rt_window_edge_is_soft_but_bounded() -> None:
    from perceptalign.rtify.experiments.rdm import FitConfig, check_human_window

    table = _trials()
    table.loc[0, "rt_s"] = 2.6  # a motor delay past the 2.5 s window: models produce such RTs too
    check_human_window(table, FitConfig())
    table.loc[1, "rt_s"] = 2.8
    with pytest.raises(PerceptAlignError, match=r"1 of 48 trials .*above 2\.75 s \(longest 2\.8 s\)"):
        check_human_window(table, FitConfig())
    check_human_window(table, FitConfig(lo=-3.0, hi=3.0))  # a wider window accepts them

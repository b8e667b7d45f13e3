"""Bad or unusual input to the NTPS commands: each ends in a clear error (exit 2) or a correct result.

Two parts: a table of bad inputs (each row: how to build the input, the command line, the expected exit
code and a fragment of the expected message), and reruns into an existing ``--out`` (edited data,
other columns, another seed, a failed run, a damaged cache), which must be refused naming what differs,
or recompute to exactly what a fresh run gives — never return the old numbers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from perceptalign.cli import app
from perceptalign.io import PerceptAlignError, ensure_output_dir
from perceptalign.ntps.datasets import load_text_dataset
from tests.conftest import make_sentences

FAST = ["--max-length", "32", "--layers", "0,-1", "--fractions", "0.5"]


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    # The exception of a traceback is kept by CliRunner; a clear error exits through typer.Exit.
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback instead of a clear error: {result.exception!r}\n{result.output}")
    return result.exit_code, " ".join(result.output.split())


def _score(model: Path | str, data: Path | str, out: Path, *extra: str) -> tuple[int, str]:
    return _invoke(
        ["ntps", "score", "--model", str(model), "--dataset", str(data), "--out", str(out), *FAST, *extra]
    )


def _write_csv(path: Path, rows: list[tuple[str, object]], **columns: list[object]) -> Path:
    frame = pd.DataFrame(rows, columns=["text", "label"])
    for name, values in columns.items():
        frame[name] = values
    frame.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------------------------------
# builders of bad inputs: each returns (dataset, model, out) paths for one case


def _good_csv(tmp: Path) -> Path:
    return _write_csv(tmp / "good.csv", make_sentences(40, seed=3))


def _jsonl_dict_labels(tmp: Path) -> Path:
    path = tmp / "dict_labels.jsonl"
    rows = [
        {"text": text, "label": {"name": "pos" if y else "neg", "annotator": i % 3}}
        for i, (text, y) in enumerate(make_sentences(30, seed=4))
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _three_texts(tmp: Path) -> Path:
    return _write_csv(tmp / "three.csv", [("a good film", 1), ("a bad film", 0), ("so good", 1)])


def _id_labels(tmp: Path) -> Path:
    rows = make_sentences(40, seed=5)
    return _write_csv(tmp / "ids.csv", [(text, f"id{i}") for i, (text, _) in enumerate(rows)])


def _model_config_only(tmp: Path, tiny: Path) -> Path:
    folder = tmp / "config-only"
    folder.mkdir()
    shutil.copy(tiny / "config.json", folder / "config.json")
    return folder


def _model_without_tokenizer(tmp: Path, tiny: Path) -> Path:
    folder = tmp / "no-tokenizer"
    folder.mkdir()
    for file in tiny.iterdir():
        if "token" not in file.name and file.name != "special_tokens_map.json":
            shutil.copy(file, folder / file.name)
    return folder


Case = tuple[str, Callable[[Path, Path], tuple[str, str, str, list[str]]], int, str]


def _case(
    data: Callable[[Path], Path] | None = None,
    model: Callable[[Path, Path], Path | str] | None = None,
    out: Callable[[Path], Path] | None = None,
    extra: tuple[str, ...] = (),
) -> Callable[[Path, Path], tuple[str, str, str, list[str]]]:
    def build(tmp: Path, tiny: Path) -> tuple[str, str, str, list[str]]:
        return (
            str(data(tmp) if data else _good_csv(tmp)),
            str(model(tmp, tiny) if model else tiny),
            str(out(tmp) if out else tmp / "out"),
            list(extra),
        )

    return build


def _empty_file(tmp: Path) -> Path:
    path = tmp / "empty.csv"
    path.write_text("")
    return path


def _latin1_file(tmp: Path) -> Path:
    path = tmp / "latin1.csv"
    rows = "".join(f"{text} café,{y}\n" for text, y in make_sentences(30, seed=12))
    path.write_bytes(("text,label\n" + rows).encode("latin-1"))
    return path


def _ragged_file(tmp: Path) -> Path:
    path = tmp / "ragged.csv"
    rows = [f"{text},{y}" for text, y in make_sentences(30, seed=13)]
    rows[4] += ",extra"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def _existing_file(tmp: Path) -> Path:
    path = tmp / "taken"
    path.write_text("not a folder")
    return path


BAD_INPUTS: list[Case] = [
    ("out-is-a-file", _case(out=_existing_file), 2, "is an existing file; choose a folder"),
    ("missing-model-folder", _case(model=lambda tmp, _t: "./no-such-model-dir"), 2, "no such model folder"),
    ("model-config-only", _case(model=_model_config_only), 2, "has no weight files"),
    ("model-without-tokenizer", _case(model=_model_without_tokenizer), 2, "has no tokenizer"),
    ("jsonl-dict-labels", _case(data=_jsonl_dict_labels), 2, "labels must be single values"),
    ("empty-file", _case(data=_empty_file), 2, "is empty"),
    ("latin1-file", _case(data=_latin1_file), 2, "is not UTF-8"),
    ("ragged-row", _case(data=_ragged_file), 2, "has 3 fields but the header has 2"),
    ("three-text-csv", _case(data=_three_texts), 2, "has only 3 texts"),
    ("one-text-per-class", _case(data=_id_labels), 2, "is the label column an identifier?"),
    ("max-length-1", _case(extra=("--max-length", "1")), 2, "Invalid value for '--max-length'"),
    ("token-budget-0", _case(extra=("--token-budget", "0")), 2, "Invalid value for '--token-budget'"),
    ("negative-ridge", _case(extra=("--ridge", "-1")), 2, "Invalid value for '--ridge'"),
    ("k-zero", _case(extra=("--k", "0,4")), 2, "--k must be positive integers"),
    ("k-beyond-hidden-size", _case(extra=("--k", "4,100")), 2, "exceed the model's hidden size 32"),
]


@pytest.mark.parametrize(("name", "build", "code", "fragment"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_ends_in_a_clear_error(name, build, code, fragment, tiny_llama, tmp_path):
    data, model, out, extra = build(tmp_path, tiny_llama)
    exit_code, output = _score(model, data, Path(out), *extra)
    assert exit_code == code, output
    assert fragment in output, output
    # Nothing that looks like a result is left behind by a refused run.
    if Path(out).is_dir():
        assert not (Path(out) / "ntps.json").exists() and not (Path(out) / "statistics.safetensors").exists()


def test_option_errors_come_before_the_statistics(tiny_llama, tmp_path):
    """--k beyond the hidden size is refused once the model is known, before any batch is streamed."""
    out = tmp_path / "out"
    exit_code, output = _score(tiny_llama, _good_csv(tmp_path), out, "--k", "100")
    assert exit_code == 2 and "hidden size" in output
    assert not list(out.glob("*statistics*"))


def test_unwritable_output_folder_is_refused_before_any_work(monkeypatch, tmp_path):
    # Root ignores permission bits, so the failing write is simulated where the check makes it.
    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("perceptalign.io.tempfile.mkstemp", refuse)
    with pytest.raises(PerceptAlignError, match=r"cannot write to .*read-only \(permission denied\)"):
        ensure_output_dir(tmp_path / "read-only")


def test_tab_separated_csv_reads_like_the_tsv(tmp_path):
    rows = make_sentences(20, seed=14)
    frame = pd.DataFrame(rows, columns=["text", "label"])
    frame.to_csv(tmp_path / "tabs.csv", sep="\t", index=False)
    frame.to_csv(tmp_path / "tabs.tsv", sep="\t", index=False)
    as_csv, as_tsv = (
        load_text_dataset(str(tmp_path / "tabs.csv")),
        load_text_dataset(str(tmp_path / "tabs.tsv")),
    )
    assert as_csv.texts == as_tsv.texts == [t for t, _ in rows]
    assert as_csv.labels.tolist() == as_tsv.labels.tolist() == [y for _, y in rows]


def test_numeric_texts_read_the_same_from_csv_and_jsonl(tmp_path):
    rows = [(str(1000 + i), i % 2) for i in range(12)]
    csv = _write_csv(tmp_path / "numbers.csv", rows)
    jsonl = tmp_path / "numbers.jsonl"
    jsonl.write_text("".join(json.dumps({"text": int(t), "label": y}) + "\n" for t, y in rows))
    from_csv, from_jsonl = load_text_dataset(str(csv)), load_text_dataset(str(jsonl))
    assert from_csv.texts == from_jsonl.texts == [t for t, _ in rows]


# --------------------------------------------------------------------------------------------------
# reruns into an existing --out


def _results(out: Path) -> dict:
    return json.loads((out / "ntps.json").read_text())


def _assert_same_numbers(a: dict, b: dict) -> None:
    assert a["n_tokens"] == b["n_tokens"] and a["n_texts"] == b["n_texts"]
    # Same data, same batches, same code: equal to float64 rounding of the eigen-solves.
    for key in ("ntps", "ntps_orthonormal"):
        assert np.allclose(a[key], b[key], rtol=1e-9, atol=1e-12), key


def test_edited_data_is_refused_then_recomputed_to_a_fresh_result(tiny_llama, tmp_path):
    data = _write_csv(tmp_path / "reviews.csv", make_sentences(40, seed=6))
    out = tmp_path / "out"
    assert _score(tiny_llama, data, out)[0] == 0
    before = (out / "ntps.json").read_bytes()
    # Same file name, same classes, every text edited.
    _write_csv(data, [(f"{text} indeed", y) for text, y in make_sentences(40, seed=6)])
    exit_code, output = _score(tiny_llama, data, out)
    assert exit_code == 2
    assert "data_sha256" in output and "--overwrite" in output, output
    assert (out / "ntps.json").read_bytes() == before, "a refused run must not touch the results"
    assert _score(tiny_llama, data, out, "--overwrite")[0] == 0
    assert _score(tiny_llama, data, tmp_path / "fresh")[0] == 0
    _assert_same_numbers(_results(out), _results(tmp_path / "fresh"))
    assert _results(out)["n_tokens"] != json.loads(before)["n_tokens"]


def test_other_text_column_label_column_or_seed_is_refused_by_name(tiny_llama, tmp_path):
    rows = make_sentences(40, seed=7)
    other = make_sentences(40, seed=8)
    data = _write_csv(
        tmp_path / "two_columns.csv",
        rows,
        title=[t for t, _ in other],
        label2=[1 - y for _, y in rows],
    )
    out = tmp_path / "out"
    assert _score(tiny_llama, data, out)[0] == 0
    code, output = _score(tiny_llama, data, out, "--text-column", "title")
    assert code == 2 and "text_column: cached 'text', now 'title'" in output, output
    code, output = _score(tiny_llama, data, out, "--label-column", "label2")
    assert code == 2 and "label_column: cached 'label', now 'label2'" in output, output
    subset = tmp_path / "subset"
    assert _score(tiny_llama, data, subset, "--max-samples", "24", "--seed", "0")[0] == 0
    code, output = _score(tiny_llama, data, subset, "--max-samples", "24", "--seed", "1")
    assert code == 2 and "subset_seed: cached 0, now 1" in output, output
    # A rerun with the very same inputs reuses the cache and gives the same numbers.
    code, output = _score(tiny_llama, data, subset, "--max-samples", "24", "--seed", "0")
    assert code == 0 and "reusing statistics cache" in output


def test_a_failed_run_leaves_no_cache_and_the_fixed_data_then_runs(tiny_llama, tmp_path):
    words = [("good", 1), ("bad", 0)] * 10  # each text is one token: no next-token pair anywhere
    data = _write_csv(tmp_path / "short.csv", words)
    out = tmp_path / "out"
    code, output = _score(tiny_llama, data, out)
    assert code == 2 and "single token" in output, output
    assert not list(out.glob("*statistics*")) and not (out / "ntps.json").exists()
    _write_csv(data, make_sentences(20, seed=9))
    assert _score(tiny_llama, data, out)[0] == 0


def test_incomplete_cache_is_named_and_overwrite_recomputes_it(tiny_llama, tmp_path):
    data = _good_csv(tmp_path)
    out = tmp_path / "out"
    assert _score(tiny_llama, data, out)[0] == 0
    first = _results(out)
    (out / "statistics.json").unlink()
    code, output = _score(tiny_llama, data, out)
    assert code == 2 and "incomplete (statistics.json is missing)" in output and "--overwrite" in output
    assert _score(tiny_llama, data, out, "--overwrite")[0] == 0
    _assert_same_numbers(_results(out), first)

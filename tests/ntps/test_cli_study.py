"""CLI of `ntps peers | study | report | prescreen`: end to end on tiny inputs, errors without tracebacks."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import perceptalign.cli.ntps_study  # noqa: F401  (registers the commands until cli/__init__ imports it)
from perceptalign.cli import app

from .test_report import synthetic_study

runner = CliRunner()


def test_cli_study_runs_then_resumes(tiny_llama, toy_csv, tmp_path):
    args = [
        "ntps",
        "study",
        "--models",
        str(tiny_llama),
        "--datasets",
        str(toy_csv),
        "--out",
        str(tmp_path),
        "--measure",
        "ntps,probe",
        "--fractions",
        "0.5,1.0",
        "--max-length",
        "64",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 cells run, 0 already stored, 0 failed" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "0 cells run, 2 already stored" in second.output
    changed = runner.invoke(app, [*args, "--max-samples", "50"])
    assert changed.exit_code == 2 and "other settings" in changed.output and "Traceback" not in changed.output


def test_cli_report_and_prescreen_on_a_study(tmp_path):
    synthetic_study(tmp_path, n_datasets=5)
    report = runner.invoke(
        app,
        [
            "ntps",
            "report",
            str(tmp_path),
            "--permutations",
            "100",
            "--bootstrap",
            "100",
            "--no-figures",
        ],
    )
    assert report.exit_code == 0, report.output
    assert (tmp_path / "report.html").is_file() and "selection-aware" in report.output
    out = tmp_path / "pre"
    pre = runner.invoke(
        app,
        [
            "ntps",
            "prescreen",
            "--model",
            "mA",
            "--datasets",
            "data0,data1,data2",
            "--study",
            str(tmp_path),
            "--out",
            str(out),
        ],
    )
    assert pre.exit_code == 0, pre.output
    ranking = json.loads((out / "prescreen.json").read_text())["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2, 3] and "measured" in pre.output


def test_cli_peers_and_errors(tiny_llama, toy_csv, tmp_path):
    ok = runner.invoke(
        app,
        [
            "ntps",
            "peers",
            "--model",
            str(tiny_llama),
            "--dataset",
            str(toy_csv),
            "--out",
            str(tmp_path),
            "--metrics",
            "logme,leep",
            "--max-length",
            "64",
            "--layers",
            "0,-1",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "peers.csv").is_file()
    empty = runner.invoke(app, ["ntps", "report", str(tmp_path / "nothing")])
    assert empty.exit_code == 2 and "ntps study" in empty.output and "Traceback" not in empty.output
    bad = runner.invoke(
        app,
        [
            "ntps",
            "study",
            "--models",
            "m",
            "--datasets",
            "d",
            "--out",
            str(tmp_path / "s"),
            "--measure",
            "ntps,finetune",
        ],
    )
    assert bad.exit_code == 2 and "--measure" in bad.output

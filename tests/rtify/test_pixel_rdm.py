"""Pixel-RDM heads on cached backbone outputs (synthetic logits/states with a known structure), the
fit/eval split, the read-out initialisation, the comparison table, and both CLI commands end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import perceptalign.cli.rtify_fit
import perceptalign.cli.rtify_ww  # noqa: F401  (registers fit-ww / pixel-rdm on rtify_app)
from perceptalign.cli.rtify import rtify_app
from perceptalign.io import PerceptAlignError, read_json
from perceptalign.rtify.experiments.pixel.backbone_training import BackboneOutputs, save_backbone_outputs
from perceptalign.rtify.experiments.pixel.pixel_experiment import (
    PixelRDMConfig,
    backbone_sim,
    backbone_trials,
    build_readout_head,
    pixel_rdm_table,
    run_pixel_rdm,
    write_pixel_rdm_outputs,
)
from perceptalign.rtify.experiments.rdm import FitConfig, compare_fits
from perceptalign.rtify.experiments.rdm.wongwang_fit import WWFitConfig

COH = (6.4, 51.2)
FRAMES, HIDDEN, PER_CELL = 6, 5, 10
runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def synthetic_outputs(
    *, hidden: bool = True, coherences: tuple[float, ...] = (*COH, 99.9)
) -> BackboneOutputs:
    """Cache with a known read-out: states h ~ N(0, 1) except h[..., 0] = drift·direction + noise, and the
    frame logit l = a·h + c exactly (a, c fixed), ordered coherence → direction → trial like the real one."""
    gen = torch.Generator().manual_seed(0)
    a = torch.tensor([1.5, -0.3, 0.2, 0.0, 0.7])
    c = 0.1
    cohs, dirs, states = [], [], []
    for coh in coherences:
        for direction in (-1, 1):
            h = torch.randn(PER_CELL, FRAMES, HIDDEN, generator=gen)
            h[..., 0] += direction * coh / 20
            states.append(h)
            cohs.append(torch.full((PER_CELL,), coh / 100, dtype=torch.float32))
            dirs.append(torch.full((PER_CELL,), direction, dtype=torch.long))
    h = torch.cat(states)
    frame_logits = h @ a + c
    meta = {
        "format": "perceptalign-backbone-outputs-v1",
        "kind": "cnn-lstm" if hidden else "c3d",
        "backbone_sha256": "0" * 64,
        "frame_s": 2.0 / FRAMES,
        "seed": 0,
        "coherences": [x / 100 for x in coherences],
        "trials_per_condition": PER_CELL,
    }
    return BackboneOutputs(
        frame_logits=frame_logits,
        clip_logit=frame_logits[:, -1],
        coherence=torch.cat(cohs),
        direction=torch.cat(dirs),
        hidden=h if hidden else None,
        metadata=meta,
    )


def human_tables(seed: int = 0, n: int = 120) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = []
    for split in ("train", "test"):
        parts = []
        for c in COH:
            rt = 0.3 + rng.gamma(2.0, 0.2 if c < 10 else 0.12, n)
            correct = rng.random(n) < (0.65 if c < 10 else 0.95)
            parts.append(pd.DataFrame({"condition": c, "rt_s": rt, "correct": correct, "split": split}))
        out.append(pd.concat(parts, ignore_index=True))
    return out[0], out[1]


def test_split_is_disjoint_and_labels_map_to_populations() -> None:
    outputs = synthetic_outputs()
    fit = backbone_trials(outputs, list(COH), logit="frames", part="fit")
    ev = backbone_trials(outputs, list(COH), logit="frames", part="eval")
    # 99.9% has no human data and is dropped; each cell of 10 splits 5 / 5.
    assert len(fit) == len(ev) == len(COH) * 2 * PER_CELL // 2
    fit_rows = {tuple(r) for r in fit.drive.tolist()}
    assert fit_rows.isdisjoint({tuple(r) for r in ev.drive.tolist()})
    # Rightward trials (positive drift in h[..., 0], a_0 > 0) have positive mean logits and must be
    # answered by population 1 (choice 0).
    mean = fit.drive.mean(dim=1)
    assert bool((mean[fit.correct_choice == 0] > 0).float().mean() > 0.8)
    assert fit.frame_s == pytest.approx(2.0 / FRAMES)
    clip = backbone_trials(outputs, list(COH), logit="clip", part="eval")
    assert clip.drive.dim() == 1 and clip.frame_s is None


def test_readout_head_starts_as_the_backbone_logit() -> None:
    """Least squares recovers l = a·h + c exactly, so the evidence equals the logit and the choice
    read-out's softmax equals sigmoid(logit) (to float32 rounding: 1e-4)."""
    outputs = synthetic_outputs()
    sim = backbone_sim(outputs, list(COH), part="fit")
    head = build_readout_head(sim, 2.0 / FRAMES, FitConfig(), human=True)
    logit = sim.logits[..., 1] - sim.logits[..., 0]
    with torch.no_grad():
        ev = head.evidence(sim.hidden).squeeze(-1)
        probs = torch.softmax(head.classifier(sim.hidden), dim=-1)[..., 1]
    assert torch.allclose(ev, logit, atol=1e-4)
    assert torch.allclose(probs, torch.sigmoid(logit), atol=1e-4)
    no_states = backbone_sim(synthetic_outputs(hidden=False), list(COH), part="fit")
    assert no_states.hidden.shape[-1] == 1  # C3D: the per-frame logit is the 1-d state


def test_cache_errors() -> None:
    outputs = synthetic_outputs(coherences=(6.4, 99.9))
    with pytest.raises(PerceptAlignError, match=r"no trials at coherence\(s\) \[51.2\]"):
        backbone_trials(outputs, list(COH))
    with pytest.raises(PerceptAlignError, match="'frames' or 'clip'"):
        backbone_trials(synthetic_outputs(), list(COH), logit="mean")
    with pytest.raises(PerceptAlignError, match="lack the tensor"):
        backbone_trials(object(), list(COH))
    with pytest.raises(PerceptAlignError, match="unknown or no heads"):
        PixelRDMConfig(heads=("ddm",))


def test_run_all_heads_table_and_compare(tmp_path: Path) -> None:
    """Every head runs; the Markdown/CSV table's rows are the fit.json per-condition numbers, its human row
    is the human test accuracy, and `compare` reads the run's fit.json."""
    train, test = human_tables()
    config = PixelRDMConfig(
        ww=WWFitConfig(steps=2, n_train=20, n_eval=40, dt_ms=20.0, fine_dt_ms=None),
        head=FitConfig(head_steps=3, lr=0.03),
    )
    run = run_pixel_rdm(synthetic_outputs(), train, test, config)
    report = run.result.report
    assert report["methods"] == list(config.heads) and report["model"] == "ww-frames"
    paths = write_pixel_rdm_outputs(run, test, tmp_path)
    assert {"pixel_rdm.md", "pixel_rdm.csv", "ww-frames_trajectories.png"} <= {p.name for p in paths}
    table = pd.read_csv(tmp_path / "pixel_rdm.csv")
    assert len(table) == len(COH) * (1 + len(config.heads))
    for cond in COH:
        human = table[(table["coherence_pct"] == cond) & (table["method"] == "human")]
        expected = test[test["condition"] == cond]["correct"].mean()
        assert float(human["accuracy"].iloc[0]) == pytest.approx(expected)
    entry = report["baselines"]["rtify-head-human"]
    row = table[(table["method"] == "RTify head (human fit)") & (table["coherence_pct"] == COH[0])]
    assert float(row["wasserstein_s"].iloc[0]) == pytest.approx(entry["per_condition"][0]["wasserstein"])
    _, summary, _ = compare_fits([tmp_path])
    assert set(summary.index) == set(config.heads)
    assert len(pixel_rdm_table(report)) == len(table)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    train, test = human_tables()
    rows = pd.concat([train, test])
    csv = root / "rts.csv"
    pd.DataFrame(
        {
            "split": rows["split"],
            "coherence_pct": rows["condition"],
            "signed_rt_s": np.where(rows["correct"], rows["rt_s"], -rows["rt_s"]),
        }
    ).to_csv(csv, index=False)
    backbone = root / "backbone"
    backbone.mkdir()
    save_backbone_outputs(backbone / "outputs.safetensors", synthetic_outputs())
    return csv, backbone


TINY = ["--steps", "2", "--trials", "10", "--eval-trials", "20", "--dt", "25", "--fine-dt", "0"]


def test_cli_fit_ww_coherence_backbone_and_compare(cli_files: tuple[Path, Path], tmp_path: Path) -> None:
    csv, backbone = cli_files
    res = runner.invoke(rtify_app, ["fit-ww", "--out", str(tmp_path / "c"), "--data", str(csv), *TINY])
    assert res.exit_code == 0, res.output
    assert read_json(tmp_path / "c" / "fit.json")["model"] == "ww-coherence"
    args = ["--input", "backbone", "--backbone", str(backbone), "--logit", "clip"]
    res = runner.invoke(rtify_app, ["fit-ww", "--out", str(tmp_path / "b"), "--data", str(csv), *args, *TINY])
    assert res.exit_code == 0, res.output
    report = read_json(tmp_path / "b" / "fit.json")
    assert report["model"] == "ww-clip" and "w" in report["rtify"]["params"]
    res = runner.invoke(rtify_app, ["compare", str(tmp_path / "c"), str(tmp_path / "b")])
    assert res.exit_code == 0 and "ww-clip" in res.output and "ww-coherence" in res.output


def test_cli_pixel_rdm(cli_files: tuple[Path, Path], tmp_path: Path) -> None:
    csv, backbone = cli_files
    res = runner.invoke(
        rtify_app,
        ["pixel-rdm", "--backbone", str(backbone), "--out", str(tmp_path), "--data", str(csv), *TINY],
        env={"COLUMNS": "200"},  # wide enough that rich does not wrap the method names of the table
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pixel_rdm.md").is_file() and "RTify head self-penalised" in res.output


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["fit-ww", "--input", "pixels"], "--input must be one of"),
        (["fit-ww", "--input", "backbone"], "needs --backbone"),
        (["fit-ww", "--backbone", "x"], "only used with --input backbone"),
        (["fit-ww", "--dt", "90"], "--dt must be in (0, 50] ms"),
        (["pixel-rdm", "--backbone", "/nonexistent"], "no outputs.safetensors"),
        (["pixel-rdm", "--backbone", "BACKBONE", "--heads", "ddm"], "unknown or no heads"),
    ],
)
def test_cli_errors(cli_files: tuple[Path, Path], tmp_path: Path, args: list[str], match: str) -> None:
    csv, backbone = cli_files
    args = [str(backbone) if a == "BACKBONE" else a for a in args]
    res = runner.invoke(rtify_app, [*args, "--out", str(tmp_path), "--data", str(csv)])
    assert res.exit_code == 2
    assert match in " ".join(res.output.split())

"""Pixel-RDM heads on cached backbone outputs (synthetic logits/states with a known structure): the cached
trial sources and their disjoint fit/eval pools, the estimators on them (which pool each call draws from,
a planted head's RTs by hand, Wong–Wang against the fit function it wraps), the comparison table, and
both CLI commands end to end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import perceptalign.cli.rtify_fit
import perceptalign.cli.rtify_ww  # noqa: F401  (registers fit-ww / pixel-rdm on rtify_app)
from perceptalign.cli.rtify import rtify_app
from perceptalign.io import PerceptAlignError, read_json
from perceptalign.rtify import fit_quality
from perceptalign.rtify.estimators import (
    CachedDrive,
    CachedTrials,
    EntropyThresholdConfig,
    EntropyThresholdEstimator,
    RTifyHeadConfig,
    RTifyHeadEstimator,
    WongWangEstimator,
)
from perceptalign.rtify.experiments.pixel.backbone_training import BackboneOutputs, save_backbone_outputs
from perceptalign.rtify.experiments.pixel.pixel_experiment import (
    PixelRDMConfig,
    backbone_drive,
    backbone_network,
    pixel_rdm_table,
    run_pixel_rdm,
    write_pixel_rdm_outputs,
)
from perceptalign.rtify.experiments.rdm import compare_fits
from perceptalign.rtify.experiments.rdm.wongwang_fit import WWFitConfig, run_ww_fit, ww_parameters

COH = (6.4, 51.2)
FRAMES, HIDDEN, PER_CELL = 6, 5, 10
POOL = PER_CELL  # per coherence and pool: half of each of the two direction cells
runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def synthetic_outputs(
    *, hidden: bool = True, coherences: tuple[float, ...] = (*COH, 99.9), per_cell: int = PER_CELL
) -> BackboneOutputs:
    """Cache with a known read-out: states h ~ N(0, 1) except h[..., 0] = drift·direction + noise, and the
    frame logit l = a·h + c exactly (a, c fixed), ordered coherence → direction → trial like the real one."""
    gen = torch.Generator().manual_seed(0)
    a = torch.tensor([1.5, -0.3, 0.2, 0.0, 0.7])
    c = 0.1
    cohs, dirs, states = [], [], []
    for coh in coherences:
        for direction in (-1, 1):
            h = torch.randn(per_cell, FRAMES, HIDDEN, generator=gen)
            h[..., 0] += direction * coh / 20
            states.append(h)
            cohs.append(torch.full((per_cell,), coh / 100, dtype=torch.float32))
            dirs.append(torch.full((per_cell,), direction, dtype=torch.long))
    h = torch.cat(states)
    frame_logits = h @ a + c
    meta = {
        "format": "perceptalign-backbone-outputs-v1",
        "kind": "cnn-lstm" if hidden else "c3d",
        "backbone_sha256": "0" * 64,
        "frame_s": 2.0 / FRAMES,
        "seed": 0,
        "coherences": [x / 100 for x in coherences],
        "trials_per_condition": per_cell,
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


def _cell_position(outputs: BackboneOutputs) -> np.ndarray:
    """Each trial's index within its (coherence, direction) cell (the cache holds PER_CELL per cell)."""
    return np.arange(len(outputs)) % PER_CELL


# --------------------------------------------------------------------------------------------------------
# The cached trial sources.
# --------------------------------------------------------------------------------------------------------


def test_pools_are_disjoint_and_every_request_stays_in_its_pool() -> None:
    """Fit rows are the even trials of each cell, eval rows the odd ones, whatever the seed or size asked
    for; the returned states ARE the cache rows (trial identity, not a copy that happens to match)."""
    outputs = synthetic_outputs()
    network = backbone_network(outputs)
    position = _cell_position(outputs)
    human = [i for i, c in enumerate(outputs.coherence.tolist()) if round(c * 100, 3) in COH]
    fit_pool = set(network.rows(list(COH), POOL, seed=0, pool="fit").tolist())
    eval_pool = set(network.rows(list(COH), POOL, seed=0, pool="eval").tolist())
    assert fit_pool.isdisjoint(eval_pool) and fit_pool | eval_pool == set(human)
    assert all(position[i] % 2 == 0 for i in fit_pool) and all(position[i] % 2 == 1 for i in eval_pool)
    assert network.pool_size(list(COH), pool="fit") == network.pool_size(list(COH), pool="eval") == POOL
    for seed in range(5):
        for n in (1, 3, POOL):
            for pool, allowed in (("fit", fit_pool), ("eval", eval_pool)):
                rows = network.rows(list(COH), n, seed=seed, pool=pool)
                assert len(rows) == n * len(COH) and len(set(rows.tolist())) == len(rows)
                assert set(rows.tolist()) <= allowed
                sim = network(list(COH), n, seed=seed, pool=pool)
                assert torch.equal(sim.hidden, outputs.hidden[rows])  # type: ignore[index]
                assert torch.equal(sim.labels, (outputs.direction[rows] > 0).long())
                assert sim.conditions == list(COH) and sim.cond_idx.tolist() == [0] * n + [1] * n
    # Subsets depend on the seed; the whole pool does not (it is the pool, in cache order).
    assert not torch.equal(
        network.rows(list(COH), 3, seed=0, pool="fit"), network.rows(list(COH), 3, seed=1, pool="fit")
    )
    assert torch.equal(
        network.rows(list(COH), POOL, seed=0, pool="eval"), network.rows(list(COH), POOL, seed=9, pool="eval")
    )
    # WW's drive repeats pool trials (WW adds its own noise): 3·POOL trials use each pool trial 3 times.
    drive = backbone_drive(outputs, "frames")
    for pool, allowed in (("fit", fit_pool), ("eval", eval_pool)):
        rows = drive.rows(list(COH), 3 * POOL, pool=pool)
        counts = np.bincount(rows.numpy(), minlength=len(outputs))
        assert set(np.flatnonzero(counts).tolist()) == allowed and set(counts[sorted(allowed)]) == {3}
        trials = drive(list(COH), 3 * POOL, pool=pool)
        assert torch.equal(trials.drive, outputs.frame_logits[rows])
        assert torch.equal(trials.correct_choice, (outputs.direction[rows] < 0).long())
    clip = backbone_drive(outputs, "clip")(list(COH), 4, pool="eval")
    assert clip.drive.dim() == 1 and clip.frame_s is None
    assert drive(list(COH), 4).frame_s == pytest.approx(2.0 / FRAMES)


def test_cached_sources_refuse_what_they_cannot_honour() -> None:
    outputs = synthetic_outputs()
    network, drive = backbone_network(outputs), backbone_drive(outputs, "clip")
    with pytest.raises(PerceptAlignError, match=r"no cached trials at condition 12\.8"):
        network([6.4, 12.8], 2, seed=0, pool="eval")
    with pytest.raises(PerceptAlignError, match=r"no cached trials at condition 12\.8"):
        drive([12.8], 2, pool="fit")
    # More trials than the pool holds: refused (never topped up from the other pool, never repeated).
    with pytest.raises(PerceptAlignError, match=rf"`n_per_condition` = {POOL + 1} eval .* holds {POOL}"):
        network(list(COH), POOL + 1, seed=0, pool="eval")
    with pytest.raises(PerceptAlignError, match="`pool` must be 'fit' or 'eval'"):
        network(list(COH), 2, seed=0, pool="test")  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="`pool` must be 'fit' or 'eval'"):
        drive(list(COH), 2, pool="all")  # type: ignore[arg-type]
    with pytest.raises(PerceptAlignError, match="`n_per_condition` must be a positive integer"):
        network(list(COH), 0, seed=0)
    n = len(outputs)
    hidden, logits = torch.zeros(n, 3, 1), torch.zeros(n, 3, 2)
    labels, cond = torch.zeros(n, dtype=torch.long), [1.0] * n
    with pytest.raises(PerceptAlignError, match="`fit` must be a bool tensor"):
        CachedTrials(hidden, logits, labels, cond, torch.ones(n - 1, dtype=torch.bool), dt=0.1)
    with pytest.raises(PerceptAlignError, match="`condition` needs one value per cached trial"):
        CachedTrials(hidden, logits, labels, cond[:-1], torch.ones(n, dtype=torch.bool), dt=0.1)
    with pytest.raises(PerceptAlignError, match="`dt` must be"):
        CachedTrials(hidden, logits, labels, cond, torch.ones(n, dtype=torch.bool), dt=0)
    with pytest.raises(PerceptAlignError, match=r"the eval pool has no trials at condition 1\.0"):
        CachedTrials(hidden, logits, labels, cond, torch.ones(n, dtype=torch.bool), dt=0.1)(
            [1.0], 1, seed=0, pool="eval"
        )
    with pytest.raises(PerceptAlignError, match="needs `frame_s`"):
        CachedDrive(torch.zeros(n, 3), labels, cond, torch.ones(n, dtype=torch.bool))
    # The pixel builders: a human coherence missing from the cache, a cell too small to split, bad input.
    with pytest.raises(PerceptAlignError, match=r"no trials at coherence\(s\) \[51.2\]"):
        run_pixel_rdm(synthetic_outputs(coherences=(6.4, 99.9)), *human_tables(), PixelRDMConfig())
    with pytest.raises(PerceptAlignError, match="fewer than 2 cached trials"):
        backbone_network(synthetic_outputs(per_cell=1))
    with pytest.raises(PerceptAlignError, match="'frames' or 'clip'"):
        backbone_drive(outputs, "mean")
    with pytest.raises(PerceptAlignError, match="lack the tensor"):
        backbone_network(object())
    with pytest.raises(PerceptAlignError, match="unknown or no heads"):
        PixelRDMConfig(heads=("ddm",))


# --------------------------------------------------------------------------------------------------------
# Estimators on the cache.
# --------------------------------------------------------------------------------------------------------


class SpyTrials(CachedTrials):
    """A CachedTrials that records the pool and the cache rows of every request."""

    calls: list[tuple[str, set[int]]]

    def __call__(self, conditions, n_per_condition, *, seed, pool="fit"):  # type: ignore[no-untyped-def]
        self.calls.append((pool, set(self.rows(conditions, n_per_condition, seed=seed, pool=pool).tolist())))
        return super().__call__(conditions, n_per_condition, seed=seed, pool=pool)


class SpyDrive(CachedDrive):
    calls: list[tuple[str, set[int]]]

    def __call__(self, conditions, n_per_condition, *, pool="fit"):  # type: ignore[no-untyped-def]
        self.calls.append((pool, set(self.rows(conditions, n_per_condition, pool=pool).tolist())))
        return super().__call__(conditions, n_per_condition, pool=pool)


def _spy(source: Any, cls: type) -> Any:
    source.__class__ = cls
    source.calls = []
    return source


def test_estimators_fit_on_the_fit_pool_and_score_on_the_eval_pool() -> None:
    """Every trial an estimator's fit() touches is a fit-pool trial, every trial simulate()/score() reports
    is an eval-pool trial: the RTify head (human fit and self-penalised, whose batches are subsets), the
    entropy baseline and the logit-driven Wong–Wang."""
    outputs = synthetic_outputs()
    train, test = human_tables()
    fit_pool = set(backbone_network(outputs).rows(list(COH), POOL, seed=0, pool="fit").tolist())
    eval_pool = set(backbone_network(outputs).rows(list(COH), POOL, seed=0, pool="eval").tolist())
    heads = [
        RTifyHeadConfig(head_steps=2, n_train=POOL),
        RTifyHeadConfig(objective="self-penalty", head_steps=3, self_penalty_batch=4),
    ]
    estimators: list[Any] = [
        RTifyHeadEstimator(cfg, _spy(backbone_network(outputs), SpyTrials)) for cfg in heads
    ]
    grid = EntropyThresholdConfig(n_train=POOL, n_theta=8, n_t0=5, n_refine=3, n_starts=1)
    estimators.append(EntropyThresholdEstimator(grid, _spy(backbone_network(outputs), SpyTrials)))
    ww = WWFitConfig(steps=1, n_train=2 * POOL, dt_ms=25.0, fine_dt_ms=None, learn=("threshold",))
    estimators.append(WongWangEstimator(ww, drive=_spy(backbone_drive(outputs, "clip"), SpyDrive)))
    for est in estimators:
        source = est.drive if isinstance(est, WongWangEstimator) else est.network
        est.fit(train)
        fitted = list(source.calls)
        assert fitted and {pool for pool, _ in fitted} == {"fit"}, est.name
        assert set().union(*(rows for _, rows in fitted)) <= fit_pool, est.name
        source.calls.clear()
        est.score(test, n=POOL, seed=3)
        assert [pool for pool, _ in source.calls] == ["eval"], est.name
        assert source.calls[0][1] == eval_pool, est.name  # n = POOL: the whole eval pool
    assert estimators[3].name == "ww-clip" and estimators[3].n_parameters == 2  # θ and the logit scale w
    assert "w" in estimators[3].params() and estimators[3].params()["input"] == "clip"


def test_planted_head_gives_the_rt_computed_by_hand() -> None:
    """A head with evidence e_t = h_t (a constant h = e per trial), threshold θ and t₀ crosses at the
    continuous t* = θ/|e| frames (Φ_t = e·(t + 1), interpolated), so RT = θ/|e|·frame_s + t₀, choice =
    sign(e); the estimator must report exactly that for the eval-pool trials, in their order."""
    n, steps, frame_s = 40, 6, 2.0 / 6
    rng = np.random.default_rng(0)
    e = torch.tensor(rng.uniform(0.4, 2.0, n) * rng.choice([-1.0, 1.0], n), dtype=torch.float32)
    hidden = e.view(n, 1, 1).expand(n, steps, 1).contiguous()
    logits = torch.stack([-0.5 * hidden[..., 0], 0.5 * hidden[..., 0]], dim=-1)
    labels = torch.tensor(rng.integers(0, 2, n))  # some trials answered wrongly on purpose
    cond = [6.4] * (n // 2) + [51.2] * (n // 2)
    fit = torch.tensor([i % 2 == 0 for i in range(n)])
    network = CachedTrials(hidden, logits, labels, cond, fit, dt=frame_s)
    train, _ = human_tables()
    config = RTifyHeadConfig(head_steps=1, n_train=n // 4, t0_max=0.6)
    est = RTifyHeadEstimator(config, network).fit(train)
    theta, t0 = 1.5, 0.3
    head = est.head_
    with torch.no_grad():
        head.evidence.weight.fill_(1.0)
        head.evidence.bias.zero_()
        head.raw_threshold.fill_(math.log(math.expm1(theta)))  # softplus⁻¹(θ)
        head.raw_t0.fill_(math.log(t0 / (0.6 - t0)))  # t₀ = t0_max·σ(raw)
    table = est.simulate(list(COH), n // 4, seed=0)
    rows = network.rows(list(COH), n // 4, seed=0, pool="eval")
    assert set(rows.tolist()) == {i for i in range(n) if i % 2 == 1}
    ev = e[rows].double().numpy()
    expected = theta / np.abs(ev) * frame_s + t0  # ≤ 3.75 frames < 6: every trial decides
    # float32 cumsum and interpolation: relative error ~1e-7 on RTs of ~1 s, so 1e-5 s is far below any
    # error a wrong convention would make (a frame off: 0.33 s; t* on the grid: up to 0.33 s).
    np.testing.assert_allclose(table["rt_s"].to_numpy(), expected, atol=1e-5)
    assert table["decided"].all()
    np.testing.assert_array_equal(table["correct"].to_numpy(), (ev > 0) == (labels[rows].numpy() == 1))
    assert est.params()["threshold"] == pytest.approx(theta) and est.params()["t0"] == pytest.approx(t0)


def test_readout_head_starts_as_the_backbone_logit() -> None:
    """Least squares on the fit pool recovers l = a·h + c exactly, so the evidence equals the logit and the
    choice read-out's softmax equals sigmoid(logit) (to float32 rounding: 1e-4), also on eval trials."""
    network = backbone_network(synthetic_outputs())
    head = network.build_head(RTifyHeadConfig().fit_config(), t0_max=0.5)
    sim = network(list(COH), POOL, seed=0, pool="eval")
    logit = sim.logits[..., 1] - sim.logits[..., 0]
    with torch.no_grad():
        ev = head.evidence(sim.hidden).squeeze(-1)
        probs = torch.softmax(head.classifier(sim.hidden), dim=-1)[..., 1]  # type: ignore[misc]
    assert torch.allclose(ev, logit, atol=1e-4)
    assert torch.allclose(probs, torch.sigmoid(logit), atol=1e-4)
    assert float(head.t0.detach()) == pytest.approx(0.25) and head.t0_max == 0.5  # the shared t₀ box
    no_states = backbone_network(synthetic_outputs(hidden=False))
    assert no_states.hidden.shape[-1] == 1  # C3D: the per-frame logit is the 1-d state


def test_ww_estimator_on_the_cache_equals_the_fit_function_it_wraps() -> None:
    """On the same pools (n_train and n_eval multiples of the pool size, so both repeat each pool trial
    alike), WongWangEstimator with a cached drive fits exactly the parameters of run_ww_fit and simulates
    exactly its evaluation table (same noise seed): bit-for-bit, the same computation."""
    train, test = human_tables()
    config = WWFitConfig(steps=2, n_train=2 * POOL, n_eval=4 * POOL, dt_ms=20.0, fine_dt_ms=None)
    drive = backbone_drive(synthetic_outputs(), "frames")
    old = run_ww_fit(
        train,
        test,
        config,
        fit_trials=drive.pool_trials(list(COH), "fit"),
        eval_trials=drive.pool_trials(list(COH), "eval"),
        name="ww-frames",
    )
    est = WongWangEstimator(config, drive=drive).fit(train)
    assert ww_parameters(est.model_) == ww_parameters(old.model)
    assert est.params_init_ == old.result.report["rtify"]["params_init"]
    table = est.simulate(list(COH), 4 * POOL, seed=config.seed + 303)  # run_ww_fit's evaluation seed
    pd.testing.assert_frame_equal(table, old.result.tables["ww-frames"], check_dtype=False)
    assert est.n_parameters == len(config.learn) + 1


# --------------------------------------------------------------------------------------------------------
# The experiment.
# --------------------------------------------------------------------------------------------------------


def test_run_all_heads_table_and_compare(tmp_path: Path) -> None:
    """Every head runs as an estimator: its report entry is fit_quality of its own evaluation table (the
    `rtify fit` metric path), n_params/params come from the estimator, RTify heads are scored on the whole
    eval pool and WW on n_eval trials; the Markdown/CSV rows are the fit.json numbers, the human row is the
    human test accuracy, and `compare` reads the run's fit.json."""
    train, test = human_tables()
    config = PixelRDMConfig(
        ww=WWFitConfig(steps=2, n_train=20, n_eval=40, dt_ms=20.0, fine_dt_ms=10.0),
        head=RTifyHeadConfig(head_steps=3, lr=0.03),
    )
    run = run_pixel_rdm(synthetic_outputs(), train, test, config)
    report = run.result.report
    assert report["methods"] == list(config.heads) and report["model"] == "ww-frames"
    assert report["data"]["cache_pools"]["eval_per_condition"] == POOL
    entries = {report["model"]: report["rtify"], **report["baselines"]}
    for name, entry in entries.items():
        est = run.estimators[name]
        quality = fit_quality(run.result.tables[name], test)
        np.testing.assert_allclose([r["wasserstein"] for r in entry["per_condition"]], quality["wasserstein"])
        assert entry["n_params"] == est.n_parameters and entry["params"] == est.to_dict()["params"]
        assert entry["model_eval_trials"] == (40 if name.startswith("ww-") else POOL) * len(COH)
        assert len(entry["noise_floor"]) == len(COH) + 1 and entry["noise_floor"][0]["wasserstein_mean"] > 0
    assert entries["rtify-head-human"]["n_params"] == HIDDEN + 1 + 2  # evidence weights + bias, θ, t₀
    assert entries["rtify-head-self-penalty"]["n_params"] == 0
    assert entries["ww-clip"]["n_params"] == len(config.ww.learn) + 1  # + the logit scale w
    assert "dt_check" in entries["ww-frames"] and "dt_check" not in entries["rtify-head-human"]
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
    assert float(row["wasserstein_floor_s"].iloc[0]) == pytest.approx(
        entry["noise_floor"][0]["wasserstein_mean"]
    )
    assert "W1 floor" in (tmp_path / "pixel_rdm.md").read_text()
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
    # the eval pool (POOL per coherence) repeated to at least --eval-trials 20
    assert report["data"]["model_eval_trials"] == 20 * len(COH)
    res = runner.invoke(rtify_app, ["compare", str(tmp_path / "c"), str(tmp_path / "b")])
    assert res.exit_code == 0 and "ww-clip" in res.output and "ww-coherence" in res.output


def test_cli_pixel_rdm(cli_files: tuple[Path, Path], tmp_path: Path) -> None:
    csv, backbone = cli_files
    res = runner.invoke(
        rtify_app,
        [
            "pixel-rdm",
            *("--backbone", str(backbone), "--out", str(tmp_path), "--data", str(csv)),
            *(*TINY, "--ww-steps", "1"),
        ],
        env={"COLUMNS": "200"},  # wide enough that rich does not wrap the method names of the table
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pixel_rdm.md").is_file() and "RTify head self-penalised" in res.output
    report = read_json(tmp_path / "fit.json")
    head = report["baselines"]["rtify-head-human"]["estimator_config"]
    assert head["n_train"] == POOL and head["head_steps"] == 2  # the fit pool; --steps
    assert report["settings"]["pixel_rdm"]["ww"]["steps"] == 1  # --ww-steps
    assert len(report["history"]["ww-frames"]) == 1 and len(report["history"]["rtify-head-human"]) == 2


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

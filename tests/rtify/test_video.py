"""Video backbones, curriculum training, checkpoints and cached outputs (tiny scales: seconds in total)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from perceptalign.io import PerceptAlignError, save_tensors_atomic
from perceptalign.rtify.experiments.pixel import stimuli
from perceptalign.rtify.experiments.pixel.backbone_training import (
    BackboneTrainingConfig,
    _eval_trials,
    compute_backbone_outputs,
    load_backbone_outputs,
    psychometric_table,
    save_backbone_outputs,
    train_backbone,
    training_stimulus,
)
from perceptalign.rtify.experiments.pixel.stimuli import RDMConfig, generate_rdm
from perceptalign.rtify.experiments.pixel.video_backbones import (
    C3DNet,
    CausalConv3d,
    FrameCNNLSTM,
    build_backbone,
    load_backbone,
    recalibrate_batchnorm,
    save_backbone,
    weights_sha256,
)

TINY = {"c3d": {"channels": (4, 8)}, "cnn-lstm": {"channels": (4, 8), "hidden_size": 8}}
# float32 forward passes that differ only in how much padding/zero history they see agree to rounding.
ATOL = 1e-5


def tiny_stimulus(frames: int = 8) -> RDMConfig:
    return training_stimulus(size=16, n_frames=frames)


def videos(batch: int = 3, frames: int = 8, seed: int = 0) -> torch.Tensor:
    coh = torch.full((batch,), 0.5)
    direction = torch.tensor([1, -1] * batch)[:batch]
    return generate_rdm(coh, direction, tiny_stimulus(frames), seed=seed)


def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_backbone(kind, **TINY[kind])
    # Non-trivial batch-norm statistics so that eval mode is not an identity normalisation.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def tiny_config(kind: str = "c3d", **overrides: object) -> BackboneTrainingConfig:
    settings: dict[str, object] = {
        "kind": kind,
        "stimulus": tiny_stimulus(),
        "model": TINY.get(kind, {}),
        "epochs": 2,
        "batches_per_epoch": 2,
        "batch_size": 4,
        "lr": 3e-3,
        "bn_calibration_batches": 2,
        "seed": 3,
    }
    settings.update(overrides)
    return BackboneTrainingConfig(**settings)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Backbones: shapes, causality, prefix semantics
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["c3d", "cnn-lstm"])
def test_output_shapes_and_clip_logit_definition(kind: str) -> None:
    model = tiny_model(kind)
    with torch.no_grad():
        out = model(videos(batch=3, frames=8))
    assert out.frame_logits.shape == (3, 8)
    assert out.clip_logit.shape == (3,)
    if kind == "c3d":
        assert out.hidden is None
        torch.testing.assert_close(out.clip_logit, out.frame_logits.mean(dim=1))
    else:
        assert out.hidden is not None and out.hidden.shape == (3, 8, 8)
        torch.testing.assert_close(out.clip_logit, out.frame_logits[:, -1])
        # The per-frame logit is the linear read-out of the LSTM state the RTify head will consume.
        expected = out.hidden @ model.readout.weight[0] + model.readout.bias[0]
        torch.testing.assert_close(out.frame_logits, expected)


@pytest.mark.parametrize("kind", ["c3d", "cnn-lstm"])
@pytest.mark.parametrize("t", [0, 3, 6])
def test_output_at_t_ignores_later_frames(kind: str, t: int) -> None:
    model = tiny_model(kind)
    clip = videos(batch=2, frames=8)
    perturbed = clip.clone()
    perturbed[:, t + 1 :] = torch.rand_like(perturbed[:, t + 1 :])
    with torch.no_grad():
        a, b = model(clip), model(perturbed)
    torch.testing.assert_close(a.frame_logits[:, : t + 1], b.frame_logits[:, : t + 1], rtol=0, atol=0)
    # The perturbation must reach the later outputs, or the check above would be vacuous.
    assert (a.frame_logits[:, t + 1 :] - b.frame_logits[:, t + 1 :]).abs().max() > 1e-4


def test_c3d_prefix_logit_is_the_clip_logit_of_the_prefix() -> None:
    model = tiny_model("c3d")
    clip = videos(batch=2, frames=8)
    with torch.no_grad():
        prefix = model.prefix_logits(model(clip).frame_logits)
        for t in range(8):
            torch.testing.assert_close(prefix[:, t], model(clip[:, : t + 1]).clip_logit, rtol=0, atol=ATOL)


def test_lstm_on_a_prefix_reproduces_the_first_frames() -> None:
    model = tiny_model("cnn-lstm")
    clip = videos(batch=2, frames=8)
    with torch.no_grad():
        full = model(clip)
        part = model(clip[:, :5])
    torch.testing.assert_close(part.frame_logits, full.frame_logits[:, :5], rtol=0, atol=ATOL)
    torch.testing.assert_close(part.hidden, full.hidden[:, :5], rtol=0, atol=ATOL)


def test_causal_conv3d_matches_explicit_sum() -> None:
    torch.manual_seed(1)
    conv = CausalConv3d(2, 3, temporal=4, spatial=3)
    x = torch.randn(1, 2, 6, 5, 5)
    y = conv(x)
    w = conv.conv.weight  # (3, 2, 4, 3, 3)
    xp = F.pad(x, (1, 1, 1, 1))  # spatial "same" padding only
    expected = torch.zeros_like(y)
    for t in range(6):
        for k in range(4):
            src = t - 3 + k  # kernel tap k looks at frame t − (K − 1) + k; frames before 0 are zero
            if src < 0:
                continue
            for i in range(5):
                for j in range(5):
                    patch = xp[0, :, src, i : i + 3, j : j + 3]
                    expected[0, :, t, i, j] += (w[:, :, k] * patch).sum(dim=(1, 2, 3))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_frame_stacks_hold_the_k_latest_frames() -> None:
    model = FrameCNNLSTM(channels=(4,), context_frames=3, hidden_size=4)
    clip = torch.rand(2, 5, 4, 4)
    stacks = model.frame_stacks(clip).view(2, 5, 3, 4, 4)
    for b in range(2):
        for t in range(5):
            for j in range(3):
                src = t - 2 + j
                want = clip[b, src] if src >= 0 else torch.zeros(4, 4)
                torch.testing.assert_close(stacks[b, t, j], want, rtol=0, atol=0)


def test_c3d_receptive_field_is_as_documented() -> None:
    model = C3DNet(channels=(2, 2, 2), temporal_kernel=4)
    torch.nn.init.constant_(model.readout.weight, 1.0)
    model.eval()
    base = torch.zeros(1, 20, 8, 8)
    poked = base.clone()
    poked[0, 5] = torch.rand(8, 8)
    with torch.no_grad():
        diff = (model(poked).frame_logits - model(base).frame_logits).abs()[0]
    changed = (diff > 0).nonzero().flatten().tolist()
    # A change at frame 5 can only reach frames 5 … 5 + R − 1.
    assert changed and min(changed) >= 5 and max(changed) <= 5 + model.receptive_field - 1


def test_backbone_input_errors() -> None:
    model = tiny_model("c3d")
    with pytest.raises(PerceptAlignError, match="batch, frames, height, width"):
        model(torch.zeros(8, 16, 16))
    with pytest.raises(PerceptAlignError, match="too small"):
        C3DNet(channels=(2, 2, 2, 2))(torch.zeros(1, 4, 4, 4))
    with pytest.raises(PerceptAlignError, match="unknown backbone kind"):
        build_backbone("resnet")
    with pytest.raises(PerceptAlignError, match="channels"):
        build_backbone("c3d", channels=16)
    with pytest.raises(PerceptAlignError, match="hidden_size"):
        build_backbone("cnn-lstm", hidden_size=0)
    with pytest.raises(PerceptAlignError, match="bad arguments"):
        build_backbone("c3d", depth=3)
    with pytest.raises(PerceptAlignError, match="odd"):
        CausalConv3d(1, 1, 3, 4)


@pytest.mark.parametrize("kind", ["c3d", "cnn-lstm"])
def test_recalibrated_eval_mode_reproduces_batch_statistics(kind: str) -> None:
    model = tiny_model(kind)
    clip = videos(batch=6, frames=8, seed=3)
    with torch.no_grad():
        model.train()
        batch_mode = model(clip).frame_logits
        assert recalibrate_batchnorm(model.eval(), [clip]) == 1
        calibrated = model(clip).frame_logits
    assert not model.training
    # Calibrated on this one batch, eval mode normalises with exactly its statistics, except that the
    # stored variance is the unbiased one: a factor n/(n−1) with n ≥ 6·8·4·4 = 768 values per channel,
    # i.e. a relative change ≤ 0.07 % in the normalised activations.
    torch.testing.assert_close(calibrated, batch_mode, rtol=2e-3, atol=2e-3)


def test_recalibration_averages_batch_means_exactly() -> None:
    model = tiny_model("c3d")
    first_bn = model.features[1]
    first_bn.momentum = 0.3
    clips = [videos(batch=2, seed=s) for s in (1, 2, 3)]
    with torch.no_grad():
        # Independent: the first batch-norm input is the first causal convolution of the raw video.
        means = [model.features[0](c.unsqueeze(1)).mean(dim=(0, 2, 3, 4)) for c in clips]
        recalibrate_batchnorm(model, clips)
    torch.testing.assert_close(first_bn.running_mean, torch.stack(means).mean(dim=0), rtol=1e-5, atol=1e-6)
    assert first_bn.momentum == 0.3 and int(first_bn.num_batches_tracked) == 3
    with pytest.raises(PerceptAlignError, match="no batches"):
        recalibrate_batchnorm(model, [])
    assert recalibrate_batchnorm(torch.nn.Linear(2, 2), [torch.zeros(1, 2)]) == 0


@pytest.mark.parametrize("kind", ["c3d", "cnn-lstm"])
def test_save_load_roundtrip_and_hash(kind: str, tmp_path: Path) -> None:
    model = tiny_model(kind)
    digest = save_backbone(tmp_path / "b.safetensors", model)
    loaded = load_backbone(tmp_path / "b.safetensors")
    assert weights_sha256(loaded) == digest == weights_sha256(model)
    clip = videos()
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip).frame_logits, model(clip).frame_logits, rtol=0, atol=0)
    with torch.no_grad():
        next(model.parameters())[0].view(-1)[0] += 1e-3
    assert weights_sha256(model) != digest
    save_tensors_atomic(tmp_path / "other.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(PerceptAlignError, match="not a video backbone"):
        load_backbone(tmp_path / "other.safetensors")
    with pytest.raises(PerceptAlignError, match="train-backbone"):
        load_backbone(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------------------------------
# Training: curriculum, learning, resume
# --------------------------------------------------------------------------------------------------


def test_curriculum_stages_add_one_harder_coherence_each() -> None:
    config = tiny_config(epochs=12, epochs_per_stage=2)
    stages = config.stages
    assert stages[0] == (config.easy_coherence,)
    assert len(stages) == len(config.coherences) + 1
    for before, after in itertools.pairwise(stages):
        added = set(after) - set(before)
        assert set(before) <= set(after) and len(added) == 1
        assert max(added) < min(before)  # the new coherence is harder than all previous ones
    assert set(stages[-1]) == {config.easy_coherence, *config.coherences}
    assert [config.stage_of_epoch(e) for e in range(12)] == [e // 2 for e in range(12)][:12]
    assert config.stage_of_epoch(100) == len(stages) - 1


def test_training_draws_stimuli_from_the_current_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, ...]] = []
    original = stimuli.make_rdm_batch

    def spy(batch_size, coherences, *args, **kwargs):  # type: ignore[no-untyped-def]
        batch = original(batch_size, coherences, *args, **kwargs)
        seen.append(tuple(sorted(set(batch.coherence.tolist()))))
        return batch

    monkeypatch.setattr(stimuli, "make_rdm_batch", spy)
    config = tiny_config(epochs=3, batches_per_epoch=2, batch_size=16)
    result = train_backbone(config.kind, config)
    assert list(result.history["stage"]) == [0, 1, 2]
    for epoch in range(3):
        allowed = set(np.float32(c) for c in config.stages[epoch])
        used = set().union(*seen[2 * epoch : 2 * epoch + 2])
        assert used <= allowed
    assert seen[0] == (np.float32(config.easy_coherence),)
    hardest = [100 * min(config.stages[e]) for e in range(3)]
    np.testing.assert_allclose(result.history["hardest_coherence_pct"], hardest)


@pytest.mark.parametrize("kind", ["c3d", "cnn-lstm"])
def test_tiny_training_learns_the_easy_condition(kind: str) -> None:
    # 40 steps of 16 trials at 99.9 % coherence only (one stage spans all epochs).
    config = tiny_config(
        kind, epochs=2, batches_per_epoch=20, batch_size=16, epochs_per_stage=10, bn_calibration_batches=5
    )
    result = train_backbone(config.kind, config)
    outputs = compute_backbone_outputs(
        result.model, config.stimulus, coherences=(0.999,), trials_per_condition=100, seed=11
    )
    accuracy = float(outputs.correct.float().mean())
    # 200 test trials: the SE of chance accuracy is 0.035, so 0.75 is 7 SE above chance; prototypes of
    # this exact run reach 0.97–0.99, so the margin below covers seed-to-seed variation.
    assert accuracy > 0.75
    assert result.history["loss"].iloc[-1] < result.history["loss"].iloc[0]


@pytest.mark.parametrize("kind", ["c3d", "cnn-lstm"])
def test_resume_from_checkpoint_equals_uninterrupted_run(kind: str, tmp_path: Path) -> None:
    straight = train_backbone(kind, tiny_config(kind, epochs=2))
    ckpt = tmp_path / "ckpt.safetensors"
    first = train_backbone(kind, tiny_config(kind, epochs=1), checkpoint=ckpt)
    assert first.resumed_from_epoch == 0 and ckpt.exists()
    resumed = train_backbone(kind, tiny_config(kind, epochs=2), checkpoint=ckpt)
    assert resumed.resumed_from_epoch == 1
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    cols = ["epoch", "stage", "loss", "accuracy"]
    assert resumed.history[cols].equals(straight.history[cols])
    # Nothing is left to do: the checkpoint is returned as is.
    again = train_backbone(kind, tiny_config(kind, epochs=2), checkpoint=ckpt)
    assert again.weights_sha256 == straight.weights_sha256 and again.resumed_from_epoch == 2
    with pytest.raises(PerceptAlignError, match="already holds 2 epochs"):
        train_backbone(kind, tiny_config(kind, epochs=1), checkpoint=ckpt)


def test_calibration_changes_only_batch_norm_statistics_of_the_returned_model(tmp_path: Path) -> None:
    from perceptalign.io import load_tensors

    ckpt = tmp_path / "ckpt.safetensors"
    result = train_backbone("c3d", tiny_config(epochs=1, bn_calibration_batches=2), checkpoint=ckpt)
    saved = {k[len("model/") :]: v for k, v in load_tensors(ckpt).items() if k.startswith("model/")}
    state = result.model.state_dict()
    for name, value in saved.items():
        if "running_" in name:  # re-estimated for the returned model; the checkpoint keeps the EMA
            assert not torch.equal(state[name], value), name
        elif "num_batches_tracked" not in name:
            assert torch.equal(state[name], value), name
    plain = train_backbone("c3d", tiny_config(epochs=1, bn_calibration_batches=0))
    for name, value in saved.items():
        assert torch.equal(plain.model.state_dict()[name], value), name


def test_resume_refuses_other_settings_and_foreign_files(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.safetensors"
    train_backbone("c3d", tiny_config(epochs=1, batches_per_epoch=1), checkpoint=ckpt)
    with pytest.raises(PerceptAlignError, match=r"lr: saved 0.003 vs now 0.01.*--no-resume"):
        train_backbone("c3d", tiny_config(epochs=2, batches_per_epoch=1, lr=1e-2), checkpoint=ckpt)
    # resume=False starts over and overwrites the checkpoint.
    fresh = train_backbone(
        "c3d", tiny_config(epochs=1, batches_per_epoch=1, lr=1e-2), checkpoint=ckpt, resume=False
    )
    assert fresh.resumed_from_epoch == 0
    foreign = tmp_path / "foreign.safetensors"
    save_tensors_atomic(foreign, {"x": torch.zeros(1)})
    with pytest.raises(PerceptAlignError, match="not a backbone training checkpoint"):
        train_backbone("c3d", tiny_config(epochs=1, batches_per_epoch=1), checkpoint=foreign)


def test_kind_argument_overrides_the_config() -> None:
    result = train_backbone("cnn-lstm", tiny_config("c3d", epochs=1, batches_per_epoch=1))
    assert isinstance(result.model, FrameCNNLSTM) and result.config.kind == "cnn-lstm"
    with pytest.raises(PerceptAlignError, match="unknown"):
        train_backbone("vgg")


def test_config_errors() -> None:
    with pytest.raises(PerceptAlignError, match="unknown"):
        tiny_config("resnet")
    with pytest.raises(PerceptAlignError, match="percent"):
        tiny_config(coherences=(12.8, 51.2))
    with pytest.raises(PerceptAlignError, match="batch norm"):
        tiny_config(batch_size=1)
    with pytest.raises(PerceptAlignError, match="lr"):
        tiny_config(lr=0.0)
    with pytest.raises(PerceptAlignError, match="loss_on"):
        tiny_config(loss_on="middle")
    with pytest.raises(PerceptAlignError, match="bad arguments"):
        tiny_config(model={"width": 3})
    with pytest.raises(PerceptAlignError, match="bn_calibration_batches"):
        tiny_config(bn_calibration_batches=-1)
    with pytest.raises(PerceptAlignError, match="duration_s"):
        training_stimulus(duration_s=0)
    config = tiny_config(model={"channels": [4, 8]})
    assert BackboneTrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# --------------------------------------------------------------------------------------------------
# Cached outputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["c3d", "cnn-lstm"])
def test_cache_roundtrip_matches_a_direct_forward(kind: str, tmp_path: Path) -> None:
    model = tiny_model(kind)
    stim = tiny_stimulus()
    outputs = compute_backbone_outputs(model, stim, coherences=(0.128, 0.999), trials_per_condition=5, seed=2)
    assert len(outputs) == 2 * 2 * 5
    assert outputs.coherence.tolist() == pytest.approx([0.128] * 10 + [0.999] * 10)
    assert outputs.direction.tolist() == ([-1] * 5 + [1] * 5) * 2
    assert outputs.frame_s == pytest.approx(2.0 / 8)
    assert (outputs.hidden is None) == (kind == "c3d")
    path = tmp_path / "outputs.safetensors"
    save_backbone_outputs(path, outputs)
    loaded = load_backbone_outputs(path, backbone=model, stimulus=stim, seed=2, trials_per_condition=5)
    torch.testing.assert_close(loaded.frame_logits, outputs.frame_logits, rtol=0, atol=0)
    if kind == "cnn-lstm":
        torch.testing.assert_close(loaded.hidden, outputs.hidden, rtol=0, atol=0)
    # The cache is the model's output on the evaluation videos, regenerated here chunk by chunk.
    chunks = list(_eval_trials(stim, (0.128, 0.999), 5, 2))
    with torch.no_grad():
        direct = torch.cat([model(v).frame_logits for v, _, _ in chunks])
    torch.testing.assert_close(loaded.frame_logits, direct, rtol=0, atol=0)
    assert torch.equal(torch.cat([d for _, _, d in chunks]), loaded.direction)


def test_evaluation_cells_do_not_depend_on_the_other_coherences() -> None:
    model = tiny_model("c3d")
    stim = tiny_stimulus()
    both = compute_backbone_outputs(model, stim, coherences=(0.064, 0.512), trials_per_condition=3, seed=4)
    one = compute_backbone_outputs(model, stim, coherences=(0.512,), trials_per_condition=3, seed=4)
    torch.testing.assert_close(both.frame_logits[6:], one.frame_logits, rtol=0, atol=0)
    other_seed = compute_backbone_outputs(model, stim, coherences=(0.512,), trials_per_condition=3, seed=5)
    assert not torch.equal(other_seed.frame_logits, one.frame_logits)


def test_cache_refuses_mismatches(tmp_path: Path) -> None:
    model = tiny_model("c3d")
    stim = tiny_stimulus()
    path = tmp_path / "outputs.safetensors"
    save_backbone_outputs(
        path, compute_backbone_outputs(model, stim, coherences=(0.5,), trials_per_condition=2)
    )
    with pytest.raises(PerceptAlignError, match="backbone_sha256"):
        load_backbone_outputs(path, backbone=tiny_model("c3d", seed=1))
    with pytest.raises(PerceptAlignError, match="backbone_sha256"):
        load_backbone_outputs(path, backbone_sha256="0" * 64)
    with pytest.raises(PerceptAlignError, match="stimulus"):
        load_backbone_outputs(path, stimulus=tiny_stimulus(frames=9))
    with pytest.raises(PerceptAlignError, match="seed"):
        load_backbone_outputs(path, seed=1)
    with pytest.raises(PerceptAlignError, match="coherences"):
        load_backbone_outputs(path, coherences=(0.25,))
    with pytest.raises(PerceptAlignError, match="no backbone-output cache"):
        load_backbone_outputs(tmp_path / "missing.safetensors")
    save_tensors_atomic(tmp_path / "foreign.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(PerceptAlignError, match="not a backbone-output cache"):
        load_backbone_outputs(tmp_path / "foreign.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PerceptAlignError, match="not a readable"):
        load_backbone_outputs(tmp_path / "garbage.safetensors")
    with pytest.raises(PerceptAlignError, match="duplicates"):
        compute_backbone_outputs(model, stim, coherences=(0.5, 0.5))
    with pytest.raises(PerceptAlignError, match="percent"):
        compute_backbone_outputs(model, stim, coherences=(51.2,))


def test_psychometric_table_against_a_direct_count() -> None:
    model = tiny_model("cnn-lstm")
    outputs = compute_backbone_outputs(
        model, tiny_stimulus(), coherences=(0.032, 0.256), trials_per_condition=6, seed=0
    )
    table = psychometric_table(outputs)
    assert table["coherence_pct"].tolist() == pytest.approx([3.2, 25.6])
    for row in table.itertuples():
        mask = (outputs.coherence - row.coherence_pct / 100).abs() < 1e-6
        right = outputs.clip_logit[mask] > 0
        truth = outputs.direction[mask] > 0
        acc = float((right == truth).float().mean())
        assert row.n == 12 and row.accuracy == pytest.approx(acc)
        assert row.accuracy_se == pytest.approx(np.sqrt(acc * (1 - acc) / 12))


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def test_cli_train_backbone_end_to_end(tmp_path: Path) -> None:
    import perceptalign.cli.rtify_video  # noqa: F401  registers the command
    from perceptalign.cli.rtify import rtify_app

    out = tmp_path / "run"
    args = [
        "train-backbone",
        "--kind",
        "cnn-lstm",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batches-per-epoch",
        "2",
        "--batch-size",
        "4",
        "--size",
        "16",
        "--frames",
        "6",
        "--trials-per-coherence",
        "2",
        "--threads",
        "1",
        "--seed",
        "5",
    ]
    result = CliRunner().invoke(rtify_app, args)
    assert result.exit_code == 0, result.output
    for name in (
        "backbone.safetensors",
        "backbone.json",
        "outputs.safetensors",
        "psychometric.png",
        "training.png",
        "checkpoint.safetensors",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "backbone.json").read_text())
    assert len(report["psychometric"]) == 8 and len(report["history"]) == 1
    model = load_backbone(out / "backbone.safetensors")
    outputs = load_backbone_outputs(
        out / "outputs.safetensors", backbone=model, seed=5, trials_per_condition=2
    )
    assert outputs.hidden is not None and outputs.hidden.shape[1] == 6
    table = psychometric_table(outputs)
    np.testing.assert_allclose([r["accuracy"] for r in report["psychometric"]], table["accuracy"])
    assert report["frame_s"] == pytest.approx(2.0 / 6)

    # A rerun with more epochs resumes from the checkpoint.
    args[args.index("--epochs") + 1] = "2"
    result = CliRunner().invoke(rtify_app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "backbone.json").read_text())
    assert report["resumed_from_epoch"] == 1 and len(report["history"]) == 2

    bad = CliRunner().invoke(rtify_app, ["train-backbone", "--kind", "vgg", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown" in bad.output


def test_figures_draw_the_tables_they_are_given() -> None:
    from perceptalign.rtify.experiments.pixel.backbone_training import (
        plot_psychometric,
        plot_training_history,
    )

    table = pd.DataFrame(
        {
            "coherence_pct": [3.2, 51.2, 99.9],
            "n": [10] * 3,
            "accuracy": [0.5, 0.8, 1.0],
            "accuracy_se": [0.1] * 3,
        }
    )
    ax = plot_psychometric({"net": table}).axes[0]
    line = ax.lines[0]
    np.testing.assert_allclose(np.asarray(line.get_xdata(), float), table["coherence_pct"])
    np.testing.assert_allclose(np.asarray(line.get_ydata(), float), table["accuracy"])
    assert ax.get_xscale() == "log"
    history = pd.DataFrame(
        {
            "epoch": range(5),
            "stage": [0, 0, 1, 2, 2],
            "hardest_coherence_pct": [99.9, 99.9, 51.2, 25.6, 25.6],
            "loss": [0.7, 0.6, 0.5, 0.45, 0.4],
            "accuracy": [0.5, 0.6, 0.7, 0.8, 0.9],
        }
    )
    loss_ax = plot_training_history(history).axes[0]
    np.testing.assert_allclose(np.asarray(loss_ax.lines[0].get_ydata(), float), history["loss"])
    # One grey marker per stage start (epochs 0, 2, 3), placed between epochs.
    starts = sorted(float(line.get_xdata()[0]) for line in loss_ax.lines[1:])
    assert starts == [0.5, 2.5, 3.5]

"""LoRA: target detection, what is trained, merge correctness, NTPS after LoRA, the job and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import perceptalign.cli.ntps_train  # noqa: F401  (registers `ntps lora` / `ntps scratch`)
from perceptalign.cli import app
from perceptalign.io import PerceptAlignError, load_tensors
from perceptalign.ntps.finetune import (
    EncodedTexts,
    NTPSSettings,
    SequenceClassifier,
    TrainConfig,
    count_trainable,
    load_train_eval,
    measure_ntps,
    train_classifier,
)
from perceptalign.ntps.jobs.lora import (
    LoraJobConfig,
    LoraSettings,
    adaptable_modules,
    apply_lora,
    detect_target_modules,
    merged_loaded_model,
    resolve_target_modules,
    run_lora,
)
from perceptalign.ntps.models import load_causal_lm

FAST_NTPS = NTPSSettings(layers=[0, -1], fractions=[0.25, 0.5, 1.0])


@pytest.fixture(scope="module")
def toy400_csv(tmp_path_factory):
    """400 toy sentences: a 120-text held-out set makes "beats chance" a sharp claim."""
    import pandas as pd

    from tests.conftest import make_sentences

    path = tmp_path_factory.mktemp("toy400") / "toy400.csv"
    pd.DataFrame(make_sentences(400, seed=3), columns=["text", "label"]).to_csv(path, index=False)
    return path


def test_target_modules_are_detected_per_architecture(tiny_llama, tiny_gpt2_left):
    assert detect_target_modules(load_causal_lm(str(tiny_llama)).model) == ["q_proj", "k_proj", "v_proj"]
    assert detect_target_modules(load_causal_lm(str(tiny_gpt2_left)).model) == ["c_attn"]


def test_unknown_architecture_asks_for_target_modules():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mix = nn.Linear(4, 4)
            self.read = nn.Linear(4, 2)

    with pytest.raises(PerceptAlignError, match=r"`target_modules`") as info:
        detect_target_modules(Odd())
    assert "mix" in str(info.value) and "read" in str(info.value)
    assert resolve_target_modules(Odd(), ["mix"]) == ["mix"]
    with pytest.raises(PerceptAlignError, match="match no linear layer"):
        resolve_target_modules(Odd(), ["mix", "nope"])


def test_lm_head_is_never_a_target(tiny_llama):
    model = load_causal_lm(str(tiny_llama)).model
    assert not any(name.endswith("lm_head") for name in adaptable_modules(model))
    with pytest.raises(PerceptAlignError, match="lm_head"):
        resolve_target_modules(model, ["lm_head"])


def _shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a Linear or of GPT-2's Conv1D (which stores its weight as in × out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_adapters_and_head_train_and_their_count_matches_the_formula(arch, tiny_llama, tiny_gpt2_left):
    loaded = load_causal_lm(str(tiny_llama if arch == "llama" else tiny_gpt2_left))
    targets = detect_target_modules(loaded.model)
    adapted = [m for name, m in adaptable_modules(loaded.model).items() if name.rsplit(".", 1)[-1] in targets]
    r = 4
    expected = sum(r * sum(_shape(m)) for m in adapted) + 3 * loaded.hidden_size + 3
    apply_lora(loaded.model, LoraSettings(r=r, alpha=8))
    classifier = SequenceClassifier(loaded.model, loaded.hidden_size, 3)
    assert count_trainable(classifier) == expected
    names = [n for n, p in classifier.named_parameters() if p.requires_grad]
    assert all(("lora_A" in n or "lora_B" in n) or n.startswith("head.") for n in names)
    assert len([n for n in names if "lora_B" in n]) == len(adapted) == 2 * len(targets)  # 2 layers


def _trained_lora(tiny_llama, toy_csv, steps: int = 15):
    loaded = load_causal_lm(str(tiny_llama))
    train, held_out, _ = load_train_eval(str(toy_csv))
    originals = [(p, p.detach().clone()) for p in loaded.model.parameters()]
    peft_model = apply_lora(loaded.model, LoraSettings(r=8, alpha=16, dropout=0.0))
    torch.manual_seed(0)
    classifier = SequenceClassifier(loaded.model, loaded.hidden_size, 2)
    enc_train = EncodedTexts.from_dataset(loaded, train, 64)
    enc_eval = EncodedTexts.from_dataset(loaded, held_out, 64)
    config = TrainConfig(steps=steps, batch_size=8, lr=1e-2, eval_interval=steps)
    train_classifier(classifier, enc_train, enc_eval, config, name="lora")
    return loaded, train, peft_model, classifier, enc_eval, originals


def test_lora_training_leaves_base_weights_untouched_and_merge_equals_adapter_model(tiny_llama, toy_csv):
    loaded, _, peft_model, classifier, enc_eval, originals = _trained_lora(tiny_llama, toy_csv)
    # peft keeps the base parameter objects; training must not have changed a single value.
    assert all(torch.equal(p, before) for p, before in originals)
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    # B moved away from its zero initialisation.
    assert lora_b and all(float(b.detach().abs().max()) > 0 for b in lora_b)

    ids, mask, _ = enc_eval.batch(list(range(len(enc_eval))))
    classifier.eval()
    with torch.no_grad():
        with peft_model.disable_adapter():
            base_logits = classifier(ids, mask)
        adapter_logits = classifier(ids, mask)
        merged = merged_loaded_model(peft_model, loaded, "lora-sha256:test")
        merged_logits = classifier(ids, mask)
    assert float((adapter_logits - base_logits).abs().max()) > 1e-3  # the adapter does something
    # W + (α/r)·B·A versus W·x + (α/r)·B·(A·x): the same float32 products summed in another order, through
    # 2 layers with activations of size ~1: a few 1e-7 apart; 1e-5 leaves a wide margin.
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-5)
    assert merged.fingerprint.endswith("+lora-sha256:test") and merged.model_id.endswith("+lora")
    assert not any("lora" in n for n, _ in merged.model.named_parameters())


def test_untrained_adapter_merges_to_the_base_model_and_keeps_ntps(tiny_llama, toy_csv):
    """B = 0 at initialisation, so the merged weights are the base weights bit for bit."""
    loaded = load_causal_lm(str(tiny_llama))
    train, _, _ = load_train_eval(str(toy_csv))
    before, _ = measure_ntps(loaded, train, FAST_NTPS, max_length=64, max_samples=None)
    base_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    peft_model = apply_lora(loaded.model, LoraSettings(r=4, alpha=4))
    merged = merged_loaded_model(peft_model, loaded, "lora-sha256:zero")
    merged_state = merged.model.state_dict()
    assert merged_state.keys() == base_state.keys()
    assert all(torch.equal(merged_state[k], base_state[k]) for k in base_state)
    after, _ = measure_ntps(merged, train, FAST_NTPS, max_length=64, max_samples=None)
    for key in ("ntps", "ntps_orthonormal", "ntps_probe", "rank_v", "k_u"):
        assert after[key] == before[key]
    assert after["model_fingerprint"] != before["model_fingerprint"]


def test_trained_adapter_changes_ntps_above_the_embeddings_only(tiny_llama, toy_csv):
    loaded, train, peft_model, _, _, _ = _trained_lora(tiny_llama, toy_csv, steps=30)
    merged = merged_loaded_model(peft_model, loaded, "lora-sha256:trained")
    after, _ = measure_ntps(merged, train, FAST_NTPS, max_length=64, max_samples=None)
    base = load_causal_lm(str(tiny_llama))
    before, _ = measure_ntps(base, train, FAST_NTPS, max_length=64, max_samples=None)
    # Layer 0 is the embedding output, which attention adapters cannot change: identical to the bit.
    assert after["ntps"][0] == before["ntps"][0]
    last_before = np.asarray(before["ntps"][1], dtype=float)
    last_after = np.asarray(after["ntps"][1], dtype=float)
    assert np.nanmax(np.abs(last_after - last_before)) > 1e-3


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_lora_job_beats_chance_saves_a_reloadable_adapter_and_reports_ntps(tiny_llama, toy400_csv, tmp_path):
    from peft import PeftModel

    out = tmp_path / "lora"
    config = LoraJobConfig(
        model=str(tiny_llama),
        dataset=str(toy400_csv),
        out=out,
        max_length=64,
        train=TrainConfig(steps=150, batch_size=8, lr=1e-2, eval_interval=50),
        lora=LoraSettings(r=8, alpha=16),
        ntps_settings=FAST_NTPS,
    )
    result = run_lora(config)
    data = json.loads((out / "lora.json").read_text())
    # 120 balanced held-out texts: P(accuracy ≥ 0.75 by chance) < 1e-7. On a random tiny model the frozen
    # features carry little of the class words, so adapting attention must help (measured 0.875 vs 0.675).
    assert data["n_eval"] == 120
    assert data["eval_accuracy_lora"] >= 0.75
    assert data["eval_accuracy_linear_head"] >= 0.6
    assert data["gain"] > 0
    assert data["gain"] == pytest.approx(data["eval_accuracy_lora"] - data["eval_accuracy_linear_head"])
    assert data["eval_accuracy_merged"] == data["eval_accuracy_lora"]  # merge preserves every prediction
    assert data["target_modules"] == ["q_proj", "k_proj", "v_proj"] and data["n_adapted_matrices"] == 6
    assert [h["step"] for h in data["lora"]["eval_history"]] == [50, 100, 150]
    assert data["lora"]["train_loss_last"] < data["lora"]["train_loss_first"]
    assert data["ntps_before"]["layers"] == [0, 2] and np.asarray(data["ntps_after"]["ntps"]).shape == (2, 3)
    assert data["ntps_before"]["ntps"][0] == data["ntps_after"]["ntps"][0]
    for name in (
        "lora_training.png",
        "ntps_before_after.png",
        "head.safetensors",
        "linear_head.safetensors",
        "adapter/adapter_config.json",
        "ntps_before_lora.json",
        "ntps_after_lora.json",
    ):
        assert (out / name).is_file(), name
    head = load_tensors(out / "head.safetensors")
    assert head["weight"].shape == (2, 32) and head["bias"].shape == (2,)
    assert result.lora.eval_accuracy == data["eval_accuracy_lora"]

    # Round trip: the saved adapter on a fresh base model gives the same merged model, hence the same NTPS.
    fresh = load_causal_lm(str(tiny_llama))
    reloaded = PeftModel.from_pretrained(fresh.model, str(out / "adapter"))
    merged = merged_loaded_model(reloaded, fresh, "lora-sha256:reloaded")
    train, _, _ = load_train_eval(str(toy400_csv))
    again, _ = measure_ntps(merged, train, FAST_NTPS, max_length=64, max_samples=None)
    expected = np.asarray(data["ntps_after"]["ntps"], float)
    # Same float32 weights and the same float64 statistics code: equal up to JSON round-off.
    np.testing.assert_allclose(np.asarray(again["ntps"], float), expected, rtol=0, atol=1e-12)


def test_rerun_reuses_the_before_statistics(tiny_llama, toy_csv, tmp_path):
    out = tmp_path / "again"
    make = lambda: LoraJobConfig(  # noqa: E731
        model=str(tiny_llama),
        dataset=str(toy_csv),
        out=out,
        max_length=64,
        linear_baseline=False,
        train=TrainConfig(steps=3, batch_size=4, lr=1e-3, eval_interval=3),
        ntps_settings=FAST_NTPS,
    )
    first = run_lora(make()).results
    second = run_lora(make()).results
    assert not first["ntps_before_reused_cache"] and second["ntps_before_reused_cache"]
    assert second["ntps_before"]["ntps"] == first["ntps_before"]["ntps"]
    assert second["eval_accuracy_linear_head"] is None and second["gain"] is None


def test_rerun_on_other_data_recomputes_the_before_statistics(tiny_llama, toy_csv, tmp_path):
    """A rerun into the same --out on edited data must not report the old data's NTPS."""
    edited = tmp_path / "edited.csv"
    frame = pd.read_csv(toy_csv)
    frame["text"] = frame["text"] + " indeed"
    frame.to_csv(edited, index=False)

    def run(data, out):
        return run_lora(
            LoraJobConfig(
                model=str(tiny_llama),
                dataset=str(data),
                out=out,
                max_length=64,
                linear_baseline=False,
                train=TrainConfig(steps=2, batch_size=4, lr=1e-3, eval_interval=2),
                ntps_settings=FAST_NTPS,
            )
        ).results

    run(toy_csv, tmp_path / "same")
    rerun = run(edited, tmp_path / "same")
    fresh = run(edited, tmp_path / "fresh")
    assert not rerun["ntps_before_reused_cache"]
    assert rerun["ntps_before"]["n_tokens"] == fresh["ntps_before"]["n_tokens"]
    assert np.allclose(rerun["ntps_before"]["ntps"], fresh["ntps_before"]["ntps"], rtol=1e-9)


def test_statistics_made_elsewhere_are_reused_only_when_they_match(tiny_llama, tmp_path):
    import pandas as pd

    from perceptalign.ntps.jobs.score import ScoreConfig, run_score
    from tests.conftest import make_sentences

    data = pd.DataFrame(make_sentences(120, seed=4), columns=["text", "label"])
    data["split"] = ["test" if i % 4 == 0 else "train" for i in range(len(data))]
    csv = tmp_path / "split.csv"  # a test split, so LoRA trains on the whole train split, as `score` reads
    data.to_csv(csv, index=False)
    score_dir = tmp_path / "cell"
    run_score(ScoreConfig(model=str(tiny_llama), dataset=str(csv), out=score_dir, max_length=64))
    shared = score_dir / "statistics.safetensors"
    before = shared.read_bytes()
    make = lambda out, max_length: LoraJobConfig(  # noqa: E731
        model=str(tiny_llama),
        dataset=str(csv),
        out=tmp_path / out,
        max_length=max_length,
        linear_baseline=False,
        train=TrainConfig(steps=2, batch_size=4, lr=1e-3, eval_interval=2),
        ntps_settings=FAST_NTPS,
        statistics_before=shared,
    )
    matching = run_lora(make("same", 64)).results
    assert matching["ntps_before_reused_cache"]
    assert matching["statistics_before_file"] == str(shared)  # provenance names the file used
    assert not (tmp_path / "same" / "statistics.safetensors").exists()  # nothing recomputed into OUT
    messages: list[str] = []
    other = run_lora(make("other", 32), on_status=messages.append).results  # another max length
    assert not other["ntps_before_reused_cache"]
    assert any("not reusing" in m and "max_length" in m for m in messages)
    assert (tmp_path / "other" / "statistics.safetensors").is_file()
    assert shared.read_bytes() == before  # the shared statistics are never written


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"r": 0}, "`r`"), ({"alpha": 0}, "`alpha`"), ({"dropout": 1.0}, "`dropout`")],
)
def test_bad_lora_settings_are_refused_at_construction(settings, message):
    with pytest.raises(PerceptAlignError, match=message):
        LoraSettings(**settings)


def test_bad_job_options_fail_before_any_work(tiny_llama, toy_csv, tmp_path):
    with pytest.raises(PerceptAlignError, match="`steps`"):
        LoraJobConfig(
            model=str(tiny_llama), dataset=str(toy_csv), out=tmp_path / "x", train=TrainConfig(steps=0)
        )
    assert not (tmp_path / "x").exists()


def test_cli_lora_end_to_end(tiny_llama, toy_csv, tmp_path):
    out = tmp_path / "cli"
    args = [
        "ntps",
        "lora",
        "--model",
        str(tiny_llama),
        "--dataset",
        str(toy_csv),
        "--out",
        str(out),
        "--steps",
        "20",
        "--batch-size",
        "4",
        "--eval-interval",
        "10",
        "--lr",
        "1e-3",
        "--r",
        "4",
        "--layers",
        "0,-1",
        "--fractions",
        "0.5",
        "--max-length",
        "64",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "lora.json").read_text())
    assert data["steps"] == 20 and data["r"] == 4 and data["batch_size"] == 4
    assert len(data["lora"]["eval_history"]) == 2
    assert "LoRA gain" in result.output
    assert math.isfinite(data["lora"]["train_loss_last"])


def test_cli_reports_bad_target_module_and_steps(tiny_llama, toy_csv, tmp_path):
    base = [
        "ntps",
        "lora",
        "--model",
        str(tiny_llama),
        "--dataset",
        str(toy_csv),
        "--out",
        str(tmp_path / "o"),
    ]
    result = CliRunner().invoke(app, [*base, "--target-modules", "q_proj,nope", "--steps", "2"])
    assert result.exit_code == 2 and "nope" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, [*base, "--steps", "0"])
    assert result.exit_code == 2 and "--steps" in result.output

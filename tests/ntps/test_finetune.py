"""The shared training loop: schedule, sampler, pooling, data splits and the frozen-feature shortcut."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.finetune import (
    BatchSampler,
    EncodedTexts,
    SequenceClassifier,
    TrainConfig,
    cosine_warmup_factor,
    evaluate,
    load_train_eval,
    loss_curve,
    make_scheduler,
    masked_mean,
    pooled_features,
    resolve_device,
    train_classifier,
    train_linear_head,
    warmup_steps_for,
)
from perceptalign.ntps.models import load_causal_lm, pad_batch
from tests.conftest import make_sentences


def closed_form_lr(step: int, total: int, warmup: int, peak: float) -> float:
    """The schedule written out independently: linear ramp to the peak, then a half cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


@pytest.mark.parametrize("total", [1, 20, 100, 1000])
def test_cosine_schedule_with_warmup_matches_closed_form(total):
    warmup = warmup_steps_for(total, 0.05)
    assert warmup == max(1, round(0.05 * total))  # 5% warm-up, never zero steps
    config = TrainConfig(steps=total, lr=3e-3)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = make_scheduler(optimizer, config.steps, config.warmup_steps)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [closed_form_lr(s, total, warmup, 3e-3) for s in range(total)]
    # Both are the same double-precision expression evaluated in a different order: 1e-15 relative.
    np.testing.assert_allclose(seen, expected, rtol=1e-12, atol=0)
    # Properties: the peak is reached at the end of the warm-up, no step runs at lr 0, decay is monotone.
    assert max(seen) == pytest.approx(3e-3, rel=1e-12) and seen[warmup - 1] == pytest.approx(3e-3, rel=1e-12)
    assert min(seen) > 0
    assert all(a >= b for a, b in zip(seen[warmup - 1 :], seen[warmup:], strict=False))


def test_warmup_edge_cases():
    assert warmup_steps_for(100, 0.0) == 0
    assert cosine_warmup_factor(0, 10, 0) == pytest.approx(1.0)
    assert warmup_steps_for(3, 0.99) == 3


def test_batch_sampler_covers_each_epoch_once_and_is_seeded():
    sampler = BatchSampler(10, 3, seed=5)
    drawn = [i for _ in range(10) for i in sampler.next()]  # 30 indices = exactly 3 epochs
    for epoch in range(3):
        assert sorted(drawn[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    again = BatchSampler(10, 3, seed=5)
    assert [i for _ in range(10) for i in again.next()] == drawn
    other = BatchSampler(10, 3, seed=6)
    assert [i for _ in range(10) for i in other.next()] != drawn
    with pytest.raises(PerceptAlignError, match="empty"):
        BatchSampler(0, 3, seed=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_masked_mean_equals_mean_of_real_tokens(side):
    rng = torch.Generator().manual_seed(0)
    lengths = [3, 7, 1, 5]
    hidden = torch.randn(4, 7, 6, generator=rng)
    _, mask = pad_batch([[1] * n for n in lengths], 0, side)
    pooled = masked_mean(hidden, mask)
    for row, n in enumerate(lengths):
        real = hidden[row, 7 - n :] if side == "left" else hidden[row, :n]
        # Same float32 sums in a different order: agreement to a few ulps of values of size ~1.
        torch.testing.assert_close(pooled[row], real.mean(0), atol=1e-6, rtol=1e-6)


def test_pooling_does_not_depend_on_padding(tiny_gpt2_left):
    """A left-padded batch pools each text as if it were alone (positions come from the mask)."""
    loaded = load_causal_lm(str(tiny_gpt2_left))
    texts = ["the film was great", "awful", "a very long and really boring story of the plot"]
    data = EncodedTexts(
        [loaded.tokenizer(t)["input_ids"] for t in texts],
        torch.tensor([1, 0, 0]),
        int(loaded.tokenizer.pad_token_id),
        loaded.padding_side,
    )
    model = SequenceClassifier(loaded.model, loaded.hidden_size, 2).eval()
    with torch.no_grad():
        ids, mask, _ = data.batch([0, 1, 2])
        batched = model.pooled(ids, mask)
        for i in range(3):
            ids, mask, _ = data.batch([i])
            # Padding only changes which float32 additions happen: 1e-5 is ~100 ulps at |h| ~ 1.
            torch.testing.assert_close(batched[i], model.pooled(ids, mask)[0], atol=1e-5, rtol=1e-5)


def _toy_train_eval(toy_csv, tiny_llama):
    loaded = load_causal_lm(str(tiny_llama))
    train, held_out, _ = load_train_eval(str(toy_csv))
    encode = EncodedTexts.from_dataset
    return loaded, encode(loaded, train, 64), encode(loaded, held_out, 64)


def test_frozen_features_train_the_head_exactly_like_running_the_frozen_model(tiny_llama, toy_csv):
    loaded, train, held_out = _toy_train_eval(toy_csv, tiny_llama)
    config = TrainConfig(steps=25, batch_size=8, lr=1e-2, eval_interval=10, seed=3)
    loaded.model.requires_grad_(False)
    torch.manual_seed(config.seed)  # the same head initialisation train_linear_head uses
    live = SequenceClassifier(loaded.model, loaded.hidden_size, 2)
    live_result = train_classifier(live, train, held_out, config, name="live", train_mode=False)

    fresh = SequenceClassifier(loaded.model, loaded.hidden_size, 2)
    train_x = pooled_features(fresh, train, 512)
    eval_x = pooled_features(fresh, held_out, 512)
    head, cached = train_linear_head(train_x, train.labels, eval_x, held_out.labels, 2, config)
    # Features differ only by the float32 rounding of differently padded batches (~1e-7 relative; the
    # measured loss difference is ~1e-7): 2e-6 allows 25 Adafactor steps to amplify it tenfold.
    np.testing.assert_allclose(cached.losses, live_result.losses, rtol=0, atol=2e-6)
    torch.testing.assert_close(head.weight, live.head.weight, atol=2e-5, rtol=0)
    accuracies = [h["eval_accuracy"] for h in live_result.eval_history]
    assert [h["eval_accuracy"] for h in cached.eval_history] == accuracies
    assert [h["step"] for h in cached.eval_history] == [10, 20, 25]
    # The recorded learning rates are the schedule's.
    expected = [closed_form_lr(s, 25, config.warmup_steps, 1e-2) for s in range(25)]
    np.testing.assert_allclose(cached.lrs, expected, rtol=1e-12)
    assert cached.n_trainable == 2 * loaded.hidden_size + 2
    # The backbone really stayed frozen: nothing but the head has a gradient.
    assert all(p.grad is None for p in loaded.model.parameters())


def test_linear_head_beats_chance_and_evaluate_counts_correctly(tiny_llama, toy_csv):
    loaded, train, held_out = _toy_train_eval(toy_csv, tiny_llama)
    model = SequenceClassifier(loaded.model, loaded.hidden_size, 2)
    train_x, eval_x = pooled_features(model, train, 512), pooled_features(model, held_out, 512)
    config = TrainConfig(steps=300, batch_size=8, lr=1e-2, eval_interval=100)
    head, result = train_linear_head(train_x, train.labels, eval_x, held_out.labels, 2, config)
    with torch.no_grad():
        logits = head(eval_x)
    manual = int((logits.argmax(-1) == held_out.labels).sum()) / len(held_out)
    assert result.eval_accuracy == pytest.approx(manual, abs=1e-12)
    # 36 balanced held-out texts: P(accuracy ≥ 0.65 | chance) ≈ 0.04, and the class words are learnable.
    assert result.eval_accuracy >= 0.65
    assert np.mean(result.losses[-50:]) < np.mean(result.losses[:50])
    # evaluate() on the full model gives the same accuracy as the head on cached features.
    model.head.load_state_dict(head.state_dict())
    loss, accuracy = evaluate(model, held_out, 512)
    assert accuracy == pytest.approx(manual, abs=1e-12)
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, held_out.labels)), rel=1e-4)


def test_single_split_file_holds_out_a_stratified_disjoint_fraction(toy_csv):
    train, held_out, source = load_train_eval(str(toy_csv), eval_fraction=0.25)
    whole = pd.read_csv(toy_csv)
    assert "same rows" in source
    assert not set(train.texts) & set(held_out.texts)
    assert len(train) + len(held_out) == len(whole)
    for label in (0, 1):
        share = (held_out.labels == label).sum() / (whole["label"] == label).sum()
        assert share == pytest.approx(0.25, abs=0.02)  # per-class rounding of 0.25·n_c


def test_split_column_provides_the_held_out_set(tmp_path):
    rows = make_sentences(60, seed=4)
    frame = pd.DataFrame(rows, columns=["text", "label"])
    frame["split"] = ["train"] * 40 + ["test"] * 20
    path = tmp_path / "with_split.csv"
    frame.to_csv(path, index=False)
    train, held_out, source = load_train_eval(str(path), max_samples=30)
    assert source == "split 'test'"
    assert len(held_out) == 20 and len(train) == 30
    assert set(held_out.texts) <= set(frame.text[40:])


def test_bad_training_options_are_refused(toy_csv):
    cases = [
        ({"steps": 0}, "`steps`"),
        ({"batch_size": 0}, "`batch_size`"),
        ({"lr": 0.0}, "`lr`"),
        ({"lr": float("nan")}, "`lr`"),
        ({"eval_interval": 0}, "`eval_interval`"),
    ]
    for kwargs, option in cases:
        with pytest.raises(PerceptAlignError, match=option):
            TrainConfig(**kwargs)
    with pytest.raises(PerceptAlignError, match="`eval_fraction`"):
        load_train_eval(str(toy_csv), eval_fraction=1.0)
    with pytest.raises(PerceptAlignError, match="`device`"):
        resolve_device("warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(PerceptAlignError, match="no CUDA"):
            resolve_device("cuda")


def test_loss_curve_chunks_preserve_the_mean():
    losses = list(np.random.default_rng(0).random(1234))
    curve = loss_curve(losses, points=100)
    assert len(curve["step"]) == 100 and curve["step"][-1] == 1234
    sizes = np.diff([0, *curve["step"]])
    assert np.sum(np.asarray(curve["loss"]) * sizes) / 1234 == pytest.approx(np.mean(losses), rel=1e-12)
    short = loss_curve([1.0, 3.0], points=100)
    assert short == {"step": [1, 2], "loss": [1.0, 3.0]}

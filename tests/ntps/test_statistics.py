"""The streaming NTPS moments against the published dense formula, plus merge, persistence and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import perceptalign.io as pio
from perceptalign.io import PerceptAlignError
from perceptalign.ntps.statistics import (
    STAT_KEYS,
    LayerStatistics,
    StatisticsAccumulator,
    dense_reference_statistics,
    load_statistics,
    save_statistics,
)
from perceptalign.ntps.statistics.kernels import _BatchPlan

D, C = 12, 3
LAYERS = [0, 2, 5]


def make_batch(
    lengths: list[int],
    T: int,
    side: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    n_layers: int = 3,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Random hidden states with a non-zero mean (as real LMs have), a padding mask and labels."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.zeros(B, T, dtype=torch.int64)
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
        elif side == "left":
            mask[i, T - n :] = 1
        else:  # a mask with holes: real tokens scattered over the row
            mask[i, torch.randperm(T, generator=g)[:n]] = 1
    offsets = [0.5 * torch.randn(D, generator=g) for _ in range(n_layers)]
    hidden = [(torch.randn(B, T, D, generator=g) + off).to(dtype) for off in offsets]
    labels = torch.randint(0, C, (B,), generator=g)
    return hidden, mask, labels


def dense(hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> LayerStatistics:
    rows = [hidden[i][mask[i].bool()] for i in range(hidden.shape[0])]
    return dense_reference_statistics(rows, labels, C)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# Lengths cross the 32-token scan chunk (1, 2, 31, 32, 33, 70) and include 1-token texts.
LENGTHS = [70, 1, 2, 31, 32, 33, 5, 1, 64]


@pytest.mark.parametrize("side", ["right", "left", "holes"])
def test_streaming_equals_dense_formula_float64(side: str) -> None:
    hidden, mask, labels = make_batch(LENGTHS, 70, side)
    acc = StatisticsAccumulator(LAYERS, D, C)
    acc.update(hidden, mask, labels)
    stats = acc.finalize()
    assert acc.n_texts == len(LENGTHS) and acc.n_tokens == sum(LENGTHS)
    for layer, h in zip(LAYERS, hidden, strict=True):
        ref = dense(h, mask, labels)
        for key in STAT_KEYS:
            # Both sides sum the same float64 terms in different orders: relative error ~ n·eps ≈ 1e-13.
            assert max_rel_err(getattr(stats[layer], key), getattr(ref, key)) < 1e-10, (layer, key)
        assert torch.equal(stats[layer].C0, stats[layer].C0.T)
        assert torch.equal(stats[layer].M_xx, stats[layer].M_xx.T)


@pytest.mark.parametrize("side", ["right", "left", "holes"])
@pytest.mark.parametrize("T", [51, 53, 5, 67])
def test_odd_batch_widths_scan_in_place_and_match(side: str, T: int) -> None:
    """T with no preferred chunk dividing it: a divisor chunk (51 = 3·17), the whole row (53, 5), or,
    for a prime above 64, the padded fallback (67) — all equal to the dense formula."""
    lengths = [T, max(1, T - 9), 1, T, max(1, T // 2)]
    hidden, mask, labels = make_batch(lengths, T, side, seed=T)
    plan = _BatchPlan(mask.bool(), labels, C)
    assert (plan.padded_T == T) == (T != 67)
    acc = StatisticsAccumulator(LAYERS, D, C)
    acc.update(hidden, mask, labels)
    for layer, h in zip(LAYERS, hidden, strict=True):
        ref = dense(h, mask, labels)
        for key in STAT_KEYS:
            # Same float64 terms summed in another order: ~n·eps relative.
            assert max_rel_err(getattr(acc.finalize()[layer], key), getattr(ref, key)) < 1e-10, (layer, key)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("T", [64, 61, 40])
def test_dense_batches_use_copy_free_path_and_match(side: str, T: int) -> None:
    # Length-sorted batches (little padding) take the shifted-row path; T = 40 picks the chunk 8 and
    # T = 61 (prime, ≤ 64) one chunk of the whole row, so neither pads rows.
    lengths = [T, T, T - 1, T, T - 2, T]
    hidden, mask, labels = make_batch(lengths, T, side, seed=T)
    plan = _BatchPlan(mask.bool(), labels, C)
    assert plan.flat and plan.padded_T - T < 8
    acc = StatisticsAccumulator(LAYERS, D, C)
    acc.update(hidden, mask, labels)
    for layer, h in zip(LAYERS, hidden, strict=True):
        ref = dense(h, mask, labels)
        for key in STAT_KEYS:
            assert max_rel_err(getattr(acc.finalize()[layer], key), getattr(ref, key)) < 1e-10, (layer, key)


@pytest.mark.parametrize("side", ["right", "left"])
def test_nan_in_padding_of_a_dense_batch_is_ignored(side: str) -> None:
    # The copy-free path reads padding rows; NaN there must trigger the masked recomputation, not an error.
    lengths = [64, 63, 64, 62, 64, 64, 64, 64, 64, 64]
    hidden, mask, labels = make_batch(lengths, 64, side, n_layers=1)
    assert _BatchPlan(mask.bool(), labels, C).flat
    clean = StatisticsAccumulator([0], D, C)
    clean.update(hidden, mask, labels)
    dirty = hidden[0].clone()
    dirty[~mask.bool()] = float("nan")
    acc = StatisticsAccumulator([0], D, C)
    acc.update([dirty], mask, labels)
    for key, value in clean.sums().items():
        assert torch.equal(acc.sums()[key], value), key


def test_padding_side_does_not_matter_and_padding_content_is_ignored() -> None:
    hidden, mask_r, labels = make_batch(LENGTHS, 70, "right", n_layers=1)
    h = hidden[0]
    # The same texts, left padded: move each row's real tokens to the end and fill padding with NaN.
    h_left = torch.full_like(h, float("nan"))
    mask_l = torch.zeros_like(mask_r)
    for i, n in enumerate(LENGTHS):
        h_left[i, 70 - n :] = h[i, :n]
        mask_l[i, 70 - n :] = 1
    right, left = StatisticsAccumulator([3], D, C), StatisticsAccumulator([3], D, C)
    right.update([h], mask_r, labels)
    left.update([h_left], mask_l, labels)
    for key in STAT_KEYS:
        a, b = getattr(right.finalize()[3], key), getattr(left.finalize()[3], key)
        assert torch.isfinite(b).all()
        assert max_rel_err(b, a) < 1e-12  # same float64 sums, different chunk alignment


def test_single_token_texts_add_to_means_but_not_to_c0_c1() -> None:
    hidden, mask, labels = make_batch([1, 1, 1, 1], 5, "left", n_layers=1)
    acc = StatisticsAccumulator([0], D, C)
    acc.update(hidden, mask, labels)
    stats = acc.finalize()[0]
    assert torch.count_nonzero(stats.C0) == 0 and torch.count_nonzero(stats.C1) == 0
    rows = hidden[0][mask.bool()]  # the single token is the mean of its text
    torch.testing.assert_close(stats.M_xx, rows.T @ rows / 4, rtol=1e-12, atol=0)
    # Adding 1-token texts to a batch changes M_xx/M_xy but leaves the C0/C1 sums unchanged.
    long_hidden, long_mask, long_labels = make_batch([9, 4], 9, "right", seed=1, n_layers=1)
    a = StatisticsAccumulator([0], D, C)
    a.update(long_hidden, long_mask, long_labels)
    b = StatisticsAccumulator([0], D, C)
    b.update(long_hidden, long_mask, long_labels)
    b.update(hidden, mask, labels)
    assert torch.equal(a.sums()["layer0.C0"], b.sums()["layer0.C0"])
    assert torch.equal(a.sums()["layer0.C1"], b.sums()["layer0.C1"])
    assert not torch.equal(a.sums()["layer0.M_xx"], b.sums()["layer0.M_xx"])


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("lengths", [[200, 3, 150, 64, 1, 199], [200, 200, 199, 200, 198, 200]])
def test_float32_input_close_to_float64(side: str, lengths: list[int]) -> None:
    hidden64, mask, labels = make_batch(lengths, 200, side, n_layers=1)
    h32 = hidden64[0].float()
    exact, approx = StatisticsAccumulator([0], D, C), StatisticsAccumulator([0], D, C)
    exact.update([h32.double()], mask, labels)  # the float32 values, summed exactly(ish) in float64
    approx.update([h32], mask, labels)
    e, a = exact.finalize()[0], approx.finalize()[0]
    # Error bound: prefix sums carry ≤ (32 + 2)·u relative error in |·|-sums (32-term chunk matmul, one
    # float32 rounding of the float64 carry, one of the addition); the K-term float32 product adds ≤ K·u.
    # So |Ĉ − C| ≤ (K + 2·34)·u·Σ|S||S| (+ negligible second-order terms), u = 2⁻²⁴; factor 2 slack.
    u = 2.0**-24
    rows = [h32.double()[i][mask[i].bool()] for i in range(len(lengths))]
    K = sum(n - 1 for n in lengths)
    absS = torch.cat([r.abs().cumsum(0)[:-1] for r in rows if len(r) > 1])
    absH = torch.cat([r.abs()[1:] for r in rows if len(r) > 1])
    n = len(lengths)
    bound0 = 2 * (K + 68) * u * (absS.T @ absS) / n
    bound1 = 2 * (K + 68) * u * (absS.T @ absH) / n
    assert ((a.C0 - e.C0).abs() <= bound0).all()
    assert ((a.C1 - e.C1).abs() <= bound1).all()
    # Means come from the float64 carry of 32-term float32 chunk sums: ≤ 34·u relative in |·|-sums.
    assert max_rel_err(a.M_xx, e.M_xx) < 2 * 34 * u * 10
    # and the error is not trivially zero: products really ran in float32 (not silently in float64)
    assert not torch.equal(a.C1, e.C1)


def test_compute_dtype_float64_matches_float64_input() -> None:
    hidden, mask, labels = make_batch(LENGTHS, 70, "left", n_layers=1, dtype=torch.float32)
    forced = StatisticsAccumulator([0], D, C, compute_dtype=torch.float64)
    forced.update(hidden, mask, labels)
    ref = StatisticsAccumulator([0], D, C)
    ref.update([hidden[0].double()], mask, labels)
    for key, value in forced.sums().items():
        torch.testing.assert_close(value, ref.sums()[key], rtol=0, atol=0)


def test_half_precision_inputs_are_upcast() -> None:
    hidden, mask, labels = make_batch(LENGTHS, 70, "right", n_layers=1)
    for dtype in (torch.float16, torch.bfloat16):
        h = hidden[0].to(dtype)
        acc, ref = StatisticsAccumulator([0], D, C), StatisticsAccumulator([0], D, C)
        acc.update([h], mask, labels)
        ref.update([h.double()], mask, labels)  # same rounded inputs, exact arithmetic
        # Products run in float32 (not in the half dtype, whose 8–11-bit mantissa would give ~1e-2 errors).
        assert max_rel_err(acc.finalize()[0].C0, ref.finalize()[0].C0) < 1e-5


def test_merge_is_additive_and_order_invariant() -> None:
    hidden, mask, labels = make_batch(LENGTHS, 70, "left")
    whole = StatisticsAccumulator(LAYERS, D, C)
    whole.update(hidden, mask, labels)
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(len(LENGTHS), generator=g)
    parts = [perm[:2], perm[2:3], perm[3:]]
    accs = []
    for idx in parts:
        acc = StatisticsAccumulator(LAYERS, D, C)
        # each part also trims padding to its own longest text, as a length-bucketing loader would
        acc.update([h[idx] for h in hidden], mask[idx], labels[idx])
        accs.append(acc)
    forward = StatisticsAccumulator(LAYERS, D, C)
    for acc in accs:
        forward += acc
    backward = accs[2] + accs[1] + accs[0]
    for merged in (forward, backward):
        assert merged.n_texts == whole.n_texts and merged.n_tokens == whole.n_tokens
        for key, value in whole.sums().items():
            # float64 sums of the same terms grouped differently: ~1e-15 relative
            torch.testing.assert_close(merged.sums()[key], value, rtol=1e-12, atol=1e-12)
    # __add__ does not modify its operands
    assert accs[2].n_texts == len(parts[2])


def test_merge_refuses_mismatched_settings() -> None:
    base = StatisticsAccumulator([0, 1], D, C)
    for other, name in [
        (StatisticsAccumulator([0, 2], D, C), "layers"),
        (StatisticsAccumulator([0, 1], D + 1, C), "hidden_size"),
        (StatisticsAccumulator([0, 1], D, C + 1), "n_classes"),
    ]:
        with pytest.raises(PerceptAlignError, match=name):
            base.merge(other)


def test_sums_round_trip_and_finalize_divides_by_n() -> None:
    hidden, mask, labels = make_batch(LENGTHS, 70, "right")
    acc = StatisticsAccumulator([5, 0, 2], D, C)  # unsorted layer order must survive
    acc.update(hidden, mask, labels)
    sums = acc.sums()
    assert set(sums) == {f"layer{l}.{k}" for l in (0, 2, 5) for k in STAT_KEYS} | {"n_texts", "n_tokens"}
    assert all(v.dtype == torch.float64 for k, v in sums.items() if k.startswith("layer"))
    back = StatisticsAccumulator.from_sums(sums, layers=acc.layers)
    assert back.layers == [5, 0, 2] and back.n_texts == acc.n_texts and back.n_tokens == acc.n_tokens
    for key, value in back.sums().items():
        assert torch.equal(value, sums[key])
    final = acc.finalize()
    for layer in acc.layers:
        for key in STAT_KEYS:
            torch.testing.assert_close(
                getattr(final[layer], key), sums[f"layer{layer}.{key}"] / len(LENGTHS), rtol=0, atol=0
            )


def test_from_sums_refuses_incomplete_sums() -> None:
    acc = StatisticsAccumulator([0], D, C)
    sums = acc.sums()
    del sums["layer0.C1"]
    with pytest.raises(PerceptAlignError, match="C1"):
        StatisticsAccumulator.from_sums(sums)
    sums = acc.sums()
    del sums["n_texts"]
    with pytest.raises(PerceptAlignError, match="n_texts"):
        StatisticsAccumulator.from_sums(sums)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    hidden, mask, labels = make_batch(LENGTHS, 70, "left")
    acc = StatisticsAccumulator([5, 0, 2], D, C)
    acc.update(hidden, mask, labels)
    path = tmp_path / "ckpt" / "stats.safetensors"
    acc.save_checkpoint(path, {"next_batch": 7, "fingerprint": "abc"})
    back, extra = StatisticsAccumulator.load_checkpoint(path)
    assert extra == {"next_batch": 7, "fingerprint": "abc"}
    assert back.layers == acc.layers and back.n_tokens == acc.n_tokens
    for key, value in acc.sums().items():
        assert torch.equal(back.sums()[key], value)
    # resuming continues to add correctly
    back.update(hidden, mask, labels)
    acc.update(hidden, mask, labels)
    assert torch.equal(back.sums()["layer2.C1"], acc.sums()["layer2.C1"])


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, mask, labels = make_batch(LENGTHS, 70, "left")
    acc = StatisticsAccumulator(LAYERS, D, C)
    acc.update(hidden, mask, labels)
    path = tmp_path / "stats.safetensors"
    acc.save_checkpoint(path, {"next_batch": 1})
    before = path.read_bytes()

    def crash(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"partial")  # half a file, then the process "dies"
        raise OSError("disk full")

    import safetensors.torch  # perceptalign.io imports save_file from here at call time

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    acc.update(hidden, mask, labels)
    with pytest.raises(OSError, match="disk full"):
        acc.save_checkpoint(path, {"next_batch": 2})
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["stats.safetensors"]  # no temporary left behind
    assert StatisticsAccumulator.load_checkpoint(path)[1] == {"next_batch": 1}


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(PerceptAlignError, match="no statistics checkpoint"):
        StatisticsAccumulator.load_checkpoint(tmp_path / "missing.safetensors")
    pio.save_tensors_atomic(tmp_path / "other.safetensors", {"x": torch.zeros(2)})
    with pytest.raises(PerceptAlignError, match="not a statistics checkpoint"):
        StatisticsAccumulator.load_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(PerceptAlignError, match="JSON"):
        StatisticsAccumulator([0], D, C).save_checkpoint(tmp_path / "x.safetensors", {"bad": object()})


METADATA = {
    "model": "smollm2-135m",
    "model_fingerprint": "f00d",
    "dataset": "vader-movies",
    "split": "train",
    "n_texts": 9,
    "n_tokens": 308,
    "n_classes": C,
    "class_names": ("neg", "neu", "pos"),
    "max_length": 128,
    "padding_side": "left",
    "dtype": torch.float32,
    "tokenizer_add_bos": True,
}


def _stats() -> dict[int, LayerStatistics]:
    hidden, mask, labels = make_batch(LENGTHS, 70, "left")
    acc = StatisticsAccumulator(LAYERS, D, C)
    acc.update(hidden, mask, labels)
    return acc.finalize()


@pytest.mark.parametrize("target", ["dir", "stats.safetensors"])
def test_save_load_statistics_round_trip(tmp_path: Path, target: str) -> None:
    stats = _stats()
    path = tmp_path / target
    save_statistics(path, stats, METADATA)
    loaded, meta = load_statistics(path, expected={**METADATA, "layers": [5, 0]})
    assert sorted(loaded) == [0, 5]
    for layer in loaded:
        for key in STAT_KEYS:
            assert torch.equal(getattr(loaded[layer], key), getattr(stats[layer], key))
    assert meta["layers"] == LAYERS and meta["dtype"] == "float32"
    assert meta["class_names"] == ["neg", "neu", "pos"]
    json_name = "statistics.json" if target == "dir" else "stats.json"
    assert (tmp_path / target if target == "dir" else tmp_path).joinpath(json_name).is_file()
    assert load_statistics(path)[0].keys() == stats.keys()  # without expectations, everything


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model", "qwen2-0.5b"),
        ("dataset", "imdb"),
        ("max_length", 256),
        ("tokenizer_add_bos", False),
        ("model_fingerprint", "beef"),
        ("padding_side", "right"),
        ("max_samples", 100),
    ],
)
def test_load_statistics_refuses_other_settings(tmp_path: Path, key: str, value: object) -> None:
    save_statistics(tmp_path, _stats(), METADATA)
    with pytest.raises(PerceptAlignError) as info:
        load_statistics(tmp_path, expected={**METADATA, key: value})
    message = str(info.value)
    assert key in message and repr(value) in message and "`overwrite`" in message


def test_load_statistics_missing_layers_and_broken_cache(tmp_path: Path) -> None:
    save_statistics(tmp_path, _stats(), METADATA)
    with pytest.raises(PerceptAlignError, match=r"layers \[7\]"):
        load_statistics(tmp_path, expected={**METADATA, "layers": [0, 7]})
    # new tensors with old metadata (a crash between the two writes) is detected
    old_meta = (tmp_path / "statistics.json").read_text()
    save_statistics(tmp_path, _stats(), METADATA)
    (tmp_path / "statistics.json").write_text(old_meta)
    with pytest.raises(PerceptAlignError, match="not written together"):
        load_statistics(tmp_path)
    with pytest.raises(PerceptAlignError, match="no statistics cache"):
        load_statistics(tmp_path / "nowhere")
    assert json.loads(old_meta)["n_texts"] == 9


def test_nan_and_inf_errors_name_layer_and_hint_dtype() -> None:
    hidden, mask, labels = make_batch(LENGTHS, 70, "right")
    bad = [h.clone() for h in hidden]
    bad[1][3, 2, 0] = float("nan")  # a real token of text 3, layer index 2
    acc = StatisticsAccumulator(LAYERS, D, C)
    with pytest.raises(PerceptAlignError, match="layer 2") as info:
        acc.update(bad, mask, labels)
    assert "float16" not in str(info.value)
    # layer 0 had already been added: the accumulator now refuses to be used or saved
    with pytest.raises(PerceptAlignError, match=r"inconsistent.*checkpoint"):
        acc.sums()
    with pytest.raises(PerceptAlignError, match="inconsistent"):
        acc.update(hidden, mask, labels)

    half = [h.to(torch.float16) for h in hidden]
    half[0][0, 5, 1] = float("inf")  # first layer: nothing was added, the accumulator stays usable
    acc = StatisticsAccumulator(LAYERS, D, C)
    with pytest.raises(PerceptAlignError, match=r"layer 0.*`dtype` float32 or `dtype` bfloat16"):
        acc.update(half, mask, labels)
    assert acc.n_texts == 0 and all(torch.count_nonzero(v) == 0 for v in acc.sums().values())
    acc.update(hidden, mask, labels)
    assert acc.n_texts == len(LENGTHS)


def test_float32_overflow_in_products_is_reported() -> None:
    hidden, mask, labels = make_batch([60, 50], 60, "right", n_layers=1, dtype=torch.float32)
    big = hidden[0] * 1e17  # finite in float32 (max 3.4e38), but S·Sᵀ ~ (60·1e17)² overflows float32
    acc = StatisticsAccumulator([0], D, C, block_pairs=0)  # each batch is checked as it is added
    with pytest.raises(PerceptAlignError, match=r"overflow.*float64 products"):
        acc.update([big], mask, labels)
    # forcing float64 products handles the same input
    acc64 = StatisticsAccumulator([0], D, C, compute_dtype=torch.float64)
    acc64.update([big], mask, labels)
    assert torch.isfinite(acc64.finalize()[0].C0).all()


def test_input_errors() -> None:
    hidden, mask, labels = make_batch([3, 2], 4, "right")
    acc = StatisticsAccumulator(LAYERS, D, C)
    with pytest.raises(PerceptAlignError, match="outside"):
        acc.update(hidden, mask, torch.tensor([0, C]))
    with pytest.raises(PerceptAlignError, match="outside"):
        acc.update(hidden, mask, torch.tensor([-1, 0]))
    with pytest.raises(PerceptAlignError, match="integer"):
        acc.update(hidden, mask, torch.tensor([0.0, 1.0]))
    with pytest.raises(PerceptAlignError, match="length B"):
        acc.update(hidden, mask, torch.tensor([0]))
    with pytest.raises(PerceptAlignError, match="3 layers"):
        acc.update(hidden[:2], mask, labels)
    with pytest.raises(PerceptAlignError, match=r"layer 2 have shape"):
        acc.update([hidden[0], hidden[1][:, :3], hidden[2]], mask, labels)
    with pytest.raises(PerceptAlignError, match="expected"):
        acc.update([h[..., :5] for h in hidden], mask, labels)
    with pytest.raises(PerceptAlignError, match="B×T×d"):
        acc.update([h[0] for h in hidden], mask, labels)
    with pytest.raises(PerceptAlignError, match="only 0 and 1"):
        acc.update(hidden, mask * 2, labels)
    with pytest.raises(PerceptAlignError, match="B×T"):
        acc.update(hidden, mask[0], labels)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(PerceptAlignError, match=r"position\(s\) \[1\] have no real tokens"):
        acc.update(hidden, empty, labels)
    with pytest.raises(PerceptAlignError, match="no texts"):
        acc.finalize()
    assert acc.n_texts == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": []}, "at least one"),
        ({"layers": [0, 0]}, "duplicate"),
        ({"layers": [-1]}, "non-negative"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"n_classes": 0}, "n_classes"),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    args = {"layers": [0], "hidden_size": D, "n_classes": C, **kwargs}
    with pytest.raises(PerceptAlignError, match=match):
        StatisticsAccumulator(**args)


def test_dense_reference_matches_textbook_sums() -> None:
    # The reference itself, against the literal definition Σ_t S_t S_tᵀ with explicit loops (tiny case).
    g = torch.Generator().manual_seed(5)
    texts = [torch.randn(n, 4, generator=g, dtype=torch.float64) for n in (1, 4, 2)]
    ref = dense_reference_statistics(texts, [0, 1, 1], 2)
    C0 = torch.zeros(4, 4, dtype=torch.float64)
    C1 = torch.zeros(4, 4, dtype=torch.float64)
    for H in texts:
        for t in range(H.shape[0] - 1):
            S = H[: t + 1].sum(0)
            C0 += torch.outer(S, S)
            C1 += torch.outer(S, H[t + 1])
    torch.testing.assert_close(ref.C0, C0 / 3, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(ref.C1, C1 / 3, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(ref.M_xy[:, 1], (texts[1].mean(0) + texts[2].mean(0)) / 3, rtol=1e-14, atol=0)


def test_batches_of_changing_shape_reuse_scratch_buffers_correctly() -> None:
    # One accumulator, batches that grow, shrink and change dtype: the reused scratch buffers must never
    # leak values of an earlier batch (e.g. stale rows past a shorter T).
    acc = StatisticsAccumulator([0], D, C)
    all_rows: list[torch.Tensor] = []
    all_labels: list[torch.Tensor] = []
    for seed, (lengths, T, side, dtype) in enumerate(
        [
            ([90, 7, 64], 90, "left", torch.float64),
            ([3, 2], 3, "right", torch.float64),
            ([40, 33, 1], 45, "right", torch.float32),
            ([65, 31], 65, "left", torch.float64),
        ]
    ):
        hidden, mask, labels = make_batch(lengths, T, side, seed=seed, dtype=dtype, n_layers=1)
        acc.update(hidden, mask, labels)
        all_rows += [hidden[0][i][mask[i].bool()].double() for i in range(len(lengths))]
        all_labels.append(labels)
    ref = dense_reference_statistics(all_rows, torch.cat(all_labels), C)
    got = acc.finalize()[0]
    for key in STAT_KEYS:
        # one float32 batch among float64 ones: its products carry ~1e-6 relative error (see the bound above)
        assert max_rel_err(getattr(got, key), getattr(ref, key)) < 1e-5, key


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_any_split_and_order_gives_the_same_sums(data: st.DataObject) -> None:
    lengths = data.draw(st.lists(st.integers(1, 40), min_size=2, max_size=8), label="lengths")
    side = data.draw(st.sampled_from(["left", "right", "holes"]), label="side")
    hidden, mask, labels = make_batch(lengths, max(lengths), side, n_layers=1)
    whole = StatisticsAccumulator([0], D, C)
    whole.update(hidden, mask, labels)
    # an arbitrary assignment of texts to shards, merged in an arbitrary order
    shard_of = data.draw(
        st.lists(st.integers(0, 2), min_size=len(lengths), max_size=len(lengths)), label="shards"
    )
    order = data.draw(st.permutations([0, 1, 2]), label="order")
    shards = []
    for shard in order:
        idx = torch.tensor([i for i, s in enumerate(shard_of) if s == shard], dtype=torch.long)
        acc = StatisticsAccumulator([0], D, C)
        if len(idx):
            acc.update([hidden[0][idx]], mask[idx], labels[idx])
        shards.append(acc)
    merged = shards[0] + shards[1] + shards[2]
    assert merged.n_texts == whole.n_texts and merged.n_tokens == whole.n_tokens
    for key, value in whole.sums().items():
        # identical float64 terms, grouped differently: agreement to ~1e-15 relative
        torch.testing.assert_close(merged.sums()[key], value, rtol=1e-12, atol=1e-12)


def _wide_batches(dtype: torch.dtype, d: int = 200, n_batches: int = 5):
    """Batches wide enough (d = 200) for C0's product to be split into two upper blocks."""
    g = torch.Generator().manual_seed(7)
    out = []
    for b in range(n_batches):
        lengths = torch.randint(1, 30, (6,), generator=g).tolist()
        T = max(lengths) + b % 3  # some padding, alternating sides
        mask = torch.zeros(len(lengths), T, dtype=torch.int64)
        for i, n in enumerate(lengths):
            if b % 2:
                mask[i, T - n :] = 1
            else:
                mask[i, :n] = 1
        hidden = [(torch.randn(len(lengths), T, d, generator=g) + 0.3).to(dtype) for _ in range(2)]
        out.append((hidden, mask, torch.randint(0, C, (len(lengths),), generator=g)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_product_blocks_spanning_batches_equal_per_batch_sums(dtype: torch.dtype) -> None:
    batches = _wide_batches(dtype)
    one_block = StatisticsAccumulator([0, 1], 200, C, block_pairs=10**9)  # never full: one block
    per_batch = StatisticsAccumulator([0, 1], 200, C, block_pairs=0)  # every batch added at once
    for hidden, mask, labels in batches:
        one_block.update(hidden, mask, labels)
        per_batch.update(hidden, mask, labels)
        assert not one_block.at_block_boundary and per_batch.at_block_boundary
    blocked, each = one_block.finalize(), per_batch.finalize()
    assert one_block.at_block_boundary  # finalize added the pending block
    labels = torch.cat([y for _, _, y in batches])
    exact = {}
    for layer in (0, 1):
        rows = [hs[layer][i][mask[i].bool()].double() for hs, mask, _ in batches for i in range(len(mask))]
        exact[layer] = dense_reference_statistics(rows, labels, C)
    # float64: only the summation order differs (~1e-15 relative). float32: each float32 sum of K ≲ 600
    # terms is off by ≲ √K·6e-8 ≈ 1.5e-6 relative, whether the K terms sit in one batch or in five.
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for layer in (0, 1):
        for key in STAT_KEYS:
            got, ref = getattr(blocked[layer], key), getattr(exact[layer], key)
            assert max_rel_err(got, ref) < tol, (layer, key)
            assert max_rel_err(getattr(each[layer], key), ref) < tol, (layer, key)
        assert torch.equal(blocked[layer].C0, blocked[layer].C0.T)


def test_product_blocks_flush_when_they_hold_enough_pairs() -> None:
    batches = _wide_batches(torch.float32, n_batches=4)
    pairs = [int(m.sum()) - m.shape[0] for _, m, _ in batches]  # real tokens minus one per text
    block = max(pairs[0], pairs[2]) + 1
    assert pairs[0] + pairs[1] >= block  # the data must fill a block in two batches for this test
    acc = StatisticsAccumulator([0, 1], 200, C, block_pairs=block)
    acc.update(*batches[0])
    assert not acc.at_block_boundary  # short of a block
    acc.update(*batches[1])
    assert acc.at_block_boundary  # the block was added into the float64 sums
    acc.update(*batches[2])
    assert not acc.at_block_boundary


def test_overflow_in_a_pending_block_breaks_the_accumulator() -> None:
    hidden, mask, labels = make_batch([60, 50], 60, "right", n_layers=1, dtype=torch.float32)
    acc = StatisticsAccumulator([0], D, C)
    acc.update(hidden, mask, labels)  # pending: this batch's products are not in the float64 sums yet
    acc.update([hidden[0] * 1e17], mask, labels)  # overflows inside the pending block
    with pytest.raises(PerceptAlignError, match="overflow"):  # found when the block is added
        acc.finalize()
    with pytest.raises(PerceptAlignError, match="overflowed"):  # the first batch was lost with the block
        acc.sums()


def test_checkpoint_keeps_the_block_size_and_adds_the_pending_block(tmp_path: Path) -> None:
    hidden, mask, labels = make_batch(LENGTHS, 70, "right", dtype=torch.float32)
    acc = StatisticsAccumulator(LAYERS, D, C, block_pairs=12345)
    acc.update(hidden, mask, labels)
    assert not acc.at_block_boundary
    acc.save_checkpoint(tmp_path / "ck.safetensors")
    assert acc.at_block_boundary
    restored, _ = StatisticsAccumulator.load_checkpoint(tmp_path / "ck.safetensors")
    assert restored.block_pairs == 12345
    for key, value in acc.sums().items():
        assert torch.equal(restored.sums()[key], value), key
    with pytest.raises(PerceptAlignError, match="block_pairs"):
        StatisticsAccumulator(LAYERS, D, C, block_pairs=-1)


def test_text_means_wait_in_a_buffer_and_fold_into_m_xx(monkeypatch: pytest.MonkeyPatch) -> None:
    # M_xx is made from buffered float64 text means; a 5-row buffer makes the folds happen inside this
    # test: batches of 3 and 4 texts do not fit together (the 3 are folded first), 7 texts need a bigger
    # buffer, and a huge block keeps C0/C1 pending throughout, so only the means fold mid-stream.
    import perceptalign.ntps.statistics.accumulator as accumulator

    monkeypatch.setattr(accumulator, "_MEANS_ROWS", 5)
    sizes, pending_after = [3, 4, 7, 2], [3, 4, 7, 2]
    batches = [make_batch([9, 1, 4, 7, 2, 8, 5][:n], 9, "right", seed=n) for n in sizes]
    acc = StatisticsAccumulator(LAYERS, D, C, block_pairs=10**9)
    for (hidden, mask, labels), rows in zip(batches, pending_after, strict=True):
        acc.update(hidden, mask, labels)
        assert acc._means_rows == rows and not acc.at_block_boundary
    stats = acc.finalize()
    assert acc.at_block_boundary
    labels = torch.cat([y for _, _, y in batches])
    for position, layer in enumerate(LAYERS):
        rows = [h[position][i][m[i].bool()] for h, m, _ in batches for i in range(len(m))]
        ref = dense_reference_statistics(rows, labels, C)
        for key in STAT_KEYS:
            # float64 throughout; only the summation order differs (~1e-15 relative)
            assert max_rel_err(getattr(stats[layer], key), getattr(ref, key)) < 1e-12, (layer, key)

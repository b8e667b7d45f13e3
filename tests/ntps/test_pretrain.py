"""From-scratch zoo: corpus filtering and determinism, BPE round trip, schedule, packing, learning, resume."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.corpus import (
    EOT_TOKEN,
    OverlapIndex,
    RawDocument,
    assemble_corpus,
    encode_stream,
    normalized_words,
    train_bpe_tokenizer,
)
from perceptalign.ntps.pretrain import (
    RECORD_FILE,
    PackedWindows,
    PretrainConfig,
    build_model,
    count_parameters,
    learning_rate,
    resolve_pretrained_alias,
    train_causal_lm,
    unigram_loss,
)
from tests.conftest import make_sentences

HELD_OUT = [
    "the quick brown fox jumps over the lazy dog near the river bank",  # 13 words
    "a truly wonderful and moving film",  # 6 words: matched when contained
    "Hi there",  # 2 words: matched only as a whole line
]


def _norm(text: str) -> str:
    return " ".join(normalized_words(text))


# ------------------------------------------------------------------------------------------------- corpus


def test_overlap_index_rules() -> None:
    index = OverlapIndex(HELD_OUT)
    # a shared 8-word window, even inside a longer line and with other casing/punctuation
    assert index.overlaps("Yesterday THE quick brown fox jumps over the lazy dog, they said.")
    # 7 shared words is below the window: a common phrase, not a copy
    assert not index.overlaps("quick brown fox jumps over the lazy cat sleeps")
    # a whole 6-word held-out text contained in a line
    assert index.overlaps("Honestly, a truly wonderful and moving film indeed.")
    assert not index.overlaps("a truly wonderful and moving")  # only part of it
    # a 2-word held-out text matches only as the whole line
    assert index.overlaps("hi, there!")
    assert not index.overlaps("hi there, how are you")
    assert not index.overlaps("")


def test_overlap_index_rejects_bad_settings() -> None:
    with pytest.raises(PerceptAlignError, match="min_contained"):
        OverlapIndex(HELD_OUT, n=4, min_contained=6)


def _documents(seed: int = 0) -> list[RawDocument]:
    rows = [RawDocument(s, "train:toy") for s, _ in make_sentences(300, seed=seed)]
    rows.append(
        RawDocument("Line one is fine.\nwe saw the quick brown fox jumps over the lazy dog today\nEnd.", "x")
    )
    rows.append(RawDocument("Hi there", "x"))
    rows.append(RawDocument("A   Brand new DOCUMENT here.", "x"))
    rows.append(RawDocument("a brand new document here", "x"))  # same words: a duplicate
    return rows


def test_assemble_corpus_filters_lines_dedups_and_is_deterministic() -> None:
    docs = _documents()
    corpus = assemble_corpus(docs, HELD_OUT)
    again = assemble_corpus(docs, list(reversed(HELD_OUT)))
    assert corpus.texts == again.texts and corpus.sha256 == again.sha256
    # the contaminated line is dropped, the rest of its document kept
    assert "Line one is fine.\nEnd." in corpus.texts
    assert "Hi there" not in corpus.texts
    # independent check: no held-out text (normalised) is a substring of any normalised document
    joined = "\n".join(" " + _norm(t) + " " for t in corpus.texts)
    for held in HELD_OUT:
        assert " " + _norm(held) + " " not in joined
    keys = [_norm(t) for t in corpus.texts]
    assert len(keys) == len(set(keys))  # deduplicated on normalised words
    assert corpus.meta["documents"] == len(corpus)
    assert corpus.meta["characters"] == sum(len(t) for t in corpus.texts)
    stats = corpus.meta["sources"]["x"]  # type: ignore[index]
    assert stats["lines_dropped_overlap"] == 2 and stats["duplicates"] == 1
    assert corpus.split("train") + corpus.split("validation") != []
    with pytest.raises(PerceptAlignError, match="corpus split"):
        corpus.split("test")


def test_validation_assignment_depends_on_content_only() -> None:
    docs = [RawDocument(f"document number {i} about topic {i % 7}", "s") for i in range(3000)]
    corpus = assemble_corpus(docs, [], validation_fraction=0.1)
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    other = assemble_corpus(shuffled, [], validation_fraction=0.1)
    assert set(corpus.split("validation")) == set(other.split("validation"))
    # hash-based Bernoulli(0.1) on 3000 docs: sd = sqrt(3000·0.1·0.9) ≈ 16.4; allow 4 sd
    assert abs(len(corpus.split("validation")) - 300) < 4 * math.sqrt(3000 * 0.1 * 0.9)
    with pytest.raises(PerceptAlignError, match="validation_fraction"):
        assemble_corpus(docs, [], validation_fraction=1.0)


# ---------------------------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer([s for s, _ in make_sentences(400, seed=1)], vocab_size=512)


def test_tokenizer_round_trip_bos_and_determinism(tokenizer) -> None:
    texts = ["the film was great", "  Ünïcödé — “quotes” 😀\n\ttabs", "x" * 50, "MIXED case, 123 numbers!"]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id == tokenizer.convert_tokens_to_ids(EOT_TOKEN)
        assert tokenizer.decode(ids[1:]) == text  # byte-level BPE is lossless
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    again = train_bpe_tokenizer([s for s, _ in make_sentences(400, seed=1)], vocab_size=512)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    stream = encode_stream(tokenizer, ["a b", "c"])
    assert stream.tolist() == tokenizer("a b")["input_ids"] + tokenizer("c")["input_ids"]
    with pytest.raises(PerceptAlignError, match="vocab_size"):
        train_bpe_tokenizer(["a"], vocab_size=100)


# --------------------------------------------------------------------------------------- recipe pieces


def test_learning_rate_schedule_matches_closed_form() -> None:
    cfg = PretrainConfig(steps=200, lr=1e-3, warmup_fraction=0.1, min_lr_ratio=0.1)
    lrs = [learning_rate(cfg, s) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-3 / 20)
    assert lrs[19] == pytest.approx(1e-3)  # end of warm-up = peak
    # halfway through the decay the cosine is at the midpoint between peak and floor
    assert learning_rate(cfg, 20 + 90) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert all(a >= b for a, b in itertools.pairwise(lrs[19:]))
    assert learning_rate(cfg, cfg.steps) == pytest.approx(1e-4)


def test_packed_windows_cover_every_target_once_per_epoch() -> None:
    stream = torch.arange(1001)
    windows = PackedWindows(stream, seq_len=10, seed=3)
    assert windows.n_windows == 100
    epoch = torch.cat([windows.batch(step, 20) for step in range(5)])  # 5 × 20 = one epoch
    targets = epoch[:, 1:].reshape(-1).sort().values
    assert torch.equal(targets, torch.arange(1, 1001))
    assert torch.equal(epoch[:, 1:] - epoch[:, :-1], torch.ones(100, 10, dtype=torch.long))  # contiguous
    # the batch of a step does not depend on which steps were asked for before
    fresh = PackedWindows(stream, seq_len=10, seed=3)
    assert torch.equal(fresh.batch(7, 20), windows.batch(7, 20))
    assert not torch.equal(PackedWindows(stream, 10, seed=4).batch(0, 20), windows.batch(0, 20))
    with pytest.raises(PerceptAlignError, match="fewer than one window"):
        PackedWindows(torch.arange(5), seq_len=10, seed=0)


def test_unigram_loss_closed_form() -> None:
    # every token of a vocabulary of 8 seen 99 times: add-one smoothing keeps it uniform → log 8
    train = torch.arange(8).repeat(99)
    assert unigram_loss(train, torch.tensor([0, 1, 2, 3]), 8) == pytest.approx(math.log(8), abs=1e-12)
    # a token never seen in train gets probability 1 / (N + V)
    assert unigram_loss(torch.zeros(10, dtype=torch.long), torch.tensor([0, 1]), 2) == pytest.approx(
        math.log(12)
    )


def _tiny_config(**kw) -> PretrainConfig:
    base = {
        "size": "test",
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 64,
        "steps": 12,
        "batch_size": 4,
        "seq_len": 32,
        "lr": 3e-3,
        "eval_every": 6,
        "eval_windows": 8,
        "checkpoint_every": 5,
        "max_position_embeddings": 64,
    }
    base.update(kw)
    return PretrainConfig(**base)


def test_count_parameters_matches_llama_formula(tokenizer) -> None:
    cfg = _tiny_config()
    model = build_model(cfg, tokenizer)
    d, f, layers, vocab = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, len(tokenizer)
    # per block: q,k,v,o (4 d²) + gate, up, down (3 d·f) + 2 RMSNorm gains; plus the final norm
    expected_blocks = layers * (4 * d * d + 3 * d * f + 2 * d) + d
    counts = count_parameters(model)
    assert counts == {
        "total": expected_blocks + vocab * d,
        "embedding": vocab * d,
        "non_embedding": expected_blocks,
    }


def test_config_validation_and_sizes() -> None:
    tiny = PretrainConfig.for_size("tiny", steps=7, lr=None)
    assert tiny.steps == 7 and tiny.lr == PretrainConfig.for_size("tiny").lr
    with pytest.raises(PerceptAlignError, match="unknown model size"):
        PretrainConfig.for_size("huge")
    with pytest.raises(PerceptAlignError, match="`steps`"):
        PretrainConfig.for_size("tiny", steps=0)
    with pytest.raises(PerceptAlignError, match="`seq_len`"):
        PretrainConfig.for_size("tiny", seq_len=4096)


# ------------------------------------------------------------------------------------------------ training


def _grammar_sentences(n: int, seed: int) -> list[str]:
    """Sentences with word-order structure (make_sentences draws words i.i.d., which a unigram fits)."""
    rng = random.Random(seed)
    subjects, verbs, objects = (
        ["the actor", "a critic", "my friend"],
        ["liked", "hated", "watched"],
        ["the film", "this story", "that scene"],
    )
    return [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} and then {rng.choice(verbs)} it ."
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def streams(tokenizer):
    train = encode_stream(tokenizer, _grammar_sentences(400, seed=5))
    val = encode_stream(tokenizer, _grammar_sentences(60, seed=6))
    return train, val


def test_model_learns_beyond_unigram(tokenizer, streams, tmp_path) -> None:
    train, val = streams
    cfg = _tiny_config(steps=40, eval_every=40, lr=1e-2, checkpoint_every=100)
    result = train_causal_lm(cfg, tokenizer, train, val, tmp_path / "m")
    losses = [h["loss"] for h in result.history]
    # starts near log V (random init), ends far below it and below the unigram floor on held-out text
    assert losses[0] == pytest.approx(math.log(len(tokenizer)), abs=0.5)
    assert result.val_loss < result.unigram_val_loss - 0.3
    assert sum(losses[-5:]) / 5 < losses[0] - 1.5
    assert not (tmp_path / "m.partial").exists()


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_interrupted_run_resumes_bit_for_bit(tokenizer, streams, tmp_path) -> None:
    train, val = streams
    cfg = _tiny_config()
    straight = train_causal_lm(cfg, tokenizer, train, val, tmp_path / "straight")

    def crash_at_7(event) -> None:
        if event.step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_causal_lm(cfg, tokenizer, train, val, tmp_path / "resumed", progress=crash_at_7)
    assert (tmp_path / "resumed.partial" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "resumed").exists()  # the model directory only appears when training ends
    resumed = train_causal_lm(cfg, tokenizer, train, val, tmp_path / "resumed")
    assert resumed.resumed_from == 5  # last checkpoint before the crash
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    # same seed, same batches, same CPU kernels and threads: the runs must agree exactly
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history == straight.history
    # a finished model of the same run is kept, not retrained; another recipe is trained anew
    before = (tmp_path / "resumed" / "model.safetensors").stat().st_mtime_ns
    again = train_causal_lm(cfg, tokenizer, train, val, tmp_path / "resumed")
    assert again.reused and again.val_loss == resumed.val_loss and again.history == resumed.history
    assert (tmp_path / "resumed" / "model.safetensors").stat().st_mtime_ns == before
    other = train_causal_lm(_tiny_config(steps=3), tokenizer, train, val, tmp_path / "resumed")
    assert not other.reused and other.steps == 3


def test_resume_refuses_a_different_recipe(tokenizer, streams, tmp_path) -> None:
    train, val = streams
    cfg = _tiny_config()

    def crash(event) -> None:
        if event.step == 6:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        train_causal_lm(cfg, tokenizer, train, val, tmp_path / "m", progress=crash)
    with pytest.raises(PerceptAlignError, match="different settings"):
        train_causal_lm(_tiny_config(lr=1e-3), tokenizer, train, val, tmp_path / "m")
    fresh = train_causal_lm(_tiny_config(lr=1e-3), tokenizer, train, val, tmp_path / "m", resume=False)
    assert fresh.resumed_from is None and len(fresh.history) == cfg.steps


def test_saved_model_loads_for_ntps(tokenizer, streams, tmp_path) -> None:
    from perceptalign.ntps.models import forward_hidden_states, load_causal_lm, pad_batch, tokenize

    train, val = streams
    cfg = _tiny_config(steps=3, eval_every=3)
    result = train_causal_lm(cfg, tokenizer, train, val, tmp_path / "m", provenance={"corpus": "toy"})
    record = json.loads((tmp_path / "m" / RECORD_FILE).read_text())
    assert record["steps"] == 3 and record["provenance"] == {"corpus": "toy"}
    assert record["final_val_loss"] == pytest.approx(result.val_loss)
    assert record["parameters"] == result.parameters
    loaded = load_causal_lm(str(tmp_path / "m"))
    assert loaded.n_hidden_states == cfg.num_layers + 1 and loaded.hidden_size == cfg.hidden_size
    ids = tokenize(loaded, ["the film was great", "bad"], max_length=16)
    assert all(x[0] == tokenizer.bos_token_id for x in ids)
    input_ids, mask = pad_batch(ids, loaded.tokenizer.pad_token_id, loaded.padding_side)
    states = forward_hidden_states(loaded, input_ids, mask, loaded.layers)
    assert len(states) == cfg.num_layers + 1
    assert states[-1].shape == (2, input_ids.shape[1], cfg.hidden_size)
    assert all(torch.isfinite(s).all() for s in states)


def test_resolve_pretrained_alias(monkeypatch, tmp_path, tokenizer, streams) -> None:
    monkeypatch.setenv("PERCEPTALIGN_CACHE", str(tmp_path))
    assert resolve_pretrained_alias("smollm2-135m") is None
    with pytest.raises(PerceptAlignError, match="unknown zoo model"):
        resolve_pretrained_alias("scratch-lm-huge")
    with pytest.raises(PerceptAlignError, match="ntps pretrain --size small"):
        resolve_pretrained_alias("scratch-lm-small")
    train, val = streams
    target = tmp_path / "models" / "scratch-lm-small"
    train_causal_lm(_tiny_config(steps=2, eval_every=2), tokenizer, train, val, target)
    assert resolve_pretrained_alias("scratch-lm-small") == target


# ------------------------------------------------------------------------------- the real offline corpus


@pytest.mark.slow
def test_real_corpus_has_no_test_text_and_documented_size() -> None:
    from perceptalign.ntps.corpus import load_pretrain_corpus, offline_test_texts

    corpus = load_pretrain_corpus()
    tests = offline_test_texts()
    lines = {_norm(line) for text in corpus.texts for line in text.splitlines()}
    assert not any(_norm(t) in lines for t in tests)  # no test text survives as a line
    joined = "\n".join(" " + _norm(t) + " " for t in corpus.texts)
    long_tests = [t for t in tests if len(normalized_words(t)) >= 8]
    sample = random.Random(0).sample(long_tests, min(1500, len(long_tests)))
    leaked = [t for t in sample if " " + _norm(t) + " " in joined]
    assert leaked == []
    assert corpus.meta["documents"] == len(corpus)
    assert corpus.meta["characters"] == sum(len(t) for t in corpus.texts)
    assert len(corpus) > 20_000 and corpus.meta["characters"] > 3_000_000  # type: ignore[operator]


@pytest.mark.slow
def test_cli_pretrain_writes_a_loadable_model(tmp_path) -> None:
    from typer.testing import CliRunner

    import perceptalign.cli.ntps_pretrain  # noqa: F401  registers the command
    from perceptalign.cli.ntps import ntps_app

    args = [
        "pretrain",
        "--size",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(ntps_app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "scratch-lm-tiny" / RECORD_FILE).read_text())
    assert record["steps"] == 2 and record["provenance"]["train_tokens"] > 1_000_000


def test_cli_pretrain_rejects_bad_options(tmp_path) -> None:
    from typer.testing import CliRunner

    import perceptalign.cli.ntps_pretrain  # noqa: F401  registers the command
    from perceptalign.cli.ntps import ntps_app

    bad = CliRunner().invoke(ntps_app, ["pretrain", "--size", "huge", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown model size" in bad.output
    bad = CliRunner().invoke(ntps_app, ["pretrain", "--threads", "0", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--threads" in bad.output
    bad = CliRunner().invoke(ntps_app, ["pretrain", "--steps", "0", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--steps must be ≥ 1" in bad.output
    assert not any(tmp_path.iterdir())  # nothing written for invalid settings

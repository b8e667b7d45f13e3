"""Shared test set-up: the hub is never contacted from tests."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import random
from pathlib import Path

import pytest

WORDS = {
    0: ["awful", "dull", "boring", "bad", "terrible", "sad", "weak", "poor", "messy", "tired"],
    1: ["great", "lovely", "superb", "good", "brilliant", "happy", "strong", "rich", "clean", "fresh"],
}
FILLER = [
    *["the", "a", "film", "plot", "story", "actor", "scene", "music", "was", "is"],
    *["and", "very", "quite", "really", "of", "this", "that"],
]


def make_sentences(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """Short labelled sentences with class-specific words (a learnable toy signal for tiny models)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 14))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(WORDS[label]))
        rows.append((" ".join(words), label))
    return rows


def build_tiny_model(path: Path, arch: str = "llama", padding_side: str = "right", pad: bool = False) -> Path:
    """A random causal LM (hidden size 32) with a BPE tokenizer trained here: loads offline in < 2 s."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    tok.train_from_iterator([s for s, _ in make_sentences(400, seed=1)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>" if pad else None,
        padding_side=padding_side,
    )
    common = {"vocab_size": fast.vocab_size + 4, "bos_token_id": 1, "eos_token_id": 2}
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
    elif arch == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
    else:
        raise ValueError(arch)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2_left(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", padding_side="left")


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory) -> Path:
    import pandas as pd

    path = tmp_path_factory.mktemp("data") / "toy.csv"
    pd.DataFrame(make_sentences(120, seed=2), columns=["text", "label"]).to_csv(path, index=False)
    return path

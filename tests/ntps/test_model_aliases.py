"""Models whose configs spell their sizes differently (OpenELM's model_dim / num_transformer_layers), models
that come with remote code and need another tokenizer, and `max_length` 'model' (the model's own maximum).

The OpenELM stand-in is a tiny random model written here as remote code (configuration and modeling files in
the model folder, ``auto_map`` in config.json), so it loads only with `trust_remote_code`, and it has no
tokenizer of its own: like apple/OpenELM-* with meta-llama/Llama-2-7b-hf, it is paired with a separate
tokenizer folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from perceptalign.cli import app
from perceptalign.io import PerceptAlignError
from perceptalign.ntps.models import (
    CONFIG_ALIASES,
    as_loaded_model,
    check_max_length,
    config_value,
    load_causal_lm,
    model_dimensions,
    model_max_length,
    resolve_max_length,
)

CONFIGURATION_SOURCE = '''
from transformers import PretrainedConfig


class TinyElmConfig(PretrainedConfig):
    """OpenELM's key names: model_dim, num_transformer_layers, num_query_heads, max_context_length."""

    model_type = "tiny_elm"

    def __init__(
        self,
        vocab_size=304,
        model_dim=32,
        num_transformer_layers=2,
        num_query_heads=None,
        max_context_length=48,
        bos_token_id=1,
        eos_token_id=2,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.model_dim = model_dim
        self.num_transformer_layers = num_transformer_layers
        self.num_query_heads = list(num_query_heads or [4, 2])
        self.max_context_length = max_context_length
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
'''

MODELING_SOURCE = """
import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_tiny_elm import TinyElmConfig


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.ffn = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)
        )

    def forward(self, h, allowed):
        b, t, d = h.shape
        q, k, v = self.qkv_proj(self.norm(h)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        h = h + self.out_proj(attended.transpose(1, 2).reshape(b, t, d))
        return h + self.ffn(h)


class TinyElmModel(PreTrainedModel):
    config_class = TinyElmConfig
    base_model_prefix = "transformer"

    def __init__(self, config):
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList(Block(config.model_dim, h) for h in config.num_query_heads)
        self.norm = nn.LayerNorm(config.model_dim)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, output_hidden_states=None,
                use_cache=None, return_dict=None, **kwargs):
        t = input_ids.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=input_ids.device))
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
        allowed = allowed | torch.eye(t, dtype=torch.bool, device=input_ids.device)[None, None]
        h = self.token_embeddings(input_ids)
        states = [h]
        for layer in self.layers:
            h = layer(h, allowed)
            states.append(h)
        h = self.norm(h)
        states[-1] = h
        hidden = tuple(states) if output_hidden_states else None
        return BaseModelOutputWithPast(last_hidden_state=h, hidden_states=hidden)


class TinyElmForCausalLM(PreTrainedModel):
    config_class = TinyElmConfig
    base_model_prefix = "transformer"

    def __init__(self, config):
        super().__init__(config)
        self.transformer = TinyElmModel(config)
        self.lm_head = nn.Linear(config.model_dim, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, **kwargs):
        out = self.transformer(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)
        return CausalLMOutputWithPast(logits=logits, hidden_states=out.hidden_states)
"""


def _tokenizer_folder(tiny_llama: Path, target: Path) -> Path:
    """A tokenizer-only folder (the stand-in for meta-llama/Llama-2-7b-hf)."""
    target.mkdir(parents=True)
    for file in tiny_llama.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(file, target / file.name)
    return target


def build_openelm_like(tiny_llama: Path, root: Path) -> tuple[Path, Path]:
    """(model folder with remote code and no tokenizer, separate tokenizer folder)."""
    model_dir, tokenizer_dir = root / "tiny-openelm", root / "llama2-tokenizer"
    model_dir.mkdir(parents=True)
    (model_dir / "configuration_tiny_elm.py").write_text(CONFIGURATION_SOURCE)
    (model_dir / "modeling_tiny_elm.py").write_text(MODELING_SOURCE)
    _tokenizer_folder(tiny_llama, tokenizer_dir)
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    # Import the two files as a package to build and save the random weights.
    package = f"tiny_elm_{abs(hash(str(root)))}"
    spec = importlib.util.spec_from_file_location(
        package, model_dir / "__init__.py", submodule_search_locations=[str(model_dir)]
    )
    (model_dir / "__init__.py").write_text("")
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    try:
        configuration = importlib.import_module(f"{package}.configuration_tiny_elm")
        modeling = importlib.import_module(f"{package}.modeling_tiny_elm")
        config = configuration.TinyElmConfig(vocab_size=vocab)
        config.auto_map = {
            "AutoConfig": "configuration_tiny_elm.TinyElmConfig",
            "AutoModelForCausalLM": "modeling_tiny_elm.TinyElmForCausalLM",
        }
        torch.manual_seed(0)
        modeling.TinyElmForCausalLM(config).save_pretrained(model_dir)
    finally:
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]
    (model_dir / "__init__.py").unlink()
    return model_dir, tokenizer_dir


@pytest.fixture(scope="module")
def openelm_like(tiny_llama, tmp_path_factory) -> tuple[Path, Path]:
    return build_openelm_like(tiny_llama, tmp_path_factory.mktemp("openelm"))


# --------------------------------------------------------------------------------------------------
# the alias adapter


def test_config_value_reads_every_spelling_of_a_key():
    openelm = SimpleNamespace(
        model_dim=1280, num_transformer_layers=16, num_query_heads=[12, 16], max_context_length=2048
    )
    assert config_value(openelm, "hidden_size") == 1280
    assert config_value(openelm, "num_hidden_layers") == 16
    assert config_value(openelm, "num_attention_heads") == [12, 16]
    assert config_value(openelm, "max_position_embeddings") == 2048
    gpt2 = SimpleNamespace(n_embd=768, n_layer=12, n_head=12, n_positions=1024)
    assert [
        config_value(gpt2, k) for k in ("hidden_size", "num_hidden_layers", "max_position_embeddings")
    ] == [
        768,
        12,
        1024,
    ]
    # The canonical spelling wins over an alias, unset (None / 0) values are skipped, a dict works too.
    both = SimpleNamespace(hidden_size=64, model_dim=32, num_hidden_layers=0, num_transformer_layers=3)
    assert config_value(both, "hidden_size") == 64 and config_value(both, "num_hidden_layers") == 3
    assert config_value({"max_context_length": 512}, "max_position_embeddings") == 512
    assert config_value(SimpleNamespace(), "hidden_size") is None
    with pytest.raises(KeyError):
        config_value(openelm, "not_a_key")
    # The aliases the paper's OpenELM code reads are known.
    assert "model_dim" in CONFIG_ALIASES["hidden_size"]
    assert "num_transformer_layers" in CONFIG_ALIASES["num_hidden_layers"]
    assert "num_query_heads" in CONFIG_ALIASES["num_attention_heads"]
    assert "max_context_length" in CONFIG_ALIASES["max_position_embeddings"]


class _NoSizesInConfig(nn.Module):
    """A causal LM whose config names no size under any known spelling: read from its hidden states."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(width_of_it=24)
        self.embed = nn.Embedding(50, 24)
        self.blocks = nn.ModuleList(nn.Linear(24, 24) for _ in range(3))

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, use_cache=False, **_):
        h = self.embed(input_ids)
        states = [h]
        for block in self.blocks:
            h = torch.tanh(block(h))
            states.append(h)
        return SimpleNamespace(last_hidden_state=h, hidden_states=tuple(states))


def test_dimensions_fall_back_to_the_hidden_states():
    tokenizer = SimpleNamespace(pad_token="<pad>", eos_token="</s>", bos_token_id=1, padding_side="right")
    dims = model_dimensions(_NoSizesInConfig(), tokenizer)
    assert (dims.hidden_size, dims.num_hidden_layers, dims.source) == (24, 3, "hidden states")
    loaded = as_loaded_model(_NoSizesInConfig(), tokenizer, model_id="no-sizes")
    assert (loaded.hidden_size, loaded.n_hidden_states) == (24, 4)


def test_dimensions_of_a_model_without_hidden_states_are_refused_clearly():
    class Opaque(nn.Module):
        config = SimpleNamespace()

        def forward(self, **_):
            return SimpleNamespace(last_hidden_state=torch.zeros(1, 2, 3))

    with pytest.raises(PerceptAlignError, match="decoder-only causal LM"):
        model_dimensions(Opaque())


def test_the_tiny_llama_reads_the_same_as_before(tiny_llama):
    loaded = load_causal_lm(str(tiny_llama))
    dims = model_dimensions(loaded.model)
    assert (dims.hidden_size, dims.num_hidden_layers, dims.source) == (32, 2, "config")
    assert (loaded.hidden_size, loaded.n_hidden_states) == (32, 3)


# --------------------------------------------------------------------------------------------------
# max_length: an integer or 'model'


def test_check_max_length_accepts_integers_and_model_and_names_the_fix():
    assert check_max_length(512) == 512
    assert check_max_length("512") == 512
    assert check_max_length("model") == "model"
    assert check_max_length(" Model ") == "model"
    for bad in (1, "1", 0, -4):
        with pytest.raises(PerceptAlignError, match=r"`max_length` must be ≥ 2.*'model'"):
            check_max_length(bad)
    for bad in ("auto", 2.5, True, None, "12k"):
        with pytest.raises(PerceptAlignError, match=r"`max_length` must be an integer ≥ 2 or 'model'"):
            check_max_length(bad)


def test_model_max_length_takes_the_smaller_real_limit():
    tokenizer = SimpleNamespace(model_max_length=32_768)
    qwen_like = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=131_072))
    assert model_max_length(qwen_like, tokenizer) == 32_768
    llama3_like = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=8192))
    no_limit = SimpleNamespace(model_max_length=int(1e30))  # transformers' "unset" placeholder
    assert model_max_length(llama3_like, no_limit) == 8192
    openelm_like = SimpleNamespace(config=SimpleNamespace(max_context_length=2048))
    assert model_max_length(openelm_like, SimpleNamespace(model_max_length=4096)) == 2048
    assert model_max_length(SimpleNamespace(config=SimpleNamespace()), no_limit) is None


def test_resolve_max_length(tiny_llama):
    loaded = load_causal_lm(str(tiny_llama))
    assert resolve_max_length(64, loaded) == 64
    assert resolve_max_length("model", loaded) == 128  # LlamaConfig(max_position_embeddings=128)
    unknown = SimpleNamespace(
        model=SimpleNamespace(config=SimpleNamespace()),
        tokenizer=SimpleNamespace(model_max_length=int(1e30)),
        model_id="no-limit",
    )
    with pytest.raises(PerceptAlignError, match=r"`max_length` 'model'.*pass an integer `max_length`"):
        resolve_max_length("model", unknown)


def _score_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "ntps",
        "score",
        "--model",
        str(model),
        "--dataset",
        str(data),
        "--out",
        str(out),
        "--layers",
        "0,-1",
        "--fractions",
        "0.5",
        *extra,
    ]


def test_cli_max_length_model_resolves_to_the_model_maximum(tiny_llama, toy_csv, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, _score_args(tiny_llama, toy_csv, tmp_path / "model", "--max-length", "model"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "model" / "ntps.json").read_text())["max_length"] == 128
    result = runner.invoke(app, _score_args(tiny_llama, toy_csv, tmp_path / "int", "--max-length", "32"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "int" / "ntps.json").read_text())["max_length"] == 32


@pytest.mark.parametrize("value", ["auto", "1", "2.5"])
def test_cli_bad_max_length_names_the_option_and_the_fix(value, tmp_path):
    result = CliRunner().invoke(
        app, _score_args(Path("x"), Path("x.csv"), tmp_path / "o", "--max-length", value)
    )
    text = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "Invalid value for '--max-length'" in text and "--max-length model" in text, text


def test_api_max_length_model(tiny_llama, toy_csv, tmp_path):
    from perceptalign.ntps.jobs.score import ScoreConfig, run_score

    with pytest.raises(PerceptAlignError, match="`max_length`"):
        ScoreConfig(model=str(tiny_llama), dataset=str(toy_csv), out=tmp_path, max_length="longest")
    config = ScoreConfig(
        model=str(tiny_llama),
        dataset=str(toy_csv),
        out=tmp_path,
        layers=[-1],
        fractions=[0.5],
        max_length="model",
    )
    assert run_score(config).results["max_length"] == 128


# --------------------------------------------------------------------------------------------------
# an OpenELM-like model: remote code, renamed config keys, a separate tokenizer


def test_openelm_like_model_needs_its_tokenizer_and_remote_code(openelm_like, toy_csv, tmp_path):
    model_dir, tokenizer_dir = openelm_like
    runner = CliRunner()
    no_tokenizer = runner.invoke(app, _score_args(model_dir, toy_csv, tmp_path / "a", "--trust-remote-code"))
    text = " ".join(no_tokenizer.output.split())
    assert no_tokenizer.exit_code == 2 and "has no tokenizer" in text and "--tokenizer" in text, text
    no_remote = runner.invoke(
        app, _score_args(model_dir, toy_csv, tmp_path / "b", "--tokenizer", str(tokenizer_dir))
    )
    text = " ".join(no_remote.output.split())
    assert no_remote.exit_code == 2 and "--trust-remote-code" in text, text
    missing = runner.invoke(
        app, _score_args(model_dir, toy_csv, tmp_path / "c", "--tokenizer", str(tmp_path / "nope" / "tok"))
    )
    assert missing.exit_code == 2 and "no such --tokenizer folder" in " ".join(missing.output.split())


def test_openelm_like_model_scores_offline_through_the_cli(openelm_like, toy_csv, tmp_path):
    model_dir, tokenizer_dir = openelm_like
    out = tmp_path / "elm"
    args = _score_args(model_dir, toy_csv, out, "--tokenizer", str(tokenizer_dir), "--trust-remote-code")
    args[args.index("0,-1")] = "0,1,2"
    result = CliRunner().invoke(app, [*args, "--max-length", "model"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "ntps.json").read_text())
    assert results["layers"] == [0, 1, 2]  # num_transformer_layers = 2 → 3 hidden states
    assert results["max_length"] == 48  # max_context_length (the tokenizer states no limit)
    assert "+tokenizer:files-sha256:" in results["model_fingerprint"]
    for row in results["ntps"]:
        assert all(value is not None and math.isfinite(value) and 0.0 <= value <= 1.0 for value in row)


def test_openelm_like_model_through_the_python_api(openelm_like, toy_csv, tmp_path):
    from perceptalign.ntps.jobs.score import ScoreConfig, run_score

    model_dir, tokenizer_dir = openelm_like
    loaded = load_causal_lm(str(model_dir), tokenizer=str(tokenizer_dir), trust_remote_code=True)
    assert (loaded.hidden_size, loaded.n_hidden_states) == (32, 3)
    assert loaded.tokenizer.pad_token is not None  # EOS stands in, as for the Llama-2 tokenizer
    result = run_score(
        ScoreConfig(
            model=str(model_dir),
            dataset=str(toy_csv),
            out=tmp_path,
            tokenizer=str(tokenizer_dir),
            trust_remote_code=True,
            max_length=24,
            fractions=[0.25, 0.5],
        )
    )
    table = result.results["ntps"]
    assert len(table) == 3 and all(math.isfinite(v) for row in table for v in row)
    assert result.results["max_length"] == 24


@pytest.mark.parametrize("family", ["qwen2", "gpt_neox"])
def test_other_paper_families_score_offline(family, tiny_llama, toy_csv, tmp_path):
    """Tiny random models of the other families (Qwen2 as in the paper; GPT-NeoX, Pythia's) load and score."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, Qwen2Config

    from perceptalign.ntps.jobs.score import ScoreConfig, run_score

    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    common = {"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    if family == "qwen2":
        config = Qwen2Config(
            intermediate_size=64, num_key_value_heads=2, max_position_embeddings=96, **common
        )
    else:
        config = GPTNeoXConfig(intermediate_size=64, max_position_embeddings=96, **common)
    folder = _tokenizer_folder(tiny_llama, tmp_path / family)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    result = run_score(
        ScoreConfig(
            model=str(folder), dataset=str(toy_csv), out=tmp_path / "out", max_length="model", fractions=[0.5]
        )
    )
    assert result.results["max_length"] == 96 and len(result.results["layers"]) == 3
    assert all(math.isfinite(row[0]) for row in result.results["ntps"])

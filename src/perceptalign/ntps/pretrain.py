"""Small Llama-architecture causal LMs trained from scratch on the offline corpus: the NTPS model zoo.

Only one real pretrained LM ships in a package (SmolLM2-135M), so correlations across models need models
we train ourselves. The recipe is deliberately plain, so that differences between the models come from
their size: one corpus and BPE (:mod:`perceptalign.ntps.corpus`), packed windows of ``seq_len + 1``
tokens in a seeded per-epoch order, AdamW (β = 0.9/0.95, weight decay on matrices only), linear warm-up
then cosine decay to 10% of the peak, gradient clipping at 1.0, no dropout.

Training is resumable: every ``checkpoint_every`` steps the weights, AdamW moments and loss history go
into one safetensors file (renamed into place, so an interruption never leaves a torn checkpoint; no
pickles). The batch of step ``s`` is a pure function of (seed, s), and the learning rate is recomputed
from the step, so a resumed run repeats the uninterrupted one bit for bit on the same machine.

The result is a normal Hugging Face directory (config, safetensors, tokenizer) plus
``perceptalign_pretrain.json`` (recipe, corpus and tokenizer hashes, steps, losses, the unigram
baseline), in ``cache_dir("models")/scratch-lm-<size>`` by default.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from perceptalign.io import (
    PerceptAlignError,
    atomic_directory,
    cache_dir,
    load_tensors,
    save_tensors_atomic,
    write_json_atomic,
)

ALIAS_PREFIX = "scratch-lm-"
RECORD_FILE = "perceptalign_pretrain.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
RECIPE_VERSION = 2


@dataclass(frozen=True)
class ModelSize:
    """Shape of one zoo member and the training length it gets in the default recipe."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    steps: int
    lr: float


#: Non-embedding parameters grow ~4x per size (0.80M, 3.96M, 12.4M; tied 4k-token embeddings add 0.5M,
#: 1.0M, 1.6M). The zoo is token-matched (recipe 2): every size takes the same 400 steps of 16 × 256
#: tokens, and since the batch of a step depends only on (seed, step), every size sees the very same
#: 1.64M tokens in the same order (1.56 epochs of the 1.05M-token train split). Size is then the only
#: difference, so a bigger model is not handicapped by seeing fewer tokens. (Recipe 1 was compute-matched:
#: 1200/640/280 steps, so the bigger models saw fewer tokens and came out worse.) On 2 idle cores:
#: ≈ 5, 9 and 21 min.
ZOO_STEPS = 400

SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(
        "tiny", hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352, steps=ZOO_STEPS, lr=3e-3
    ),
    "small": ModelSize(
        "small", hidden_size=256, num_layers=5, num_heads=4, intermediate_size=688, steps=ZOO_STEPS, lr=2e-3
    ),
    "base": ModelSize(
        "base", hidden_size=384, num_layers=7, num_heads=6, intermediate_size=1024, steps=ZOO_STEPS, lr=1.5e-3
    ),
}


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a training run (a checkpoint resumes only under the same config)."""

    size: str = "tiny"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 352
    steps: int = ZOO_STEPS
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    max_position_embeddings: int = 1024
    eval_every: int = 100
    eval_windows: int = 128
    checkpoint_every: int = 50

    @classmethod
    def for_size(cls, size: str, **overrides: Any) -> PretrainConfig:
        """The recipe of a named size, with optional overrides (``None`` values are ignored)."""
        if size not in SIZES:
            raise PerceptAlignError(f"unknown model size {size!r}: choose one of {sorted(SIZES)}.")
        shape = SIZES[size]
        base = cls(
            size=size,
            hidden_size=shape.hidden_size,
            num_layers=shape.num_layers,
            num_heads=shape.num_heads,
            intermediate_size=shape.intermediate_size,
            steps=shape.steps,
            lr=shape.lr,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, "`steps` must be ≥ 1"),
            (self.batch_size >= 1, "`batch_size` must be ≥ 1"),
            (2 <= self.seq_len <= self.max_position_embeddings, "`seq_len` must be in [2, 1024]"),
            (self.lr > 0 and math.isfinite(self.lr), "`lr` must be a positive number"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (0 <= self.warmup_fraction < 1, "warmup_fraction must be in [0, 1)"),
            (self.hidden_size % self.num_heads == 0, "hidden_size must be divisible by num_heads"),
            (self.eval_every >= 1 and self.checkpoint_every >= 1, "eval/checkpoint intervals must be ≥ 1"),
            (self.eval_windows >= 1, "eval_windows must be ≥ 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise PerceptAlignError(f"invalid pretraining setting: {message} (config: {self}).")

    @property
    def warmup_steps(self) -> int:
        return max(1, round(self.warmup_fraction * self.steps))

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def learning_rate(config: PretrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``min_lr_ratio·lr`` at the last step (0-based step)."""
    warmup = config.warmup_steps
    if step < warmup:
        return config.lr * (step + 1) / warmup
    span = max(1, config.steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = config.min_lr_ratio * config.lr
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))


def build_model(config: PretrainConfig, tokenizer: Any) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` (tied embeddings) seeded by ``config.seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
    )
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(llama)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Embedding (tied with the output head) vs transformer-block parameters, each counted once."""
    unique = {id(p): (n, p) for n, p in model.named_parameters()}.values()
    embedding = sum(p.numel() for n, p in unique if "embed_tokens" in n or "lm_head" in n)
    total = sum(p.numel() for _, p in unique)
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


class PackedWindows:
    """Windows of ``seq_len + 1`` tokens with stride ``seq_len`` (every token is a target once per epoch).

    The order within each epoch is a permutation seeded by (seed, epoch), so the batch of any step is
    known without replaying the previous ones: that is what makes resuming exact.
    """

    def __init__(self, stream: torch.Tensor, seq_len: int, seed: int) -> None:
        self.stream = stream.to(torch.long)
        self.seq_len = seq_len
        self.seed = seed
        self.n_windows = (self.stream.numel() - 1) // seq_len
        if self.n_windows < 1:
            raise PerceptAlignError(
                f"the token stream has {self.stream.numel()} tokens, fewer than one window of "
                f"{seq_len + 1}: lower `seq_len` or use a larger corpus."
            )
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def window(self, index: int) -> torch.Tensor:
        start = index * self.seq_len
        return self.stream[start : start + self.seq_len + 1]

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n_windows, generator=generator)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        rows = []
        for sample in range(step * batch_size, (step + 1) * batch_size):
            epoch, position = divmod(sample, self.n_windows)
            rows.append(self.window(int(self._permutation(epoch)[position])))
        return torch.stack(rows)

    def sequential(self, limit: int) -> list[torch.Tensor]:
        return [self.window(i) for i in range(min(limit, self.n_windows))]


def unigram_loss(train: torch.Tensor, validation: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of add-one-smoothed train unigram frequencies on validation targets.

    The floor any LM must clearly beat; the first token of the stream is not a target, as in training.
    """
    counts = torch.bincount(train.to(torch.long), minlength=vocab_size).double() + 1.0
    log_p = counts.log() - counts.sum().log()
    return float(-log_p[validation[1:].to(torch.long)].mean())


def _lm_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=windows[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, windows: list[torch.Tensor], batch_size: int) -> float:
    """Mean next-token cross-entropy over the given windows (all windows have equal length)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = torch.stack(windows[start : start + batch_size])
        n = chunk[:, 1:].numel()
        total += float(_lm_loss(model, chunk)) * n
        count += n
    model.train(was_training)
    return total / count


def make_optimizer(model: nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (incl. the tied embedding) and none on norm gains."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=1e-8,
    )


# ---------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    # Tied weights appear twice in the state dict; safetensors refuses shared storage, so clone.
    tensors = {k: v.clone() for k, v in tensors.items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).clone()
    return tensors


def _restore_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _read_checkpoint_state(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
    if "state" not in metadata:
        raise PerceptAlignError(f"{path} is not a pretraining checkpoint of this toolkit; delete it.")
    return json.loads(metadata["state"])


# ------------------------------------------------------------------------------------------------ training


@dataclass
class PretrainEvent:
    """What a progress callback receives after each optimisation step."""

    step: int  # steps completed
    total_steps: int
    tokens: int  # tokens per step
    loss: float
    lr: float
    val_loss: float | None = None
    resumed_from: int | None = None


@dataclass
class PretrainResult:
    out_dir: Path
    config: PretrainConfig
    steps: int
    train_loss: float  # mean over the last min(50, steps) steps
    val_loss: float
    unigram_val_loss: float
    parameters: dict[str, int]
    wall_seconds: float
    resumed_from: int | None
    history: list[dict[str, float]] = field(default_factory=list)
    reused: bool = False  # True when a finished model of the same recipe and corpus was already there

    @property
    def val_perplexity(self) -> float:
        return math.exp(self.val_loss)


def train_causal_lm(
    config: PretrainConfig,
    tokenizer: Any,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    out_dir: str | Path,
    *,
    provenance: dict[str, Any] | None = None,
    resume: bool = True,
    progress: Callable[[PretrainEvent], None] | None = None,
) -> PretrainResult:
    """Train a model of ``config`` on packed token streams and save it as a Hugging Face directory.

    The checkpoint lives next to ``out_dir`` (``<out_dir>.partial/``) until the run finishes; it is then
    removed and ``out_dir`` appears atomically. ``provenance`` (corpus description) goes into the record.
    An exception raised by ``progress`` interrupts training like a crash would.
    """
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    checkpoint = partial / CHECKPOINT_FILE
    vocab_size = len(tokenizer)
    if int(max(train_tokens.max(), val_tokens.max())) >= vocab_size:
        raise PerceptAlignError("token ids exceed the tokenizer's vocabulary: streams and tokenizer differ.")
    train = PackedWindows(train_tokens, config.seq_len, config.seed)
    val = PackedWindows(val_tokens, config.seq_len, config.seed).sequential(config.eval_windows)
    identity = json.loads(
        json.dumps(
            {"config": asdict(config), "recipe_version": RECIPE_VERSION, "provenance": provenance or {}}
        )
    )
    if resume and (done_before := _finished_result(out_dir, identity, config)) is not None:
        return done_before  # e.g. `--size all` rerun after an interruption in a later size

    model = build_model(config, tokenizer)
    model.train()
    optimizer = make_optimizer(model, config)
    start_step, history, resumed_from = 0, [], None
    if checkpoint.is_file():
        saved = _read_checkpoint_state(checkpoint)
        if not resume:
            checkpoint.unlink()
        elif saved["identity"] != identity:
            raise PerceptAlignError(
                f"{checkpoint} was written by a run with different settings or corpus; rerun with the same "
                "settings to resume it, or pass --no-resume to start over."
            )
        else:
            _restore_checkpoint(model, optimizer, load_tensors(checkpoint))
            start_step, history, resumed_from = int(saved["step"]), list(saved["history"]), int(saved["step"])

    t0 = time.perf_counter()
    for step in range(start_step, config.steps):
        lr = learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = _lm_loss(model, train.batch(step, config.batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        done = step + 1
        record: dict[str, float] = {"step": done, "loss": loss.detach().item(), "lr": lr}
        if done % config.eval_every == 0 or done == config.steps:
            record["val_loss"] = evaluate(model, val, config.batch_size)
        history.append(record)
        if done % config.checkpoint_every == 0 and done < config.steps:
            state = {"identity": identity, "step": done, "history": history}
            save_tensors_atomic(
                checkpoint, _checkpoint_tensors(model, optimizer), {"state": json.dumps(state)}
            )
        if progress is not None:
            progress(
                PretrainEvent(
                    done,
                    config.steps,
                    config.tokens_per_step,
                    record["loss"],
                    lr,
                    record.get("val_loss"),
                    resumed_from,
                )
            )
    wall = time.perf_counter() - t0

    last = history[-min(50, len(history)) :]
    result = PretrainResult(
        out_dir=out_dir,
        config=config,
        steps=config.steps,
        train_loss=sum(h["loss"] for h in last) / len(last),
        val_loss=float(history[-1]["val_loss"]),
        unigram_val_loss=unigram_loss(train_tokens, val_tokens[: len(val) * config.seq_len + 1], vocab_size),
        parameters=count_parameters(model),
        wall_seconds=wall,
        resumed_from=resumed_from,
        history=history,
    )
    _save_model(model, tokenizer, result, identity)
    if checkpoint.is_file():
        checkpoint.unlink()
    if partial.is_dir() and not any(partial.iterdir()):
        partial.rmdir()
    return result


def _save_model(model: nn.Module, tokenizer: Any, result: PretrainResult, identity: dict[str, Any]) -> None:
    import transformers

    record = {
        "kind": "perceptalign-scratch-pretrain",
        "recipe_version": RECIPE_VERSION,
        "size": result.config.size,
        "recipe": asdict(result.config),
        "parameters": result.parameters,
        "steps": result.steps,
        "tokens_seen": result.steps * result.config.tokens_per_step,
        "final_train_loss": result.train_loss,
        "final_val_loss": result.val_loss,
        "final_val_perplexity": result.val_perplexity,
        "unigram_val_loss": result.unigram_val_loss,
        "wall_seconds_last_session": result.wall_seconds,
        "resumed_from_step": result.resumed_from,
        "provenance": identity["provenance"],
        "identity": identity,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "torch_threads": torch.get_num_threads(),
        "history": result.history,
    }
    model.config.architectures = ["LlamaForCausalLM"]
    # Positions beyond the training window were never trained (RoPE extrapolates poorly): say so.
    tokenizer.model_max_length = result.config.seq_len
    with atomic_directory(result.out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / RECORD_FILE, record)


def _finished_result(
    out_dir: Path, identity: dict[str, Any], config: PretrainConfig
) -> PretrainResult | None:
    """The result recorded in ``out_dir`` if it holds a finished model of exactly this run, else None."""
    path = out_dir / RECORD_FILE
    if not path.is_file() or not (out_dir / "config.json").is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if record.get("identity") != identity:
        return None
    return PretrainResult(
        out_dir=out_dir,
        config=config,
        steps=int(record["steps"]),
        train_loss=float(record["final_train_loss"]),
        val_loss=float(record["final_val_loss"]),
        unigram_val_loss=float(record["unigram_val_loss"]),
        parameters=dict(record["parameters"]),
        wall_seconds=float(record["wall_seconds_last_session"]),
        resumed_from=record["resumed_from_step"],
        history=list(record["history"]),
        reused=True,
    )


# ----------------------------------------------------------------------------------- the zoo on the corpus


def default_model_dir(size: str) -> Path:
    return cache_dir("models") / f"{ALIAS_PREFIX}{size}"


def pretrain_zoo_model(
    config: PretrainConfig,
    out_dir: str | Path | None = None,
    *,
    vocab_size: int | None = None,
    resume: bool = True,
    status: Callable[[str], None] | None = None,
    progress: Callable[[PretrainEvent], None] | None = None,
) -> PretrainResult:
    """Train one zoo model on the offline corpus (built and tokenized on first use, then cached)."""
    from perceptalign.ntps.corpus import (
        DEFAULT_VOCAB_SIZE,
        corpus_token_streams,
        corpus_tokenizer,
        load_pretrain_corpus,
    )

    corpus = load_pretrain_corpus(progress=status)
    tokenizer, _ = corpus_tokenizer(corpus, vocab_size or DEFAULT_VOCAB_SIZE, progress=status)
    streams = corpus_token_streams(corpus, tokenizer)
    provenance = {
        "corpus_sha256": corpus.sha256,
        "corpus_documents": corpus.meta["documents"],
        "corpus_characters": corpus.meta["characters"],
        "corpus_validation_documents": corpus.meta["validation_documents"],
        "train_tokens": int(streams.train.numel()),
        "validation_tokens": int(streams.validation.numel()),
        "tokenizer": f"byte-level BPE, vocab {len(tokenizer)}",
        "tokenizer_sha256": streams.tokenizer_sha256,
        "corpus_sources": sorted(corpus.meta["sources"]),  # type: ignore[call-overload]
    }
    target = Path(out_dir) if out_dir is not None else default_model_dir(config.size)
    return train_causal_lm(
        config,
        tokenizer,
        streams.train,
        streams.validation,
        target,
        provenance=provenance,
        resume=resume,
        progress=progress,
    )


def resolve_pretrained_alias(name: str) -> Path | None:
    """Directory of a trained zoo model for ``scratch-lm-<size>``; None if ``name`` is no such alias.

    Meant for ``models.resolve_model_path`` (before the local-directory check). An alias whose model has
    not been trained yet is an error that says which command trains it.
    """
    if not name.startswith(ALIAS_PREFIX):
        return None
    size = name[len(ALIAS_PREFIX) :]
    if size not in SIZES:
        raise PerceptAlignError(
            f"unknown zoo model {name!r}: the from-scratch models are "
            f"{', '.join(ALIAS_PREFIX + s for s in SIZES)}."
        )
    path = default_model_dir(size)
    if not (path / RECORD_FILE).is_file() or not (path / "config.json").is_file():
        raise PerceptAlignError(
            f"{name!r} has not been trained on this machine yet: run `perceptalign ntps pretrain --size "
            f"{size}` (≈15 min on 2 cores), or pass a model directory."
        )
    return path

"""`ntps lora`: LoRA fine-tuning against a frozen-backbone linear head, and NTPS after LoRA.

The paper's claim is that NTPS predicts where LoRA helps: a high NTPS means the next-token features
already hold the perception subspace, so adapters gain little over a linear head on frozen features.
This job measures that gain, acc(LoRA + head) − acc(frozen backbone + head), both trained with the same
optimizer, schedule, steps and batches, and re-measures NTPS on the merged model (W + (α/r)·B·A), so that
the change of the subspaces can be set beside the gain.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perceptalign.callbacks import PhaseCallback, StatusCallback
from perceptalign.io import PerceptAlignError, atomic_directory, sha256_file, write_json_atomic
from perceptalign.ntps.finetune import (
    EncodedTexts,
    FinetuneJobConfig,
    NTPSSettings,
    SequenceClassifier,
    TrainConfig,
    TrainResult,
    active_dropout,
    job_record,
    load_job_inputs,
    measure_ntps,
    ntps_change_figure,
    pooled_features,
    resolve_device,
    save_head,
    train_classifier,
    train_linear_head,
    training_figure,
)
from perceptalign.ntps.identity import CacheMismatchError
from perceptalign.ntps.jobs.inputs import check_job_inputs
from perceptalign.ntps.models import LoadedModel, backbone, resolve_max_length

RESULTS_FILE = "lora.json"
ADAPTER_DIR = "adapter"
HEAD_FILE = "head.safetensors"
LINEAR_HEAD_FILE = "linear_head.safetensors"
TRAINING_FIGURE = "lora_training.png"
NTPS_FIGURE = "ntps_before_after.png"
NTPS_BEFORE_FILE = "ntps_before_lora.json"
NTPS_AFTER_FILE = "ntps_after_lora.json"
STATISTICS_BEFORE = "statistics.safetensors"  # same name as `ntps score`: reused when the identity matches
STATISTICS_AFTER = "statistics_after_lora.safetensors"

#: Attention input projections by architecture family, tried in this order on the module names.
KNOWN_ATTENTION_TARGETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Llama, Qwen, Mistral, Gemma, Phi-2, OPT, GPT-J", ("q_proj", "k_proj", "v_proj")),
    ("GPT-2, GPT-BigCode", ("c_attn",)),
    ("OpenELM, Phi-3", ("qkv_proj",)),
    ("Falcon, GPT-NeoX, Pythia, BLOOM", ("query_key_value",)),
    ("MPT", ("Wqkv",)),
    ("Baichuan", ("W_pack",)),
)


# --------------------------------------------------------------------------------------------------
# target modules


def _adaptable_types() -> tuple[type[nn.Module], ...]:
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Linear (and GPT-2 Conv1D) layers of the transformer body by full name (no vocabulary head)."""
    body = backbone(model)
    prefix = next((name for name, module in model.named_modules() if module is body), "")
    types = _adaptable_types()
    return {
        f"{prefix}.{name}" if prefix else name: module
        for name, module in body.named_modules()
        if isinstance(module, types)
    }


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the adaptable layers (what ``--target-modules`` accepts), sorted."""
    return sorted({name.rsplit(".", 1)[-1] for name in adaptable_modules(model)})


def detect_target_modules(model: nn.Module) -> list[str]:
    """The attention input projections of a loaded causal LM, found by inspecting its module names."""
    available = set(adaptable_module_names(model))
    for _family, names in KNOWN_ATTENTION_TARGETS:
        if set(names) <= available:
            return list(names)
    architecture = type(model).__name__
    raise PerceptAlignError(
        f"cannot tell which layers of {architecture} are the attention projections: none of the known "
        f"patterns ({', '.join('/'.join(n) for _, n in KNOWN_ATTENTION_TARGETS)}) matches. Its linear "
        f"layers are named {sorted(available)}; pass the ones to adapt with `target_modules`, e.g. "
        f"`target_modules` {','.join(sorted(available)[:3]) or 'q,k,v'}."
    )


def resolve_target_modules(model: nn.Module, requested: Sequence[str] | None) -> list[str]:
    """``requested`` validated against the model's layer names, or the detected attention projections."""
    if not requested:
        return detect_target_modules(model)
    available = set(adaptable_module_names(model))
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise PerceptAlignError(
            f"`target_modules` {unknown} match no linear layer of {type(model).__name__}; its linear layers "
            f"are named {sorted(available)}."
        )
    return list(dict.fromkeys(requested))


# --------------------------------------------------------------------------------------------------
# adapters


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (paper defaults: r = α = 32, dropout 0.05, attention projections, all layers)."""

    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise PerceptAlignError(f"`r` (the LoRA rank) must be an integer ≥ 1 (got {self.r!r}).")
        if not self.alpha > 0:
            raise PerceptAlignError(f"`alpha` must be positive (got {self.alpha!r}).")
        if not 0.0 <= self.dropout < 1.0:
            raise PerceptAlignError(f"`dropout` must lie in [0, 1) (got {self.dropout!r}).")


def apply_lora(model: nn.Module, settings: LoraSettings, seed: int = 0) -> Any:
    """Wrap ``model`` (in place) with LoRA adapters; base weights are frozen, B = 0 so it starts as the base.

    Returns the ``peft`` model; the adapters live inside ``model``'s own module tree, so a classifier
    built on ``model`` runs through them.
    """
    from peft import LoraConfig, get_peft_model

    targets = resolve_target_modules(model, settings.target_modules)
    modules = adaptable_modules(model)
    conv1d = [
        m
        for name, m in modules.items()
        if name.rsplit(".", 1)[-1] in targets and not isinstance(m, nn.Linear)
    ]
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        # GPT-2's Conv1D stores weights as (in, out): peft must transpose its update.
        fan_in_fan_out=bool(conv1d),
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        # peft asks transformers a deprecated question; the answer is right, the warning is noise.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def adapter_fingerprint(adapter_dir: Path) -> str:
    """Content hash of saved adapter weights, appended to the base fingerprint of the merged model."""
    weights = sorted(adapter_dir.glob("*.safetensors"))
    if not weights:
        raise PerceptAlignError(f"{adapter_dir} holds no adapter weights (*.safetensors).")
    return "lora-sha256:" + "".join(sha256_file(w) for w in weights)[:32]


def merged_loaded_model(peft_model: Any, base: LoadedModel, adapter_hash: str) -> LoadedModel:
    """Merge the adapters into the base weights (W ← W + (α/r)·B·A) and describe the result as a model."""
    merged = peft_model.merge_and_unload()
    merged.eval()
    return LoadedModel(
        model=merged,
        tokenizer=base.tokenizer,
        model_id=f"{base.model_id}+lora",
        fingerprint=f"{base.fingerprint}+{adapter_hash}",
        n_hidden_states=base.n_hidden_states,
        hidden_size=base.hidden_size,
        dtype=base.dtype,
    )


# --------------------------------------------------------------------------------------------------
# the job


@dataclass(frozen=True)
class LoraJobConfig(FinetuneJobConfig):
    """`ntps lora`: data/model/optimisation (see :class:`FinetuneJobConfig`), adapters and NTPS settings."""

    lora: LoraSettings = field(default_factory=LoraSettings)
    linear_baseline: bool = True
    ntps: bool = True
    ntps_settings: NTPSSettings = field(default_factory=NTPSSettings)
    #: Base-model statistics made elsewhere (e.g. ``ntps score`` in the same study cell): read, never
    #: written, and used for "NTPS before" when their identity matches; otherwise they are computed into
    #: OUT as usual.
    statistics_before: Path | None = None
    #: Training of the frozen-backbone linear head. None: the recipe's (``default``: exactly ``train``, so
    #: the gain compares what is trained, not how; ``paper``: AdamW, 50 epochs at batch 64, no schedule),
    #: with ``train``'s seed, evaluation interval and evaluation budget.
    linear_train: TrainConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.linear_train is None:
            from perceptalign.ntps.recipes import get_recipe

            recipe = get_recipe(self.recipe)
            assert self.train is not None
            if recipe.linear_baseline is None:
                linear = self.train
            else:
                linear = recipe.train_config(
                    "linear_baseline",
                    seed=self.train.seed,
                    eval_interval=self.train.eval_interval,
                    eval_token_budget=self.train.eval_token_budget,
                )
            object.__setattr__(self, "linear_train", linear)


@dataclass
class LoraJobResult:
    results: dict[str, Any]
    out: Path
    lora: TrainResult
    linear: TrainResult | None


def _cpu(model: nn.Module) -> nn.Module:
    """This job measures NTPS on the CPU (the statistics follow the model's device, so it is moved back
    there after training; a GPU NTPS measurement here is left to `ntps score --device`)."""
    return model.to("cpu")


def run_lora(
    config: LoraJobConfig,
    *,
    on_status: StatusCallback | None = None,
    progress: PhaseCallback | None = None,
) -> LoraJobResult:
    """Linear-head baseline, LoRA training, adapter/head saving and NTPS before/after, into ``config.out``."""
    status = on_status or (lambda _msg: None)
    device = resolve_device(config.device)
    out = check_job_inputs(config)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    train_ds, eval_ds, eval_source, loaded = load_job_inputs(config, status)
    assert config.train is not None and config.linear_train is not None
    targets = resolve_target_modules(loaded.model, config.lora.target_modules)
    max_length = resolve_max_length(config.max_length, loaded)
    if max_length != config.max_length:
        status(f"max_length 'model': {max_length} tokens (the model's own maximum)")
    train_enc = EncodedTexts.from_dataset(loaded, train_ds, max_length)
    eval_enc = EncodedTexts.from_dataset(loaded, eval_ds, max_length)
    dropout = active_dropout(loaded.model)
    seconds["load"] = time.perf_counter() - t0

    ntps_before: dict[str, Any] | None = None
    before_reused, before_file = False, None
    if config.ntps:
        t0 = time.perf_counter()
        status("NTPS before LoRA")
        ntps_before, before_reused, before_file = _ntps_before(
            config, loaded, train_ds, out, status, progress, max_length
        )
        write_json_atomic(out / NTPS_BEFORE_FILE, ntps_before)
        seconds["ntps_before"] = time.perf_counter() - t0

    linear: TrainResult | None = None
    if config.linear_baseline:
        t0 = time.perf_counter()
        frozen = SequenceClassifier(loaded.model, loaded.hidden_size, train_ds.n_classes).to(device)
        budget = config.linear_train.eval_token_budget
        features = {"device": device, "progress": progress, "autocast": config.linear_train.autocast}
        train_x = pooled_features(frozen, train_enc, budget, phase="features (train)", **features)
        eval_x = pooled_features(frozen, eval_enc, budget, phase="features (eval)", **features)
        seconds["features"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        linear_head, linear = train_linear_head(
            train_x,
            train_enc.labels,
            eval_x,
            eval_enc.labels,
            train_ds.n_classes,
            config.linear_train,
            name="linear head (frozen)",
            progress=progress,
        )
        if config.linear_train is not config.train:
            linear.extra["optimizer"] = _optimizer_text(config.linear_train)
        save_head(out / LINEAR_HEAD_FILE, linear_head, _head_metadata(loaded, train_ds.class_names, "frozen"))
        seconds["linear_head"] = time.perf_counter() - t0
        del frozen

    t0 = time.perf_counter()
    settings = LoraSettings(config.lora.r, config.lora.alpha, config.lora.dropout, targets)
    peft_model = apply_lora(loaded.model, settings, seed=config.train.seed)
    n_adapted = _n_adapted(peft_model)
    torch.manual_seed(config.train.seed)  # the head starts where the linear baseline's head started
    classifier = SequenceClassifier(
        loaded.model, loaded.hidden_size, train_ds.n_classes, head_dropout=config.train.head_dropout
    )
    lora = train_classifier(
        classifier, train_enc, eval_enc, config.train, name="LoRA + head", device=device, progress=progress
    )
    seconds["lora"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with atomic_directory(out / ADAPTER_DIR) as tmp:
        peft_model.save_pretrained(str(tmp))
        write_json_atomic(
            tmp / "perceptalign_base.json",
            {
                "model": loaded.model_id,
                "model_fingerprint": loaded.fingerprint,
                "head": HEAD_FILE,
            },
        )
    save_head(out / HEAD_FILE, classifier.head, _head_metadata(loaded, train_ds.class_names, "lora"))
    adapter_hash = adapter_fingerprint(out / ADAPTER_DIR)
    seconds["save"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    merged = merged_loaded_model(peft_model, loaded, adapter_hash)
    merged_eval = _merged_accuracy(
        classifier, eval_enc, config.train.eval_token_budget, device, config.train.autocast
    )
    _cpu(merged.model)
    seconds["merge"] = time.perf_counter() - t0
    ntps_after: dict[str, Any] | None = None
    if config.ntps:
        t0 = time.perf_counter()
        status("NTPS after LoRA (merged model)")
        ntps_after, _ = measure_ntps(
            merged,
            train_ds,
            config.ntps_settings,
            max_length=max_length,
            max_samples=config.max_samples,
            cache=out / STATISTICS_AFTER,
            reuse=False,
            phase="ntps after",
            progress=progress,
        )
        write_json_atomic(out / NTPS_AFTER_FILE, ntps_after)
        seconds["ntps_after"] = time.perf_counter() - t0

    from perceptalign.plotting import save_figure

    runs = [r for r in (lora, linear) if r is not None]
    save_figure(training_figure(runs, f"{loaded.model_id} on {train_ds.name}"), out / TRAINING_FIGURE)
    if ntps_before is not None and ntps_after is not None:
        save_figure(ntps_change_figure(ntps_before, ntps_after, label="LoRA"), out / NTPS_FIGURE)

    results: dict[str, Any] = {
        "model": loaded.model_id,
        "model_fingerprint": loaded.fingerprint,
        "merged_model_fingerprint": merged.fingerprint,
        **job_record(config, train_ds, eval_ds, eval_source, device, max_length),
        "r": settings.r,
        "alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": targets,
        "n_adapted_matrices": n_adapted,
        "n_trainable_params": lora.n_trainable,
        "n_base_params": sum(p.numel() for p in merged.model.parameters()),
        "backbone_dropout_in_train_mode": dropout,
        "eval_accuracy_lora": lora.eval_accuracy,
        "eval_accuracy_linear_head": linear.eval_accuracy if linear else None,
        "gain": lora.eval_accuracy - linear.eval_accuracy if linear else None,
        "eval_accuracy_merged": merged_eval,
        "lora": lora.summary(),
        "linear_head": linear.summary() if linear else None,
        "ntps_before": ntps_before,
        "ntps_after": ntps_after,
        "ntps_before_reused_cache": before_reused,
        "statistics_before_file": str(before_file) if before_file is not None else None,
        "seconds": seconds,
        "files": {
            "adapter": ADAPTER_DIR,
            "head": HEAD_FILE,
            "linear_head": LINEAR_HEAD_FILE if linear else None,
            "training_figure": TRAINING_FIGURE,
            "ntps_figure": NTPS_FIGURE if ntps_after else None,
            "ntps_before": NTPS_BEFORE_FILE if ntps_before else None,
            "ntps_after": NTPS_AFTER_FILE if ntps_after else None,
        },
        "config": json.loads(json.dumps(asdict(config), default=str)),
    }
    if config.recipe != "default":
        from perceptalign.ntps.recipes import get_recipe

        results["recipe_note"] = get_recipe(config.recipe).note
    write_json_atomic(out / RESULTS_FILE, results)
    return LoraJobResult(results=results, out=out, lora=lora, linear=linear)


def _optimizer_text(train: TrainConfig) -> str:
    from perceptalign.ntps.finetune.schedule import optimizer_description

    return optimizer_description(train.optimizer, train.weight_decay, train.schedule)


def _ntps_before(
    config: LoraJobConfig,
    loaded: LoadedModel,
    train_ds: Any,
    out: Path,
    status: StatusCallback,
    progress: PhaseCallback | None,
    max_length: int,
) -> tuple[dict[str, Any], bool, Path]:
    """NTPS of the base model, from ``config.statistics_before`` when it matches, else OUT's cache.

    Returns the scores, whether statistics were reused, and the statistics file they came from."""
    kwargs = dict(max_length=max_length, max_samples=config.max_samples, progress=progress)
    shared = config.statistics_before
    if shared is not None and Path(shared).is_file():
        try:
            scores, reused = measure_ntps(
                loaded, train_ds, config.ntps_settings, cache=Path(shared), phase="ntps before", **kwargs
            )
            return scores, reused, Path(shared)
        except PerceptAlignError as exc:
            status(f"not reusing {shared} ({exc}); computing the statistics again")
    own = out / STATISTICS_BEFORE
    try:
        scores, reused = measure_ntps(
            loaded, train_ds, config.ntps_settings, cache=own, phase="ntps before", **kwargs
        )
    except CacheMismatchError as exc:
        # Every other output of this job is rewritten by this run too, so its own stale cache is replaced.
        status(f"{own} holds statistics of other inputs ({', '.join(exc.fields)}); computing them again")
        scores, reused = measure_ntps(
            loaded, train_ds, config.ntps_settings, cache=own, reuse=False, phase="ntps before", **kwargs
        )
    return scores, reused, own


def _merged_accuracy(
    classifier: SequenceClassifier,
    data: EncodedTexts,
    token_budget: int,
    device: torch.device,
    autocast: str | None = None,
) -> float:
    """Held-out accuracy with the merged weights: equals the adapter model's when the merge is right."""
    from perceptalign.ntps.finetune import evaluate

    return evaluate(classifier, data, token_budget, device, autocast=autocast)[1]


def _n_adapted(peft_model: Any) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(1 for m in peft_model.modules() if isinstance(m, LoraLayer))


def _head_metadata(loaded: LoadedModel, class_names: Sequence[str], kind: str) -> dict[str, Any]:
    return {
        "model": loaded.model_id,
        "model_fingerprint": loaded.fingerprint,
        "backbone": kind,
        "pooling": "masked mean of the last hidden state",
        "hidden_size": loaded.hidden_size,
        "class_names": json.dumps(list(class_names)),
    }

"""The training and probing recipes of the NTPS comparison jobs, each written once: ``paper`` and ``default``.

``paper`` reproduces every choice of the authors' published code (github.com/Yu-AngCheng/NTPS, commit
1d2a433: ``linear_probe_logistic.py``, ``linear_training.py``, ``lora_finetuning.py``,
``from_scratch.py`` and ``utils.py``); each field says where its value comes from. ``default`` is this
package's own recipe, the one every job used before recipes existed (and still uses unless told
otherwise), with each field's reason. docs/ntps.md ("Recipes: paper vs default") tabulates both.

What no recipe changes, because the package differs from the published code by design: probes are
scored on held-out data, NTPS takes the top of both spectra (the published estimator is reported as
``ntps_reference``), and the medical-pairs concatenation is fixed. :data:`PAPER_NOTE` says so; the CLI
shows it once per command run with the ``paper`` recipe (library code returns it, never prints it).

Job configs take ``recipe`` by name (``ProbeConfig(…, recipe="paper")``, ``LoraJobConfig(…,
recipe="paper")``, ``ScratchJobConfig``, ``StudyConfig``); fields left unset (None) come from the recipe,
fields given explicitly win. :meth:`Recipe.train_config` builds one run's
:class:`~perceptalign.ntps.finetune.TrainConfig` with overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from perceptalign.io import PerceptAlignError

if TYPE_CHECKING:
    from perceptalign.ntps.finetune.config import TrainConfig

#: ``max_length`` value meaning "the model's own maximum" (its positional limit, see
#: :func:`perceptalign.ntps.models.model_max_length`).
MAX_LENGTH_MODEL = "model"

OPTIMIZERS = ("adafactor", "adamw")
#: ``cosine``: this package's linear warm-up (s + 1)/w over round(f·steps) steps, then a half cosine;
#: ``cosine_hf``: transformers' ``get_cosine_schedule_with_warmup`` (warm-up s/w over int(f·steps) steps,
#: so the first step runs at lr 0); ``constant``: no schedule.
SCHEDULES = ("cosine", "cosine_hf", "constant")
AUTOCAST_DTYPES = ("bfloat16", "float16")

PAPER_NOTE = (
    "recipe 'paper': the published training and probing choices are reproduced exactly; three things still "
    "differ from the published code by design: probes are scored on held-out data (their training-set "
    "scores are reported as train_*), NTPS takes the top of both spectra, and the medical-pairs "
    "concatenation joins every row. The published NTPS estimator is in the `ntps_reference` tables."
)


@dataclass(frozen=True)
class ProbeRecipe:
    """The logistic-regression probe of ``ntps probe`` (the one-hot least-squares probe has no settings)."""

    standardize: bool  # StandardScaler before the fit
    solver: str  # sklearn LogisticRegression solver
    C: float  # inverse L2 strength
    tol: float  # stopping tolerance
    max_iter: int  # iteration cap

    def __post_init__(self) -> None:
        if self.solver not in ("lbfgs", "saga", "sag", "newton-cg", "newton-cholesky", "liblinear"):
            raise PerceptAlignError(f"unknown logistic-regression solver {self.solver!r}.")
        if not (self.C > 0 and self.tol > 0 and self.max_iter >= 1):
            raise PerceptAlignError(
                f"probe recipe needs C > 0, tol > 0 and max_iter ≥ 1 (got {self.C}, {self.tol}, "
                f"{self.max_iter})."
            )


@dataclass(frozen=True)
class TrainingRecipe:
    """One training run: optimizer, schedule, length, batch, head dropout and precision."""

    optimizer: str  # one of OPTIMIZERS
    lr: float  # peak learning rate
    weight_decay: float  # decoupled (AdamW) or Adafactor's own weight decay
    schedule: str  # one of SCHEDULES
    warmup_fraction: float  # warm-up length as a fraction of the steps (0 without a schedule)
    steps: int | None  # optimizer steps (None when `epochs` says how long)
    epochs: int | None  # passes over the training texts, each reshuffled, the last batch short
    batch_size: int  # texts per optimizer step
    head_dropout: float  # dropout on the pooled vector before the linear head (train mode only)
    weights_dtype: str | None  # dtype the backbone is loaded in (None: the job's `dtype`)
    autocast: str | None  # autocast dtype of forward passes (None: off)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS or self.schedule not in SCHEDULES:
            raise PerceptAlignError(
                f"training recipe: optimizer must be one of {OPTIMIZERS} and schedule one of {SCHEDULES} "
                f"(got {self.optimizer!r}, {self.schedule!r})."
            )
        if (self.steps is None) == (self.epochs is None):
            raise PerceptAlignError("training recipe: give exactly one of steps and epochs.")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise PerceptAlignError(f"training recipe: autocast must be one of {AUTOCAST_DTYPES} or None.")


@dataclass(frozen=True)
class Recipe:
    """Everything ``probe``, ``lora``, ``scratch`` and ``study`` choose that the paper also chose."""

    name: str
    max_length: int | str  # tokens per text; MAX_LENGTH_MODEL = the model's own maximum
    probe: ProbeRecipe
    lora: TrainingRecipe  # LoRA adapters + head
    linear_baseline: TrainingRecipe | None  # frozen backbone + head; None: exactly the LoRA run's config
    scratch: TrainingRecipe  # randomly initialised backbone + head, all weights trained
    note: str | None = None  # what still differs from the published code; shown once by the CLI

    def train_config(self, part: str, **overrides: Any) -> TrainConfig:
        """The :class:`TrainConfig` of ``part`` (``lora``, ``linear_baseline`` or ``scratch``); ``overrides``
        (steps, batch_size, lr, eval_interval, seed, eval_token_budget, …) replace the recipe's values."""
        from perceptalign.ntps.finetune.config import TrainConfig

        if part not in ("lora", "linear_baseline", "scratch"):
            raise PerceptAlignError(f"unknown recipe part {part!r}; use lora, linear_baseline or scratch.")
        training = getattr(self, part) or self.lora
        values: dict[str, Any] = {
            "optimizer": training.optimizer,
            "lr": training.lr,
            "weight_decay": training.weight_decay,
            "schedule": training.schedule,
            "warmup_fraction": training.warmup_fraction,
            "epochs": training.epochs,
            "batch_size": training.batch_size,
            "head_dropout": training.head_dropout,
            "autocast": training.autocast,
        }
        if training.steps is not None:
            values["steps"] = training.steps
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise PerceptAlignError(f"unknown training settings {unknown}; known: {sorted(known)}.")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig(**values)


# --------------------------------------------------------------------------------------------------
# the two recipes

PAPER = Recipe(
    name="paper",
    # utils.tokenizer_model_load: truncation at tokenizer.model_max_length, set to the config's
    # max_context_length (OpenELM, 2,048) or max_position_embeddings (Llama-3, 8,192), the Qwen2
    # tokenizer's own 32,768; every script tokenizes with truncation=True and no max_length.
    max_length=MAX_LENGTH_MODEL,
    probe=ProbeRecipe(
        standardize=True,  # linear_probe_logistic.py: make_pipeline(StandardScaler(), LogisticRegression(…))
        solver="saga",  # linear_probe_logistic.py: solver='saga'
        C=1.0,  # linear_probe_logistic.py: sklearn's default C
        tol=0.01,  # linear_probe_logistic.py: tol=0.01
        max_iter=1000,  # linear_probe_logistic.py: max_iter=1000
    ),
    lora=TrainingRecipe(
        optimizer="adafactor",  # lora_finetuning.py: transformers.Adafactor(relative_step=False, …)
        lr=1e-4,  # lora_finetuning.py: --learning_rate 1e-4
        weight_decay=1e-5,  # lora_finetuning.py: Adafactor(weight_decay=1e-5)
        schedule="cosine_hf",  # lora_finetuning.py: get_cosine_schedule_with_warmup
        warmup_fraction=0.05,  # lora_finetuning.py: num_warmup_steps=int(0.05 * n_steps)
        steps=5000,  # lora_finetuning.py: --n_steps 5000
        epochs=None,
        batch_size=1,  # lora_finetuning.py: --batch_size 1
        head_dropout=0.05,  # utils.ClassificationModel(dropout=0.05) before the classifier
        weights_dtype="bfloat16",  # lora_finetuning.py: tokenizer_model_load(torch_dtype=torch.bfloat16)
        autocast="bfloat16",  # lora_finetuning.py: Accelerator(mixed_precision="bf16")
    ),
    linear_baseline=TrainingRecipe(
        optimizer="adamw",  # linear_training.py: torch.optim.AdamW(classifier params, lr)
        lr=1e-4,  # linear_training.py: --learning_rate 1e-4
        weight_decay=0.01,  # linear_training.py passes none: torch.optim.AdamW's default 0.01
        schedule="constant",  # linear_training.py: scheduler = None
        warmup_fraction=0.0,
        steps=None,
        epochs=50,  # linear_training.py: --n_epochs 50
        batch_size=64,  # linear_training.py: --batch_size 64
        head_dropout=0.05,  # utils.ClassificationModel(dropout=0.05), trained in train mode
        weights_dtype="bfloat16",  # linear_training.py: tokenizer_model_load(torch_dtype=torch.bfloat16)
        autocast="bfloat16",  # linear_training.py: Accelerator(mixed_precision="bf16")
    ),
    scratch=TrainingRecipe(
        optimizer="adafactor",  # from_scratch.py: the Adafactor of lora_finetuning.py
        lr=1e-4,  # from_scratch.py: --learning_rate 1e-4
        weight_decay=1e-5,  # from_scratch.py: Adafactor(weight_decay=1e-5)
        schedule="cosine_hf",  # from_scratch.py: get_cosine_schedule_with_warmup
        warmup_fraction=0.05,  # from_scratch.py: int(0.05 * n_steps)
        steps=10_000,  # from_scratch.py: --n_steps 10000
        epochs=None,
        batch_size=1,  # from_scratch.py: --batch_size 1
        head_dropout=0.05,  # utils.ClassificationModel(dropout=0.05)
        weights_dtype="float32",  # from_scratch.py: AutoModelForCausalLM.from_config(config), no dtype given
        autocast="bfloat16",  # from_scratch.py: Accelerator(mixed_precision="bf16")
    ),
    note=PAPER_NOTE,
)

DEFAULT = Recipe(
    name="default",
    # One length for every model, so that C0/C1 (which weigh a text by roughly L³) compare across models
    # and a 32k-token text cannot dominate a dataset's statistics or a CPU's memory.
    max_length=512,
    probe=ProbeRecipe(
        standardize=True,  # as published
        solver="lbfgs",  # sklearn's default solver; same objective as saga, converged fits are flagged
        C=1.0,  # as published
        tol=1e-4,  # sklearn's default: tol 0.01 may stop saga before the optimum of the same objective
        max_iter=2000,  # headroom for wide layers; a fit that hits the cap is flagged (converged = False)
    ),
    lora=TrainingRecipe(
        optimizer="adafactor",  # as published
        lr=1e-4,  # as published
        weight_decay=0.0,  # Adafactor's default (no weight decay), not tuned
        schedule="cosine",  # the published cosine, its warm-up shifted by one so that no step runs at lr 0
        warmup_fraction=0.05,  # as published
        steps=5000,  # as published
        epochs=None,
        batch_size=1,  # as published
        head_dropout=0.0,  # the head is compared with a frozen-feature head; no extra regulariser
        weights_dtype=None,  # the job's `dtype` (float32): CPU-exact, bf16 only where asked for
        autocast=None,  # float32 throughout
    ),
    # The frozen-backbone head is trained exactly like LoRA (same optimizer, schedule, steps and batches),
    # so that the LoRA gain measures what is trained, not how long or with which optimizer.
    linear_baseline=None,
    scratch=TrainingRecipe(
        optimizer="adafactor",  # as published
        lr=1e-4,  # as published
        weight_decay=0.0,  # as in the default LoRA run
        schedule="cosine",  # as in the default LoRA run
        warmup_fraction=0.05,  # as published
        steps=5000,  # the LoRA run's budget, so that scratch and LoRA compare at equal steps
        epochs=None,
        batch_size=1,  # as published
        head_dropout=0.0,  # as in the default LoRA run
        weights_dtype=None,  # the job's `dtype`
        autocast=None,  # float32 throughout
    ),
    note=None,
)

RECIPES: dict[str, Recipe] = {PAPER.name: PAPER, DEFAULT.name: DEFAULT}


def get_recipe(name: str | Recipe) -> Recipe:
    """The recipe called ``name`` (``paper`` or ``default``); a :class:`Recipe` passes through."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise PerceptAlignError(f"`recipe` must be one of {', '.join(RECIPES)} (got {name!r}).")
    return RECIPES[name]


__all__ = [
    "DEFAULT",
    "MAX_LENGTH_MODEL",
    "PAPER",
    "PAPER_NOTE",
    "RECIPES",
    "ProbeRecipe",
    "Recipe",
    "TrainingRecipe",
    "get_recipe",
]

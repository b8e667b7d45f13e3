"""Typer option types shared by the `ntps` commands.

Typer reads options from each command's signature, so a flag used by several commands would otherwise
be spelled out once per command and drift apart. Each option here is defined once: the same flag means
and reads the same in every command that uses it. Defaults stay in the command signatures (they differ
between commands, e.g. the training jobs' larger token budget). An option whose meaning differs between
commands (--split, --out, most --seed and --max-samples) is not shared: each command documents its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# --------------------------------------------------------------------------------------------------
# model and data: every command that loads a causal LM or a text dataset

ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Hugging Face causal-LM id, local model directory, or an embedded alias (smollm2-135m).",
    ),
]
DatasetOption = Annotated[
    str,
    typer.Option(
        "--dataset",
        "-d",
        help="Registry name (see `ntps datasets`), hub dataset, or a local .csv/.tsv/.jsonl/.parquet file.",
    ),
]
DtypeOption = Annotated[
    str | None,
    typer.Option(
        help="Model dtype: float32, bfloat16, float16 or float64, or (score, probe, peers, study) auto: "
        "bfloat16 on CUDA GPUs that compute in it (A100/H100, RTX 30xx on), float32 elsewhere. lora and "
        "scratch, when unset: the --recipe's, float32; the paper's LoRA loads bfloat16."
    ),
]


def parse_max_length(value: object) -> int | str | None:
    """--max-length: an integer ≥ 2, or `model` (the model's own maximum); None = the command's default."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "model":
        return "model"
    try:
        number = int(text)
    except ValueError:
        number = None
    if number is None or number < 2:
        raise typer.BadParameter(
            f"--max-length takes an integer ≥ 2 (NTPS needs a next token) or `model` for the model's own "
            f"maximum; got {value!r}. Fix: e.g. --max-length 512 or --max-length model."
        )
    return number


MaxLengthOption = Annotated[
    str | None,
    typer.Option(
        help="Truncate texts to this many tokens (≥ 2: NTPS needs a next token), or `model` for the model's "
        "own maximum (Qwen2 32,768, Llama-3 8,192, OpenELM 2,048); unset: 512, or what --recipe sets. "
        "Long texts are costly and weigh more: a text's share of C0/C1 grows roughly with L³ (prefix sums "
        "over L tokens), its forward pass with L² attention.",
        callback=parse_max_length,
    ),
]
RecipeOption = Annotated[
    str,
    typer.Option(
        help="`paper`: every published choice (probe saga tol 0.01, 1000 iterations; LoRA Adafactor with "
        "weight decay 1e-5, bf16 weights and autocast, head dropout 0.05; linear baseline AdamW, 50 epochs "
        "at batch 64; scratch 10,000 steps; --max-length model). `default`: this package's recipe "
        '(docs/ntps.md, "Recipes: paper vs default"). Options given explicitly win over the recipe.',
    ),
]
TokenizerOption = Annotated[
    str | None,
    typer.Option(
        help="Pair the model with another tokenizer (hub id or folder), e.g. OpenELM checkpoints with "
        "meta-llama/Llama-2-7b-hf; default: the model's own.",
    ),
]
TextColumnOption = Annotated[str | None, typer.Option(help="Text column of a local file (default `text`).")]
LabelColumnOption = Annotated[
    str | None, typer.Option(help="Label column of a local file (default `label`).")
]
RevisionOption = Annotated[
    str | None, typer.Option(help="Hub revision (commit, tag or branch) of the model.")
]
TrustRemoteCodeOption = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Allow the model repository's own Python code (off by default; only for models you trust).",
    ),
]

# --------------------------------------------------------------------------------------------------
# feature and statistics extraction: score, probe, peers, study, prescreen

LayersOption = Annotated[
    str | None,
    typer.Option(help="Comma-separated hidden-state indices (0 = embeddings, -1 = last); default all."),
]
TokenBudgetOption = Annotated[
    int,
    typer.Option(help="Padded tokens per batch; texts are length-sorted so little is padding.", min=1),
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Recompute the caches in --out even when they exist (caches made from other data, model or "
        "settings are otherwise refused; matching ones are reused).",
    ),
]
FractionsOption = Annotated[
    str | None, typer.Option(help="Comma-separated fractions f of rank(V) (default 0.05,0.10,…,0.95).")
]
TopKOption = Annotated[
    int,
    typer.Option(
        help="Keep this many next-token probabilities per text for NCE/LEEP (renormalised); "
        "0 = the full distribution."
    ),
]
#: --max-samples of the commands that read each dataset once (peers, study, prescreen).
MaxSamplesPerDatasetOption = Annotated[
    int | None, typer.Option(help="Use at most this many texts per dataset (seeded, stratified).", min=1)
]
#: --seed of the commands whose only randomness is the --max-samples subset.
SubsetSeedOption = Annotated[int, typer.Option(help="Seed of the --max-samples subsets.")]

# --------------------------------------------------------------------------------------------------
# training jobs: `ntps lora` and `ntps scratch` (the comparison needs them trained identically)

TrainOutOption = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
StepsOption = Annotated[
    int | None,
    typer.Option(
        help="Optimizer steps (unset: the --recipe's: LoRA 5,000 in both; scratch 5,000, the paper 10,000).",
        min=1,
    ),
]
BatchSizeOption = Annotated[
    int | None, typer.Option(help="Texts per optimizer step (unset: the --recipe's, 1 in both).", min=1)
]
LrOption = Annotated[
    float | None,
    typer.Option(help="Peak learning rate of Adafactor (unset: the --recipe's, 1e-4 in both)."),
]
EvalIntervalOption = Annotated[
    int, typer.Option(help="Score the held-out set every this many steps (and at the end).")
]
TrainSeedOption = Annotated[
    int,
    typer.Option(
        help="Seed of the batch order, the head and adapter initialisation and the --max-samples subsets."
    ),
]
TrainSplitOption = Annotated[str, typer.Option(help="Training split.")]
EvalSplitOption = Annotated[
    str,
    typer.Option(
        help="Held-out split; when the dataset has no other split, a stratified --eval-fraction of the "
        "training split is held out."
    ),
]
EvalFractionOption = Annotated[float, typer.Option(help="Held-out fraction of a single-split dataset.")]
TrainMaxSamplesOption = Annotated[
    int | None, typer.Option(help="Train on at most this many texts (seeded, stratified).", min=1)
]
MaxEvalSamplesOption = Annotated[
    int | None, typer.Option(help="Score at most this many held-out texts.", min=1)
]
TrainDeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="Training device: cpu, cuda, cuda:N or mps (the job's NTPS measurements run on the cpu).",
    ),
]

# --------------------------------------------------------------------------------------------------
# placement: score, probe, peers, study


def parse_stats_memory(value: float | None) -> float | None:
    """--stats-memory: a positive number of GB, or unset."""
    if value is not None and not value > 0:
        raise typer.BadParameter(
            f"--stats-memory takes a positive number of GB (got {value}); leave it unset to use the free "
            "memory of the statistics device. Fix: e.g. --stats-memory 8."
        )
    return value


DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where the model runs and the statistics are summed: auto (cuda:0 when torch sees a GPU, else "
        "mps, else cpu), cpu, cuda, cuda:N or mps; `ntps study` also trains LoRA there. Under torchrun "
        "with a CUDA device each process takes cuda:LOCAL_RANK.",
    ),
]
DeviceMapOption = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="`auto`: spread a model too large for one GPU over all visible GPUs while loading "
        "(accelerate); needs --device cuda and no torchrun. Unset: the whole model on --device.",
    ),
]
StatsMemoryOption = Annotated[
    float | None,
    typer.Option(
        "--stats-memory",
        help="GB the NTPS statistics may use (3·d² float64 values and two float32 d×d blocks per layer: "
        "~0.55 GB at d = 4096). "
        "Layers beyond it are measured in further passes over the data. Unset: 80% of the free memory of "
        "the statistics device once the model is loaded.",
        callback=parse_stats_memory,
    ),
]

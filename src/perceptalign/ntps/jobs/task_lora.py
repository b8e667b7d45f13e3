"""The LoRA arm of the task study (pre-registration amendment 1, test S3): LoRA on 20 tasks chosen by a
seeded, outcome-blind rule, with one fixed recipe, and its gain over the converged probe and over the
same-budget frozen head, all scored on the same held-out texts.

Each task's LoRA run is an ordinary ``ntps lora`` job in ``OUT/lora/<task>``; a finished run whose
configuration matches is reused, so an interrupted arm resumes task by task.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import MISSING, asdict, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perceptalign.io import PerceptAlignError, write_json_atomic
from perceptalign.ntps.datasets import load_text_dataset
from perceptalign.ntps.datasets.tasks import TASKS, get_task
from perceptalign.ntps.finetune.config import TrainConfig
from perceptalign.ntps.finetune.data import load_train_eval
from perceptalign.ntps.jobs.lora import LoraJobConfig, LoraSettings, run_lora
from perceptalign.ntps.jobs.task_pass import TaskPass
from perceptalign.ntps.probes import LogisticProbe

#: The arm's declared rule (preregistration.json, amendments[0]).
ARM_SEED = 2026
ARM_SIZE = 20
PILOT_TASK = "rt-fresh-rotten"
EVAL_TEXTS = 400
RECIPE = TrainConfig(steps=90, batch_size=8, lr=1e-3, eval_interval=30, seed=0)
ADAPTERS = LoraSettings(r=8, alpha=16.0, dropout=0.05)


def lora_arm_tasks() -> list[str]:
    """The first ``ARM_SIZE`` tasks other than the pilot, in ``default_rng(ARM_SEED)`` permutation order."""
    names = [n for n in TASKS if n != PILOT_TASK]
    order = np.random.default_rng(ARM_SEED).permutation(len(names))
    return [names[i] for i in order[:ARM_SIZE]]


def lora_job_config(task: str, out: Path, model: str, max_length: int) -> LoraJobConfig:
    return LoraJobConfig(
        model=model,
        dataset=f"task:{task}",
        out=out,
        max_eval_samples=EVAL_TEXTS,
        max_length=max_length,
        train=RECIPE,
        lora=ADAPTERS,
        ntps=False,
    )


def _chance_corrected_accuracy(accuracy: float, n_classes: int) -> float:
    return (accuracy - 1.0 / n_classes) / (1.0 - 1.0 / n_classes)


def _finished(path: Path, config: LoraJobConfig) -> dict[str, Any] | None:
    """The saved lora.json when it was made with this exact configuration."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    stored = saved.get("config")
    return saved if isinstance(stored, dict) and _matches(stored, config) else None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(asdict(value) if is_dataclass(value) else value, default=str))


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise PerceptAlignError(f"`{f.name}` has no default")


def _matches(stored: dict[str, Any], config: Any) -> bool:
    """Whether a stored config equals ``config``. A field that the stored run predates matches only when
    leaving it at its default would resolve to the current value (the run is then unchanged); an unknown
    stored key never matches."""
    if set(stored) - {f.name for f in fields(config)}:
        return False
    missing = [f for f in fields(config) if f.name not in stored]
    try:
        baseline = replace(config, **{f.name: _default(f) for f in missing})
    except (PerceptAlignError, TypeError, ValueError):
        return False
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name not in stored:
            if _jsonable(getattr(baseline, f.name)) != _jsonable(value):
                return False
        elif is_dataclass(value):
            if not (isinstance(stored[f.name], dict) and _matches(stored[f.name], value)):
                return False
        elif _jsonable(value) != stored[f.name]:
            return False
    return True


def probe_accuracy(task_pass: TaskPass, task: str, evaluation: Any) -> float:
    """Accuracy on ``evaluation`` (a TextDataset) of the converged probe of the study: LogisticProbe on the
    task's canonical training features of the declared layer."""
    index = {t: i for i, t in enumerate(task_pass.universe.texts)}
    train = load_text_dataset(f"task:{task}", "train")
    missing = [t for t in [*train.texts, *evaluation.texts] if t not in index]
    if missing:
        raise PerceptAlignError(f"{len(missing)} texts of task {task!r} are not in the study's pass.")
    X = task_pass.features
    probe = LogisticProbe(n_classes=len(get_task(task).classes))
    probe.fit(X[[index[t] for t in train.texts]], train.labels)
    predicted = probe.predict(X[[index[t] for t in evaluation.texts]])
    return float(np.mean(predicted == evaluation.labels))


def run_lora_arm(
    task_pass: TaskPass,
    out: Path,
    *,
    model: str,
    max_length: int,
    on_task: Callable[[str, int, int], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """LoRA on every arm task (reusing finished runs) and the three accuracies on the same held-out texts."""
    records = []
    tasks = lora_arm_tasks()
    for number, task in enumerate(tasks):
        if on_task:
            on_task(task, number, len(tasks))
        folder = out / "lora" / task
        config = lora_job_config(task, folder, model, max_length)
        saved = _finished(folder / "lora.json", config)
        if saved is None:
            run_lora(config, on_status=on_status)
            saved = json.loads((folder / "lora.json").read_text())
        spec = get_task(task)
        C = len(spec.classes)
        # The LoRA job's own held-out texts (same loader, same seeded subset), so all three share them.
        _, evaluation, _ = load_train_eval(
            config.dataset,
            split=config.split,
            eval_split=config.eval_split,
            eval_fraction=config.eval_fraction,
            max_eval_samples=EVAL_TEXTS,
            seed=RECIPE.seed,
        )
        acc_probe = probe_accuracy(task_pass, task, evaluation)
        acc_lora, acc_head = float(saved["eval_accuracy_lora"]), float(saved["eval_accuracy_linear_head"])
        if int(saved["n_eval"]) != len(evaluation):
            raise PerceptAlignError(
                f"{task}: the LoRA job scored {saved['n_eval']} texts, the probe {len(evaluation)}."
            )
        records.append(
            {
                "name": task,
                "parent": spec.parent,
                "classes": C,
                "n_eval": len(evaluation),
                "accuracy_lora": acc_lora,
                "accuracy_head": acc_head,
                "accuracy_probe": acc_probe,
                "gain_over_probe": _chance_corrected_accuracy(acc_lora, C)
                - _chance_corrected_accuracy(acc_probe, C),
                "gain_over_head": _chance_corrected_accuracy(acc_lora, C)
                - _chance_corrected_accuracy(acc_head, C),
                "lora_seconds": float(saved.get("seconds", {}).get("lora", float("nan")))
                if isinstance(saved.get("seconds"), dict)
                else float("nan"),
            }
        )
    table = pd.DataFrame.from_records(records)
    write_json_atomic(
        out / "lora_arm.json",
        {
            "rule": {"seed": ARM_SEED, "size": ARM_SIZE, "pilot_excluded": PILOT_TASK},
            "recipe": {"train": asdict(RECIPE), "lora": asdict(ADAPTERS), "eval_texts": EVAL_TEXTS},
            "tasks": table.to_dict(orient="records"),
        },
    )
    return table


def run_study_lora_arm(
    config: Any,
    out: Path,
    preregistration: dict[str, Any],
    *,
    on_task: Callable[[str, int, int], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> Any:
    """The arm for a finished study in ``out`` (its saved pass must match), then the re-analysis with S3."""
    from perceptalign.ntps.jobs.task_pass import TaskUniverse, load_task_pass, pass_identity
    from perceptalign.ntps.jobs.task_study import reanalyse_task_study
    from perceptalign.ntps.models import load_causal_lm

    loaded = load_causal_lm(config.model)
    universe = TaskUniverse.build(config.tasks)
    identity = pass_identity(loaded, universe, config.layer, config.max_length)
    task_pass = load_task_pass(out / "pass.safetensors", universe, identity, loaded.hidden_size)
    if task_pass is None:
        raise PerceptAlignError(
            f"{out / 'pass.safetensors'} is missing or was made from other inputs: "
            f"run the study into {out} first."
        )
    run_lora_arm(
        task_pass, out, model=config.model, max_length=config.max_length, on_task=on_task, on_status=on_status
    )
    return reanalyse_task_study(config, out, preregistration)

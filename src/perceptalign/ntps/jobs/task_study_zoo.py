"""The task study's scratch-LM arm (S2, pre-registration amendment 2): the token-matched zoo on the same
tasks, and one mixed-model test over every model's tasks.

Each zoo model gets the study's own measurements (one pass, then :func:`measure_tasks`) at its declared
layer round(0.6 × blocks), saved per model so that a rerun reuses them when nothing that changes them
differs. The test pools the models without pretending that their rows are independent: ranks are taken
within each model, a task's random intercept is shared by the models and a parent's by its tasks, and the
null permutes tasks within parent jointly for every model (:func:`zoo_test`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from perceptalign.io import PerceptAlignError, write_json_atomic
from perceptalign.ntps.analysis import _blocks, _percentile_ci, _random_permutations
from perceptalign.ntps.mixed_model import MixedModelFit, fit_random_intercepts, indicator

#: The zoo models of S2 (pretraining recipe 2, token-matched) and the declared relative depth.
ZOO_MODELS = ("scratch-lm-tiny", "scratch-lm-small", "scratch-lm-base")
ZOO_RECIPE_VERSION = 2
LAYER_DEPTH = 0.6
ZOO_PERMUTATIONS = 2_000
ZOO_BOOTSTRAP = 1_000


def declared_layer(blocks: int) -> int:
    """The pre-registered layer rule, round(0.6 × transformer blocks), as a hidden-state index."""
    return round(LAYER_DEPTH * blocks)


def _within_model_z(values: np.ndarray) -> np.ndarray:
    """z-scored ranks (average ranks for ties): the Spearman scale, so β is a pooled rank correlation."""
    r = rankdata(values)
    sd = r.std()
    if sd == 0:
        raise PerceptAlignError("a model's values are constant over the tasks: its ranks carry nothing.")
    return (r - r.mean()) / sd


def _aligned(
    tables: Mapping[str, pd.DataFrame],
) -> tuple[list[str], list[str], list[str], np.ndarray, np.ndarray]:
    """Tasks (same set and order for every model), their parents, and NTPS/target as models × tasks."""
    if len(tables) < 2:
        raise PerceptAlignError(f"the joint test needs at least 2 models, got {len(tables)}.")
    models = list(tables)
    first = tables[models[0]].set_index("name")
    names = list(first.index)
    for model in models[1:]:
        other = set(tables[model]["name"])
        if other != set(names):
            missing = sorted(set(names) ^ other)[:5]
            raise PerceptAlignError(f"{model} was measured on other tasks than {models[0]} (e.g. {missing}).")
    parents = [str(p) for p in first.loc[names, "parent"]]
    x = np.stack([tables[m].set_index("name").loc[names, "ntps_declared"].to_numpy(float) for m in models])
    y = np.stack([tables[m].set_index("name").loc[names, "target"].to_numpy(float) for m in models])
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise PerceptAlignError("a model's NTPS or target has NaN values: the joint test needs them all.")
    return models, parents, names, x, y


def _fit(zx: np.ndarray, zy: np.ndarray, parent_ids: np.ndarray, task_ids: np.ndarray) -> MixedModelFit:
    """z(rank target) on z(rank NTPS) with model intercepts and parent/task random intercepts (β last)."""
    n_models, n_tasks = zx.shape
    model = np.repeat(np.arange(n_models), n_tasks)
    X = np.column_stack([indicator(model), zx.ravel()])
    return fit_random_intercepts(zy.ravel(), X, [np.tile(parent_ids, n_models), np.tile(task_ids, n_models)])


def _slope(zx: np.ndarray, zy: np.ndarray, parent_ids: np.ndarray, task_ids: np.ndarray) -> float:
    return float(_fit(zx, zy, parent_ids, task_ids).beta[-1])


def zoo_test(
    tables: Mapping[str, pd.DataFrame],
    *,
    n_permutations: int = ZOO_PERMUTATIONS,
    n_boot: int = ZOO_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """S2: the mixed-model slope β over models × tasks, its joint within-parent permutation p (one-sided,
    β > 0) and its cluster-bootstrap interval by parent (the same parents for every model)."""
    from threadpoolctl import threadpool_limits

    # The matrices are q × q with q ≈ 75: BLAS threads only spin-wait on them (≈ 15× slower when the cores
    # are busy), so the thousands of refits run single-threaded.
    with threadpool_limits(limits=1):
        return _zoo_test(tables, n_permutations, n_boot, seed)


def _zoo_test(
    tables: Mapping[str, pd.DataFrame], n_permutations: int, n_boot: int, seed: int
) -> dict[str, Any]:
    models, parents, names, x, y = _aligned(tables)
    parent_ids = np.unique(parents, return_inverse=True)[1]
    task_ids = np.arange(len(names))
    zx = np.stack([_within_model_z(v) for v in x])
    zy = np.stack([_within_model_z(v) for v in y])
    fit = _fit(zx, zy, parent_ids, task_ids)
    observed = float(fit.beta[-1])
    rng = np.random.default_rng(seed)
    blocks = _blocks(parent_ids, len(names))
    null = np.empty(n_permutations)
    for i, perm in enumerate(_random_permutations(rng, blocks, len(names), n_permutations)):
        # One permutation of the tasks, the same for every model (joint): the models' shared task
        # structure is kept under the null.
        null[i] = _slope(zx[:, perm], zy, parent_ids, task_ids)
    p = float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + n_permutations))
    members = [np.flatnonzero(parent_ids == g) for g in range(parent_ids.max() + 1)]
    boot = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(len(members), size=len(members))
        rows = np.concatenate([members[d] for d in drawn])
        copy_parent = np.concatenate([np.full(len(members[d]), k) for k, d in enumerate(drawn)])
        bx = np.stack([_within_model_z(v[rows]) for v in x])
        by = np.stack([_within_model_z(v[rows]) for v in y])
        boot[b] = _slope(bx, by, copy_parent, np.arange(len(rows)))
    ci = _percentile_ci(boot)
    # Descriptive (not pre-registered): the two sources of information that the mixed model blends. Between
    # tasks: task means of the z-ranks over models; within tasks: each model's deviation from those means.
    mean_x, mean_y = zx.mean(axis=0), zy.mean(axis=0)
    dev_x, dev_y = zx - mean_x, zy - mean_y
    between = float(np.polyfit(mean_x, mean_y, 1)[0]) if mean_x.std() > 0 else float("nan")
    within = float((dev_x * dev_y).sum() / (dev_x**2).sum()) if (dev_x**2).sum() > 0 else float("nan")
    return {
        "id": "S2",
        "descriptive_slopes": {"between_tasks": between, "within_tasks": within},
        "models": models,
        "predictor": "ntps_declared (each model at its declared layer)",
        "target": "chance-corrected balanced accuracy (mean over resplits), ranks within model",
        "statistic": "REML mixed-model slope of z(rank target) on z(rank NTPS)",
        "rho": observed,
        "beta": observed,
        "beta_se_model_based": float(fit.beta_se[-1]),
        "variance_components": {
            "parent": float(fit.variances[0]),
            "task": float(fit.variances[1]),
            "residual": float(fit.sigma2),
        },
        "ci": [float(ci[0]), float(ci[1])],
        "p": p,
        "exact": False,
        "n_permutations": int(n_permutations),
        "n": len(names),
        "n_rows": int(x.size),
    }


# ---------------------------------------------------------------------------------------------- the run


def _zoo_record(model: str) -> dict[str, Any]:
    """The pretraining record of a zoo model; refuses a model from another recipe (S2 is token-matched)."""
    from perceptalign.ntps.pretrain import RECORD_FILE, resolve_pretrained_alias

    folder = resolve_pretrained_alias(model)
    if folder is None:
        raise PerceptAlignError(f"{model!r} is not a scratch-LM zoo alias: S2 takes {list(ZOO_MODELS)}.")
    path = folder / RECORD_FILE
    record = json.loads(path.read_text())
    if record.get("recipe_version") != ZOO_RECIPE_VERSION:
        raise PerceptAlignError(
            f"{model} was trained with pretraining recipe {record.get('recipe_version')}, S2 declares "
            f"recipe {ZOO_RECIPE_VERSION} (token-matched): delete {path.parent} and pretrain that size again "
            "with the current recipe."
        )
    return record


def measure_zoo_model(
    config: Any,
    model: str,
    out: Path,
    *,
    on_status: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One zoo model's per-task table at its declared layer (reused from ``out/zoo/<model>/tasks.json`` when
    the pass identity and the configuration match), with its layer and held-out perplexity."""
    from perceptalign.ntps.jobs.task_study import measure_model
    from perceptalign.ntps.models import load_causal_lm

    record = _zoo_record(model)
    if on_status:
        on_status(f"loading {model}")
    loaded = load_causal_lm(model)
    blocks = loaded.n_hidden_states - 1
    model_config = replace(config, model=model, layer=declared_layer(blocks))
    folder = out / "zoo" / model
    saved_path = folder / "tasks.json"
    about = {
        "model": model,
        "layer": model_config.layer,
        "blocks": blocks,
        "hidden_size": loaded.hidden_size,
        "val_perplexity": float(record["final_val_perplexity"]),
        "tokens_seen": int(record["tokens_seen"]),
        "parameters": record.get("parameters"),
    }
    config_key = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model_config).items()}
    table, identity = measure_model(
        model_config,
        folder,
        loaded,
        on_status=on_status,
        on_start=on_start,
        on_batch=on_batch,
        reuse_table=lambda ident: _saved_table(saved_path, ident, config_key),
    )
    write_json_atomic(
        saved_path,
        {
            "identity": identity,
            "config": config_key,
            "about": about,
            "tasks": table.to_dict(orient="records"),
        },
    )
    return table, about


def _saved_table(
    path: Path, identity: Mapping[str, Any], config_key: Mapping[str, Any]
) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("identity") != json.loads(json.dumps(identity)) or saved.get("config") != json.loads(
        json.dumps(config_key)
    ):
        return None
    return pd.DataFrame.from_records(saved["tasks"])


def load_zoo_tables(
    out: Path, tasks: tuple[str, ...]
) -> tuple[dict[str, pd.DataFrame], list[dict[str, Any]]]:
    """The zoo models' stored tables in ``out/zoo`` (for a reanalysis); empty when the arm has not run."""
    tables, about = {}, []
    for model in ZOO_MODELS:
        path = out / "zoo" / model / "tasks.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            table = pd.DataFrame.from_records(saved["tasks"])
            tables[model] = table[table["name"].isin(tasks)].reset_index(drop=True)
            about.append(saved["about"])
    return tables, about


def run_study_zoo_arm(
    config: Any,
    out: Path,
    preregistration: Mapping[str, Any],
    *,
    on_status: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Any:
    """S2 on the study already in ``out``: every zoo model measured (or reused), then the declared analysis
    and the report files redone with them (and with the LoRA arm when it has run)."""
    from perceptalign.ntps.jobs.task_study import reanalyse_task_study

    if not (out / "report.json").is_file():
        raise PerceptAlignError(f"no {out / 'report.json'}: run the study on the declared model first.")
    for model in ZOO_MODELS:
        measure_zoo_model(config, model, out, on_status=on_status, on_start=on_start, on_batch=on_batch)
    return reanalyse_task_study(config, out, preregistration)

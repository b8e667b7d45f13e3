"""`ntps study`: run NTPS and what it is compared with over a grid of models × datasets, resumably.

Each cell (model, dataset, measure) runs the ordinary single-run job (`ntps score`, `ntps probe`,
`ntps peers`, `ntps lora`) in its own directory ``DIR/runs/<model>/<dataset>/`` (LoRA in ``…/lora``), so
the jobs' own caches (statistics checkpoints, feature caches, next-token cache) make an interrupted cell
cheap to redo, and probe and peers share one feature extraction. When a cell finishes, its numbers go
into the study's :class:`~perceptalign.ntps.store.ResultsStore` in one atomic write; a rerun skips every
stored cell. The study settings are written to ``DIR/study.json`` on the first run, and a rerun with other
settings is refused (mixing them in one table would make the rows incomparable); the grid itself (models,
datasets, measures) may grow between runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from perceptalign.io import PerceptAlignError, read_json, write_json_atomic, write_text_atomic
from perceptalign.ntps.jobs.inputs import extraction_settings
from perceptalign.ntps.lm_probs import DEFAULT_TOP_K
from perceptalign.ntps.store import NO_LAYER, ResultsStore, slug
from perceptalign.ntps.subspace import DEFAULT_FRACTIONS

MEASURES = ("ntps", "probe", "peers", "lora")
DEFAULT_MEASURES = ("ntps", "probe", "peers")
STUDY_FILE = "study.json"
TABLE_EXPORT = "results.csv"
NTPS_METRICS = ("ntps", "ntps_orthonormal", "ntps_probe", "ntps_reference")
PROBE_METRICS = ("accuracy", "log_loss", "mse", "train_accuracy", "train_log_loss", "train_mse")
LORA_SCALARS = (
    "eval_accuracy_lora",
    "eval_accuracy_linear_head",
    "gain",
    "eval_accuracy_merged",
    "chance_accuracy",
)


@dataclass(frozen=True)
class StudyConfig:
    """The grid and the settings shared by every cell (the CLI fills it from its options).

    ``recipe`` (``default`` or ``paper``, :mod:`perceptalign.ntps.recipes`) sets the probe's solver, the
    LoRA run's optimizer, precision and head dropout, its linear baseline, and ``max_length`` when that is
    left as None (512 / the model's own maximum). A study keeps one recipe: it is part of its settings.

    ``device`` (auto, cpu, cuda, cuda:N, mps) is where every cell runs: the NTPS statistics, the probes'
    and peers' features and the LoRA training. ``dtype`` auto is resolved here (bfloat16 on CUDA, float32
    elsewhere), so the study's settings record the dtype its numbers were made in; the device,
    ``device_map`` and ``stats_memory`` are not settings (they do not change the numbers beyond 1e-5).
    """

    models: list[str]
    datasets: list[str]
    out: Path
    measures: list[str] = field(default_factory=lambda: list(DEFAULT_MEASURES))
    layers: list[int] | None = None
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    max_samples: int | None = None
    max_length: int | str | None = None  # None: the recipe's; "model": each model's own maximum
    token_budget: int = 2048
    dtype: str = "auto"
    seed: int = 0
    peer_metrics: list[str] | None = None
    top_k: int | None = DEFAULT_TOP_K
    lora_steps: int = 5000
    lora_batch_size: int = 1
    lora_lr: float = 1e-4
    lora_r: int = 32
    lora_alpha: float = 32.0
    lora_max_eval_samples: int | None = None
    device: str = "auto"
    trust_remote_code: bool = False
    keep_going: bool = True
    recipe: str = "default"
    device_map: str | None = None
    stats_memory: float | None = None  # GB for the NTPS statistics (default: the device's free memory)

    def __post_init__(self) -> None:
        from perceptalign.ntps.jobs.inputs import check_placement
        from perceptalign.ntps.models import check_max_length
        from perceptalign.ntps.placement import resolve_device, resolve_dtype
        from perceptalign.ntps.recipes import get_recipe

        check_placement(self)
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype, resolve_device(self.device)))
        recipe = get_recipe(self.recipe)
        if self.max_length is None:
            object.__setattr__(self, "max_length", recipe.max_length)
        object.__setattr__(self, "max_length", check_max_length(self.max_length))
        for what, values in (("`models`", self.models), ("`datasets`", self.datasets)):
            if not values or any(not str(v).strip() for v in values):
                raise PerceptAlignError(f"{what} needs at least one non-empty name, e.g. {what} a,b.")
            if len(set(values)) != len(values):
                raise PerceptAlignError(f"{what} lists a name twice ({values}); list each once.")
        unknown = [m for m in self.measures if m not in MEASURES]
        if unknown or not self.measures:
            raise PerceptAlignError(
                f"`measure` {unknown or '(empty)'} unknown; choose from {','.join(MEASURES)}."
            )
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise PerceptAlignError(f"`fractions` must lie in (0, 1] (got {self.fractions}).")
        if self.max_samples is not None and self.max_samples < 2:
            raise PerceptAlignError(f"`max_samples` must be ≥ 2 (got {self.max_samples}).")
        if "peers" in self.measures:
            from perceptalign.ntps.jobs.peers import resolve_metrics

            resolve_metrics(self.peer_metrics)

    def settings(self) -> dict[str, Any]:
        """What makes two studies' numbers comparable (everything but the grid, device and behaviour)."""
        data = asdict(self)
        for key in (
            "models",
            "datasets",
            "out",
            "measures",
            "device",
            "keep_going",
            "device_map",
            "stats_memory",
        ):
            data.pop(key)
        if data["recipe"] == "default":
            data.pop("recipe")  # studies made before recipes existed keep their settings digest
        return json.loads(json.dumps(data))

    def digest(self, measure: str) -> str:
        """Settings digest of one measure's cells (LoRA settings do not invalidate NTPS cells)."""
        data = self.settings()
        relevant = {
            k: v
            for k, v in data.items()
            if (not k.startswith("lora_") or measure == "lora")
            and (k not in ("peer_metrics", "top_k") or measure == "peers")
        }
        text = json.dumps({"measure": measure, **relevant}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CellEvent:
    """Progress of one cell: ``state`` is skipped, running, done or failed."""

    index: int
    total: int
    model: str
    dataset: str
    measure: str
    state: str
    seconds: float = 0.0
    error: str | None = None


@dataclass
class StudyResult:
    store: ResultsStore
    ran: list[tuple[str, str, str]]
    skipped: list[tuple[str, str, str]]
    failed: list[tuple[str, str, str, str]]


def cell_dir(out: Path, model: str, dataset: str) -> Path:
    return Path(out) / "runs" / slug(model) / slug(dataset)


def _check_settings(config: StudyConfig) -> None:
    """Write DIR/study.json on the first run; refuse a rerun whose settings differ."""
    path = Path(config.out) / STUDY_FILE
    settings = config.settings()
    if path.is_file():
        stored = read_json(path).get("settings", {})
        differing = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        if differing:
            detail = "; ".join(f"{k}: stored {stored.get(k)!r}, now {settings.get(k)!r}" for k in differing)
            raise PerceptAlignError(
                f"{config.out} holds a study made with other settings ({detail}). Pass the same settings to "
                "resume it, or use another `out` directory for the new settings."
            )
        previous = read_json(path)
        grid = {
            k: list(dict.fromkeys(previous.get(k, []) + getattr(config, k))) for k in ("models", "datasets")
        }
        grid["measures"] = list(dict.fromkeys(previous.get("measures", []) + list(config.measures)))
    else:
        grid = {
            "models": list(config.models),
            "datasets": list(config.datasets),
            "measures": list(config.measures),
        }
    write_json_atomic(path, {"settings": settings, **grid})


def iter_cells(config: StudyConfig) -> Iterator[tuple[str, str, str]]:
    """Cells in run order: per model, per dataset, the measures in the order ntps, probe, peers, lora.

    Probe before peers so that peers reuse the probe's features; NTPS first, being the cheapest answer.
    """
    measures = [m for m in MEASURES if m in config.measures]
    for model in config.models:
        for dataset in config.datasets:
            for measure in measures:
                yield model, dataset, measure


def run_study(
    config: StudyConfig,
    *,
    on_cell: Callable[[CellEvent], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> StudyResult:
    """Run every cell the store does not hold yet; returns what ran, was skipped and failed.

    With ``keep_going`` a cell that fails with a :class:`PerceptAlignError` (bad dataset, too few samples)
    is recorded and the grid goes on; any other exception (including KeyboardInterrupt) stops the study,
    leaving every finished cell stored.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(config)
    store = ResultsStore(out)
    cells = list(iter_cells(config))
    result = StudyResult(store, [], [], [])
    emit = on_cell or (lambda _event: None)
    for index, (model, dataset, measure) in enumerate(cells):
        key = (model, dataset, measure)
        if store.has(model, dataset, measure, settings=config.digest(measure)):
            result.skipped.append(key)
            emit(CellEvent(index, len(cells), model, dataset, measure, "skipped"))
            continue
        emit(CellEvent(index, len(cells), model, dataset, measure, "running"))
        started = time.perf_counter()
        try:
            rows = RUNNERS[measure](config, model, dataset, on_status, on_batch)
        except PerceptAlignError as exc:
            if not config.keep_going:
                raise
            result.failed.append((*key, str(exc)))
            emit(CellEvent(index, len(cells), model, dataset, measure, "failed", error=str(exc)))
            continue
        seconds = time.perf_counter() - started
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for row in rows:
            row.update(
                model=model,
                dataset=dataset,
                method=measure,
                settings=config.digest(measure),
                seconds=seconds,
                run_at=stamp,
            )
        rows.append(
            {
                "model": model,
                "dataset": dataset,
                "method": measure,
                "metric": "cell_seconds",
                "layer": NO_LAYER,
                "value": seconds,
                "settings": config.digest(measure),
                "seconds": seconds,
                "run_at": stamp,
                **{
                    k: rows[0].get(k)
                    for k in ("model_fingerprint", "data_sha256", "n_texts", "source")
                    if rows
                },
            }
        )
        store.add(rows)
        result.ran.append(key)
        emit(CellEvent(index, len(cells), model, dataset, measure, "done", seconds=seconds))
    table = store.table()
    write_text_atomic(out / TABLE_EXPORT, table.to_csv(index=False))
    if result.failed:
        write_json_atomic(
            out / "failures.json",
            [{"model": m, "dataset": d, "measure": s, "error": e} for m, d, s, e in result.failed],
        )
    return result


# --------------------------------------------------------------------------------------------------
# one cell per measure → long-format rows (model/dataset/method/settings are filled in by run_study)


def _provenance(meta_path: Path, model_fingerprint: str | None, source: str) -> dict[str, Any]:
    meta = read_json(meta_path) if meta_path.is_file() else {}
    return {
        "model_fingerprint": model_fingerprint or meta.get("model_fingerprint"),
        "data_sha256": meta.get("data_sha256"),
        "n_texts": meta.get("n_texts"),
        "source": source,
    }


def _grid_rows(
    block: dict[str, Any], metric_names: tuple[str, ...], rename: str = ""
) -> list[dict[str, Any]]:
    """Rows of an ``ntps_all_layers`` dict: one per (metric, layer, fraction or k)."""
    columns = block.get("fractions") or None
    rows = []
    for i, layer in enumerate(block["layers"]):
        configs = columns if columns is not None else block["ks"][i]
        for metric in metric_names:
            values = block.get(metric)
            if values is None:
                continue
            for config, value in zip(configs, values[i], strict=True):
                rows.append(
                    {
                        "metric": f"{metric}{rename}",
                        "layer": int(layer),
                        "config": float(config),
                        "value": math.nan if value is None else float(value),
                    }
                )
        rows.append({"metric": f"k_u{rename}", "layer": int(layer), "value": float(block["k_u"][i])})
        rows.append({"metric": f"rank_v{rename}", "layer": int(layer), "value": float(block["rank_v"][i])})
    return rows


def _run_ntps(
    config: StudyConfig, model: str, dataset: str, status: Any, on_batch: Any
) -> list[dict[str, Any]]:
    from perceptalign.ntps.jobs.score import STATISTICS_FILE, ScoreConfig, run_score

    out = cell_dir(config.out, model, dataset)
    result = run_score(
        ScoreConfig(
            model=model,
            dataset=dataset,
            out=out,
            fractions=list(config.fractions),
            device=config.device,
            device_map=config.device_map,
            stats_memory=config.stats_memory,
            **extraction_settings(config),
        ),
        on_status=status,
        on_batch=on_batch,
    )
    prov = _provenance(
        (out / STATISTICS_FILE).with_suffix(".json"), result.results["model_fingerprint"], "ntps.json"
    )
    rows = _grid_rows(result.results, NTPS_METRICS)
    return [{**prov, **row} for row in rows]


def _run_probe(
    config: StudyConfig, model: str, dataset: str, status: Any, on_batch: Any
) -> list[dict[str, Any]]:
    from perceptalign.ntps.jobs.probe import ProbeConfig, run_probe

    out = cell_dir(config.out, model, dataset)
    result = run_probe(
        ProbeConfig(
            model=model,
            dataset=dataset,
            out=out,
            recipe=config.recipe,
            device=config.device,
            device_map=config.device_map,
            **extraction_settings(config),
        ),
        on_status=status,
        on_batch=on_batch,
    )
    prov = _provenance(out / "features_train.json", result.results["model_fingerprint"], "probe.json")
    rows: list[dict[str, Any]] = []
    for record in result.table.to_dict(orient="records"):
        for metric in PROBE_METRICS:
            rows.append({"metric": metric, "layer": int(record["layer"]), "value": float(record[metric])})
    rows.append(
        {
            "metric": "majority_class_accuracy",
            "layer": NO_LAYER,
            "value": float(result.results["majority_class_accuracy"]),
        }
    )
    rows.append(
        {
            "metric": "probe_seconds",
            "layer": NO_LAYER,
            "value": float(result.results["timing"]["probe_seconds"]),
        }
    )
    return [{**prov, **row} for row in rows]


def _run_peers(
    config: StudyConfig, model: str, dataset: str, status: Any, on_batch: Any
) -> list[dict[str, Any]]:
    from perceptalign.ntps.jobs.peers import PeersConfig, run_peers

    out = cell_dir(config.out, model, dataset)
    result = run_peers(
        PeersConfig(
            model=model,
            dataset=dataset,
            out=out,
            metrics=config.peer_metrics,
            top_k=config.top_k,
            device=config.device,
            device_map=config.device_map,
            **extraction_settings(config),
        ),
        on_status=status,
        on_batch=on_batch,
    )
    res = result.results
    prov = {
        "model_fingerprint": res["model_fingerprint"],
        "data_sha256": res["data_sha256"],
        "n_texts": res["n_texts"],
        "source": "peers.json",
    }
    rows = []
    for record in result.table.to_dict(orient="records"):
        for metric in res["metrics"]:
            value = float(record[metric])
            if math.isnan(value) and metric not in res["not_computed"]:
                continue  # NCE/LEEP exist only on the last layer's row
            rows.append({**prov, "metric": metric, "layer": int(record["layer"]), "value": value})
    return rows


def _run_lora(
    config: StudyConfig, model: str, dataset: str, status: Any, on_batch: Any
) -> list[dict[str, Any]]:
    from perceptalign.ntps.finetune import NTPSSettings
    from perceptalign.ntps.jobs.lora import LoraJobConfig, LoraSettings, run_lora
    from perceptalign.ntps.jobs.score import STATISTICS_FILE
    from perceptalign.ntps.placement import resolve_device
    from perceptalign.ntps.recipes import get_recipe

    recipe = get_recipe(config.recipe)
    out = cell_dir(config.out, model, dataset) / "lora"
    job = LoraJobConfig(
        model=model,
        dataset=dataset,
        out=out,
        max_samples=config.max_samples,
        max_eval_samples=config.lora_max_eval_samples,
        max_length=config.max_length,
        # The recipe's LoRA weights (paper: bfloat16); the default recipe keeps the study's dtype.
        dtype=recipe.lora.weights_dtype or config.dtype,
        trust_remote_code=config.trust_remote_code,
        device=str(resolve_device(config.device)),  # the training job takes no `auto`
        recipe=config.recipe,
        train=recipe.train_config(
            "lora",
            steps=config.lora_steps,
            batch_size=config.lora_batch_size,
            lr=config.lora_lr,
            eval_interval=max(1, config.lora_steps // 5),
            seed=config.seed,
        ),
        lora=LoraSettings(r=config.lora_r, alpha=config.lora_alpha),
        ntps_settings=NTPSSettings(
            layers=config.layers, fractions=list(config.fractions), token_budget=config.token_budget
        ),
        # The cell's `ntps` measure already streamed the base model over the same texts.
        statistics_before=cell_dir(config.out, model, dataset) / STATISTICS_FILE,
    )
    result = run_lora(job, on_status=status)
    res = result.results
    # The base-model statistics' metadata (data hash, n_texts) sits beside whichever file was used.
    used = res.get("statistics_before_file")
    meta = Path(used).with_suffix(".json") if used else out / "statistics.json"
    prov = _provenance(meta, res["model_fingerprint"], "lora.json")
    prov["n_texts"] = res["n_train"]
    rows: list[dict[str, Any]] = []
    for metric in LORA_SCALARS:
        if res.get(metric) is not None:
            rows.append({"metric": metric, "layer": NO_LAYER, "value": float(res[metric])})
    for phase, seconds in res.get("seconds", {}).items():
        rows.append({"metric": f"seconds_{phase}", "layer": NO_LAYER, "value": float(seconds)})
    rows.append({"metric": "steps", "layer": NO_LAYER, "value": float(res["steps"])})
    if res.get("ntps_before"):
        rows += _grid_rows(res["ntps_before"], ("ntps", "ntps_orthonormal"), rename="_before_lora")
    if res.get("ntps_after"):
        rows += _grid_rows(res["ntps_after"], ("ntps", "ntps_orthonormal"), rename="_after_lora")
    return [{**prov, **row} for row in rows]


RUNNERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "ntps": _run_ntps,
    "probe": _run_probe,
    "peers": _run_peers,
    "lora": _run_lora,
}


__all__ = [
    "DEFAULT_MEASURES",
    "MEASURES",
    "CellEvent",
    "StudyConfig",
    "StudyResult",
    "cell_dir",
    "iter_cells",
    "run_study",
]

"""The whole natural-image experiment, what `perceptalign rtify images` runs."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from perceptalign.rtify.experiments.natural._common import Decider, Progress
from perceptalign.rtify.experiments.natural.cnn_training import (
    BackboneConfig,
    features_of,
    load_or_train_backbone,
    step_accuracy,
)
from perceptalign.rtify.experiments.natural.item_fit import ItemRTConfig, ItemRTEstimator, ItemRTScore
from perceptalign.rtify.experiments.natural.rt_tables import (
    read_rt_table,
    synthetic_item_rts,
    teacher_difficulty,
)
from perceptalign.rtify.experiments.natural.saliency import rt_scatter_figure, saliency, saliency_figure
from perceptalign.rtify.experiments.natural.self_penalised_items import (
    ItemSelfPenalisedEstimator,
    ItemSelfPenaltyConfig,
)
from perceptalign.rtify.heads import RTifyHead

#: Version of the images.json layout (2: estimators; held-out r intervals and the Fisher-z difference).
IMAGES_SCHEMA = 2


@dataclass(frozen=True)
class ImagesExperiment:
    """Settings of :func:`run_images_experiment`.

    ``items``: test images given generated RTs (ignored with ``rt_table``); ``self_penalised_train``:
    training images for the λ sweep (features of a frozen backbone, so cheap); ``rt_unit``: unit of the
    ``rt_table``'s ``rt_s`` column, ``"s"`` or ``"ms"``; ``n_bootstrap``: image resamples behind each
    held-out interval (:class:`ItemRTConfig`).
    """

    dataset: str = "fashion-mnist"
    data_path: str | None = None
    rt_table: str | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    items: int = 4000
    fit_epochs: int = 150
    ww_epochs: int = 40
    lambdas: tuple[float, ...] = (0.0, 0.001, 0.01, 0.1)
    penalties: tuple[str, ...] = ("tau", "margin", "p_correct")
    self_penalised_train: int = 10000
    saliency_images: int = 4
    use_cache: bool = True
    seed: int = 0
    rt_unit: str = "s"
    n_bootstrap: int = 2000


def item_summary(estimator: ItemRTEstimator, score: ItemRTScore) -> dict[str, Any]:
    """One decider's entry of images.json: the fit facts, the held-out score and the estimator record."""
    record = estimator.to_dict()
    return {
        "decider": estimator.config.decider,
        "n_fit": record["n_train"] + record["n_val"],
        "n_train": record["n_train"],
        "n_val": record["n_val"],
        "r_fit": record["r_fit"],
        **score.summary(),
        "n_parameters": record["n_parameters"],
        "estimator": record,
    }


def run_images_experiment(
    config: ImagesExperiment, out: str | os.PathLike[str], *, progress: Progress | None = None
) -> dict[str, Any]:
    """Train/cache the backbone, fit RTify (readout and random init) and Wong–Wang to per-image RTs,
    sweep the self-penalised head, and write images.json, item_rts.csv, rt_scatter.png, saliency.png
    (and synthetic_rts.csv when the RTs are generated) into ``out``. Returns the JSON summary.
    """
    import time

    from perceptalign.io import write_json_atomic, write_text_atomic
    from perceptalign.plotting import save_figure
    from perceptalign.rtify.experiments.natural.image_data import load_image_dataset

    out = Path(out)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    # A bad RT table must stop the run before the backbone is trained.
    given = None if config.rt_table is None else read_rt_table(config.rt_table, rt_unit=config.rt_unit)
    dataset = load_image_dataset(config.dataset, config.data_path)
    lap("load_data_s")
    backbone, weights, cached = load_or_train_backbone(
        dataset, config.backbone, use_cache=config.use_cache, progress=progress
    )
    lap("backbone_s")
    accuracy = step_accuracy(backbone, dataset.test)
    lap("accuracy_s")

    if given is not None:
        table = given
        rt_source: dict[str, Any] = {"kind": "table", "path": str(config.rt_table), "n_images": len(table)}
        items = dataset.test
    else:
        rng = np.random.default_rng(config.seed)
        pick = np.sort(rng.permutation(len(dataset.test))[: min(config.items, len(dataset.test))])
        items = dataset.test.subset(pick)
        difficulty = teacher_difficulty(dataset.train, items, seed=config.seed)
        generated = synthetic_item_rts(items.ids, difficulty, seed=config.seed)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "synthetic_rts.csv", generated.to_csv(index=False))
        table = read_rt_table(generated)
        rt_source = {
            "kind": "synthetic",
            "process": "rt = 0.35 s + 0.3 s·entropy(teacher) + N(0, 0.05²); teacher = logistic regression "
            "on 14×14 pixels",
            "n_images": len(generated),
        }
    lap("rt_table_s")
    feats = features_of(backbone, items)

    def fit(decider: Decider, epochs: int, init: Literal["readout", "random"] = "readout") -> ItemRTEstimator:
        item = ItemRTConfig(
            decider=decider, init=init, epochs=epochs, n_bootstrap=config.n_bootstrap, seed=config.seed
        )
        return ItemRTEstimator(item, backbone, items, feats, progress=progress).fit(table)

    fits = [fit("rtify", config.fit_epochs, "readout"), fit("rtify", config.fit_epochs, "random")]
    lap("fit_rtify_s")
    fits.append(fit("wong-wang", config.ww_epochs))
    lap("fit_wong_wang_s")
    scores: list[ItemRTScore] = [f.score() for f in fits]
    lap("score_s")

    rng = np.random.default_rng(config.seed + 1)
    sp_pick = rng.permutation(len(dataset.train))[: config.self_penalised_train]
    sp_train = features_of(backbone, dataset.train.subset(np.sort(sp_pick)))
    sp_eval = features_of(backbone, dataset.test)
    sweep = []
    for kind in config.penalties:
        for lam in config.lambdas:
            sp_config = ItemSelfPenaltyConfig(lam=lam, penalty=kind, seed=config.seed)  # type: ignore[arg-type]
            sp = ItemSelfPenalisedEstimator(sp_config, backbone, progress=progress).fit(sp_train)
            sweep.append(sp.score(sp_eval).summary())
    lap("self_penalised_s")

    head = fits[0].decider_
    assert isinstance(head, RTifyHead)
    n_sal = min(config.saliency_images, len(items))
    maps = saliency(backbone, head, items.images[:n_sal])
    out.mkdir(parents=True, exist_ok=True)
    names = ["rtify", "rtify_random_init", "wong_wang"]
    save_figure(saliency_figure(maps, dataset.class_names), out / "saliency.png")
    save_figure(rt_scatter_figure(scores, names), out / "rt_scatter.png")
    tables = [
        pd.concat([f.fit_table_, s.table.assign(split="heldout")], ignore_index=True).assign(decider=name)
        for f, s, name in zip(fits, scores, names, strict=True)
    ]
    write_text_atomic(out / "item_rts.csv", pd.concat(tables, ignore_index=True).to_csv(index=False))
    lap("figures_s")

    summary: dict[str, Any] = {
        "schema": IMAGES_SCHEMA,
        "dataset": dataset.name,
        "n_train_images": len(dataset.train),
        "n_test_images": len(dataset.test),
        "backbone": {
            **asdict(config.backbone),
            "weights": str(weights),
            "loaded_from_cache": cached,
            "feature_size": backbone.feature_size,
        },
        "accuracy_per_step": [round(float(a), 4) for a in accuracy],
        "rt_source": rt_source,
        **{name: item_summary(f, s) for name, f, s in zip(names, fits, scores, strict=True)},
        "self_penalised": sweep,
        "timings": timings,
        "total_s": round(sum(timings.values()), 2),
    }
    write_json_atomic(out / "images.json", summary)
    return summary

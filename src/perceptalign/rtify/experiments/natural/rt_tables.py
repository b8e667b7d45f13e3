"""Per-image RT tables: reading one, and generating one from a KNOWN process (teacher entropy)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from perceptalign.io import PerceptAlignError
from perceptalign.rtify.experiments.natural.cnn_training import check_split
from perceptalign.rtify.experiments.natural.image_data import ImageSplit
from perceptalign.rtify.trials import check_ms_conversion, check_rt_unit, check_rt_unit_name
from perceptalign.tables import read_table


def read_rt_table(table: pd.DataFrame | str | os.PathLike[str], *, rt_unit: str = "s") -> pd.Series:
    """Per-image RT (s) indexed by ``image_id``, from a DataFrame or CSV with columns ``image_id, rt_s``.

    Several rows per image (one per subject or trial) are reduced to the MEDIAN, the per-item statistic
    RTify fits (docs/rtify.md, "Losses"), which is robust to the long right tail of RTs. ``rt_unit="ms"``
    converts
    milliseconds to seconds; RTs in seconds with a median above 20 s are refused as milliseconds.
    """
    check_rt_unit_name(rt_unit)
    name = "RT table"
    if not isinstance(table, pd.DataFrame):
        path = Path(table)
        if not path.exists():
            raise PerceptAlignError(
                f"RT table {path} does not exist; pass a CSV with columns image_id, rt_s."
            )
        table = read_table(path, what="RT table", string_columns=("image_id",))
        name = f"RT table {path.name}"
    missing = [c for c in ("image_id", "rt_s") if c not in table.columns]
    if missing:
        raise PerceptAlignError(
            f"RT table lacks column(s) {missing} (has {list(table.columns)}); it needs image_id (the "
            "dataset's image ids, e.g. test-00042) and rt_s (reaction time in seconds)."
        )
    if table.empty:
        raise PerceptAlignError("RT table has no rows.")
    rt = pd.to_numeric(table["rt_s"], errors="coerce")
    bad = ~np.isfinite(rt.to_numpy(dtype=float)) | (rt.to_numpy(dtype=float) <= 0)
    if bad.any():
        rows = table[bad].head(5).to_string()
        raise PerceptAlignError(
            f"RT table: rt_s must be a positive finite number of seconds; {int(bad.sum())} bad row(s):\n"
            f"{rows}\nFix or drop them."
        )
    if table["image_id"].isna().any():
        raise PerceptAlignError("RT table: image_id has missing values; every row needs an image id.")
    if rt_unit == "ms":
        rt = rt * 1e-3
        check_ms_conversion(rt, name)
    check_rt_unit(rt.to_numpy(dtype=float), name=name)
    series = pd.Series(rt.to_numpy(dtype=float), index=table["image_id"].astype(str).to_numpy())
    return series.groupby(level=0).median().rename("rt_s")


def teacher_difficulty(
    teacher_train: ImageSplit, items: ImageSplit, *, max_train: int = 5000, seed: int = 0
) -> np.ndarray:
    """Difficulty of each item = predictive entropy (nats) of an independent teacher.

    The teacher is a multinomial logistic regression on 14×14 average-pooled pixels: a different model
    class from the CNN, so a head that recovers the teacher's ranking has learnt something about the
    images, not copied its own backbone's confidence.
    """
    from sklearn.linear_model import LogisticRegression

    check_split(teacher_train, "teacher_train")
    check_split(items, "items")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(teacher_train))[:max_train]

    def pixels(x: Tensor) -> np.ndarray:
        return F.avg_pool2d(x, 2).flatten(1).numpy().astype(np.float64)

    clf = LogisticRegression(C=0.5, max_iter=300)
    clf.fit(pixels(teacher_train.images[torch.as_tensor(pick)]), teacher_train.labels[pick].numpy())
    proba = np.clip(clf.predict_proba(pixels(items.images)), 1e-12, 1.0)
    return -(proba * np.log(proba)).sum(axis=1)


def synthetic_item_rts(
    ids: Sequence[str] | np.ndarray,
    difficulty: np.ndarray,
    *,
    t0_s: float = 0.35,
    scale_s: float = 0.3,
    noise_s: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """Ground-truth table ``image_id, rt_s, difficulty`` with RT = t₀ + scale·difficulty + N(0, noise²).

    The noise bounds the best achievable correlation below 1, like between-subject noise in real data.
    RTs are floored at 0.05 s so the table stays valid for any parameters.
    """
    ids = np.asarray(ids).astype(str)
    difficulty = np.asarray(difficulty, dtype=float)
    if ids.ndim != 1 or difficulty.shape != ids.shape or ids.size < 2:
        raise PerceptAlignError("ids and difficulty must be 1-D, of equal length ≥ 2.")
    if not np.isfinite(difficulty).all():
        raise PerceptAlignError("difficulty contains NaN or infinite values.")
    if not (t0_s >= 0 and scale_s > 0 and noise_s >= 0):
        raise PerceptAlignError("synthetic RTs need t0_s ≥ 0, scale_s > 0 and noise_s ≥ 0.")
    rng = np.random.default_rng(seed)
    rt = t0_s + scale_s * difficulty + noise_s * rng.standard_normal(ids.size)
    return pd.DataFrame({"image_id": ids, "rt_s": np.maximum(rt, 0.05), "difficulty": difficulty})

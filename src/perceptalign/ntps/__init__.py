"""NTPS (Next Token Perception Score): how much of the subspace a linear probe needs lies in the subspace
that next-token prediction shapes, per layer, in closed form.

The front door::

    import perceptalign.ntps as ntps

    result = ntps.score(model, tokenizer, texts, labels)           # any loaded Hugging Face causal LM
    result = ntps.ntps_from_hidden(hidden_states, attention_mask, labels)   # your own hidden states
    result.ntps                 # DataFrame: layer × fraction of rank(V)
    result.best(0.5)            # the layer of highest NTPS at f = 0.5

For data streamed batch by batch, feed a :class:`StatisticsAccumulator` and solve its moments with
:func:`ntps_from_statistics`; for many overlapping text sets (carved tasks, halves, folds) from one pass,
:class:`GroupedStatistics`. The command-line jobs (``perceptalign ntps score`` …) live in
:mod:`perceptalign.ntps.jobs` and use the same engine; their training and probing recipes (``paper``, the
published code's choices, and ``default``) are :data:`RECIPES` (:mod:`perceptalign.ntps.recipes`).
"""

from perceptalign.ntps.api import ntps_from_hidden, ntps_from_statistics, score
from perceptalign.ntps.datasets import TextDataset, list_tasks, load_text_dataset
from perceptalign.ntps.models import as_loaded_model, load_causal_lm
from perceptalign.ntps.recipes import RECIPES, Recipe, get_recipe
from perceptalign.ntps.result import BestLayer, NTPSResult
from perceptalign.ntps.statistics import (
    LayerStatistics,
    StatisticsAccumulator,
    load_statistics,
    save_statistics,
)
from perceptalign.ntps.statistics.grouped import GroupedStatistics
from perceptalign.ntps.subspace import DEFAULT_FRACTIONS

__all__ = [
    "DEFAULT_FRACTIONS",
    "RECIPES",
    "BestLayer",
    "GroupedStatistics",
    "LayerStatistics",
    "NTPSResult",
    "Recipe",
    "StatisticsAccumulator",
    "TextDataset",
    "as_loaded_model",
    "get_recipe",
    "list_tasks",
    "load_causal_lm",
    "load_statistics",
    "load_text_dataset",
    "ntps_from_hidden",
    "ntps_from_statistics",
    "save_statistics",
    "score",
]

"""RTify on natural images: a recurrent CNN, decision heads fitted to per-image RTs, self-penalised
training, a Wong–Wang race driven by the CNN's logits, and saliency of the class vs of the decision time.

Pipeline (docs/rtify.md, "The Wong–Wang model" and "Experiments"): train
:class:`~perceptalign.rtify.experiments.natural.recurrent_cnn.RecurrentCNN` with cross-entropy
on EVERY step's readout (so an early decision reads a usable classifier; training on the last step only
leaves early readouts near chance and the head could only decide late); freeze it; then

* :class:`ItemRTEstimator` (settings :class:`ItemRTConfig`) fits a multi-class RTify head (per-step
  features → accumulators → τ) or a :class:`LogitWongWang` race (|Linear(logits)| → n populations) to a
  per-image RT table with −Pearson r (+ a small CE that keeps the choice accurate); its ``score()``
  reports r on the held-out images only, with a bootstrap interval over images and the Fisher-z
  difference from a control refitted on shuffled RTs (:class:`ItemRTScore`);
* :class:`ItemSelfPenalisedEstimator` (:class:`ItemSelfPenaltyConfig`) trains a head with the
  self-penalised objective (the RDM head's) and no human data;
* :func:`saliency` gives ∂(class logit)/∂image and ∂τ/∂image.

No per-image human RTs ship with the project (Kar et al. 2019 is not available), so
:func:`synthetic_item_rts` makes a table from a KNOWN process: RT = t₀ + a·difficulty + noise, the
difficulty being the predictive entropy of an independent teacher (logistic regression on pixels).
Recovering that ranking on held-out images is the end-to-end check; any real table plugs in instead.

Modules: ``image_data`` (Fashion-MNIST, digits), ``recurrent_cnn`` and ``cnn_training``, ``rt_tables``,
``deciders``, ``item_fit``, ``self_penalised_items``, ``saliency`` (and figures), ``image_experiment``
(`rtify images`).
"""

from __future__ import annotations

from perceptalign.rtify.experiments.natural._common import Decider, PenaltyKind, Progress
from perceptalign.rtify.experiments.natural.cnn_training import (
    BackboneConfig,
    FeatureSet,
    extract,
    features_of,
    load_or_train_backbone,
    step_accuracy,
    train_backbone,
)
from perceptalign.rtify.experiments.natural.deciders import LogitWongWang, make_item_head
from perceptalign.rtify.experiments.natural.image_data import ImageDataset, ImageSplit, load_image_dataset
from perceptalign.rtify.experiments.natural.image_experiment import ImagesExperiment, run_images_experiment
from perceptalign.rtify.experiments.natural.item_fit import (
    ItemRTConfig,
    ItemRTEstimator,
    ItemRTScore,
    bootstrap_heldout_r,
    fisher_z,
)
from perceptalign.rtify.experiments.natural.rt_tables import (
    read_rt_table,
    synthetic_item_rts,
    teacher_difficulty,
)
from perceptalign.rtify.experiments.natural.saliency import (
    SaliencyMaps,
    rt_scatter_figure,
    saliency,
    saliency_figure,
)
from perceptalign.rtify.experiments.natural.self_penalised_items import (
    ItemSelfPenalisedEstimator,
    ItemSelfPenaltyConfig,
    ItemSelfPenaltyScore,
)

__all__ = [
    "BackboneConfig",
    "Decider",
    "FeatureSet",
    "ImageDataset",
    "ImageSplit",
    "ImagesExperiment",
    "ItemRTConfig",
    "ItemRTEstimator",
    "ItemRTScore",
    "ItemSelfPenalisedEstimator",
    "ItemSelfPenaltyConfig",
    "ItemSelfPenaltyScore",
    "LogitWongWang",
    "PenaltyKind",
    "Progress",
    "SaliencyMaps",
    "bootstrap_heldout_r",
    "extract",
    "features_of",
    "fisher_z",
    "load_image_dataset",
    "load_or_train_backbone",
    "make_item_head",
    "read_rt_table",
    "rt_scatter_figure",
    "run_images_experiment",
    "saliency",
    "saliency_figure",
    "step_accuracy",
    "synthetic_item_rts",
    "teacher_difficulty",
    "train_backbone",
]

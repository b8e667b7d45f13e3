"""RTify experiments on the abstract RDM task: fit a decision head to human RTs, train a self-penalised
ideal observer, fit the baselines on the same data, and evaluate everything on the human test split.

Choices and why:

* The GRU (see :mod:`perceptalign.rtify.experiments.rdm.task`) is trained once and FROZEN for every
  method, so that all methods share one sensory representation and differ only in how they turn it into
  a decision time.
* Choice rule of the human fit: the model's choice is a draw from the read-out probability p (the
  softmax of ``choice_logits``). The signed-RT histogram loss is then taken in EXPECTATION over that draw:
  each trial puts mass p at +RT and 1 − p at −RT (``weights`` of :func:`soft_histogram`). This makes the
  accuracy differentiable (a hard trial's sign is discrete and gets no gradient), and the quantity
  optimised is exactly the distribution the evaluated model produces. An explicit accuracy term, the
  Bernoulli KL(a_human ‖ mean p) per condition (``acc_weight``), makes the psychometric fit robust even
  when the distance (e.g. the published histogram MSE, whose values are ~1e−5) barely sees it.
* The self-penalised observer reports the argmax of its read-out (the accuracy-maximising choice that its
  cross-entropy trains). Its non-decision time cannot be learned without human data: it is FIXED at
  ``t0_fixed`` = 0.3 s (the order of the non-decision times of DDM fits to RDM data, e.g. Palmer, Huk &
  Shadlen 2005) and reported raw.
* Evidence: the default is the published ``"linear"`` evidence e_t = w·h_t + b. ``"increment"`` uses
  e_t = w·(h_t − h_{t−1}) + b, so the accumulator equals the linear read-out w·h_t + b·(t + 1): the bound
  sits on the network's own decision variable (its log-odds at initialisation), plus a learnable urgency
  drift b; since a GRU state already integrates the stream, ``"linear"`` integrates it a second time.
* Positive quantities (θ, t₀) are softplus-parametrised in :class:`RTifyHead`; the initial θ is chosen so
  that the median decision time matches the target (human median RT − t₀ for the human fit).

Modules: ``task`` (the abstract RDM task and its GRU), ``config``, ``simulated_trials`` (simulation
through the frozen GRU), ``decision_head``, ``human_fit`` (targets and the human-fit objective),
``self_penalised``, ``baseline_fits``, ``fit_experiment`` (`rtify fit`, through the estimators of
:mod:`perceptalign.rtify.estimators`), ``compare`` (`rtify compare`),
``wongwang_fit`` (`rtify fit-ww`).
"""

from __future__ import annotations

from perceptalign.rtify.experiments.rdm.baseline_fits import evaluate_method, fit_baselines
from perceptalign.rtify.experiments.rdm.compare import (
    coherence_markdown,
    compare_fits,
    comparison_markdown,
    markdown_number,
    summary_markdown,
    verdict_line,
)
from perceptalign.rtify.experiments.rdm.config import (
    METHOD_LABELS,
    EvidenceKind,
    FitConfig,
    LossKind,
    Objective,
    PenaltyKind,
)
from perceptalign.rtify.experiments.rdm.decision_head import (
    IncrementEvidence,
    build_head,
    init_threshold,
    p_correct,
)
from perceptalign.rtify.experiments.rdm.fit_experiment import (
    FitResult,
    check_split_tables,
    run_fit,
    write_fit_outputs,
)
from perceptalign.rtify.experiments.rdm.human_fit import (
    HumanTargets,
    check_human_window,
    expected_signed_histograms,
    fit_head_to_human,
    head_sample,
    predict_table,
    table_loss,
    weighted_quantiles,
)
from perceptalign.rtify.experiments.rdm.self_penalised import train_self_penalised, train_self_penalised_on
from perceptalign.rtify.experiments.rdm.simulated_trials import GRUTrials, SimulatedTrials, simulate

__all__ = [
    "METHOD_LABELS",
    "EvidenceKind",
    "FitConfig",
    "FitResult",
    "GRUTrials",
    "HumanTargets",
    "IncrementEvidence",
    "LossKind",
    "Objective",
    "PenaltyKind",
    "SimulatedTrials",
    "build_head",
    "check_human_window",
    "check_split_tables",
    "coherence_markdown",
    "compare_fits",
    "comparison_markdown",
    "evaluate_method",
    "expected_signed_histograms",
    "fit_baselines",
    "fit_head_to_human",
    "head_sample",
    "init_threshold",
    "markdown_number",
    "p_correct",
    "predict_table",
    "run_fit",
    "simulate",
    "summary_markdown",
    "table_loss",
    "train_self_penalised",
    "train_self_penalised_on",
    "verdict_line",
    "weighted_quantiles",
    "write_fit_outputs",
]

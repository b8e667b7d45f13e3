"""The pre-registered task study: NTPS, probe targets, peers and controls over the carved tasks, and the
declared tests (``results/ntps-task-study/PREREGISTRATION.md``).

Per task (all at N = 240 training texts): NTPS at the declared layer, fraction and ridge (and on each half
of the training texts, for reliability); the published estimator; NTPS with permuted labels and under
symmetric label noise; the chance-corrected balanced accuracy of a logistic probe averaged over resplits
(the target); the peer metrics on the same training features. Then the tests: Spearman over tasks with
permutations within parent, a cluster bootstrap by parent, simulated power, Holm, and the peers head to
head with a paired cluster bootstrap of Δρ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import balanced_accuracy_score

from perceptalign.io import PerceptAlignError
from perceptalign.ntps.analysis import cluster_bootstrap_ci, holm, permutation_test, simulated_power
from perceptalign.ntps.datasets.corpora import corpus_table
from perceptalign.ntps.datasets.tasks import RESPLITS, TASKS, get_task, task_split
from perceptalign.ntps.jobs.task_pass import TaskPass
from perceptalign.ntps.peer_metrics import PEER_METRICS
from perceptalign.ntps.probes import LogisticProbe
from perceptalign.ntps.subspace import ntps_for_layer, reference_ntps

#: The peers of the head-to-head comparison (preregistration.json, "peers").
DECLARED_PEERS = ("logme", "fisher_ratio", "h_score_shrinkage", "knn_accuracy", "cv_logistic_accuracy")


@dataclass(frozen=True)
class TaskStudyConfig:
    """Everything that changes the study's numbers; the defaults are the pre-registered values."""

    model: str = "smollm2-135m"
    layer: int = 18
    fraction: float = 0.5
    ridge: float = 0.1
    max_length: int = 512
    token_budget: int = 4096
    tasks: tuple[str, ...] = tuple(TASKS)
    resplits: tuple[int, ...] = RESPLITS
    label_permutations: int = 5
    noise_levels: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)
    peers: tuple[str, ...] = DECLARED_PEERS
    n_permutations: int = 100_000
    n_boot: int = 5_000
    n_power_simulations: int = 1_000
    zoo_permutations: int = 2_000
    zoo_boot: int = 1_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise PerceptAlignError(f"`fraction` must lie in (0, 1], got {self.fraction}.")
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise PerceptAlignError(f"`ridge` must be a finite number ≥ 0, got {self.ridge}.")
        if len(self.tasks) < 4:
            raise PerceptAlignError(f"the study needs at least 4 tasks, got {len(self.tasks)}.")
        for name in self.tasks:
            get_task(name)
        unknown = [p for p in self.peers if p not in PEER_METRICS]
        if unknown:
            raise PerceptAlignError(f"unknown peers {unknown}: choose from {sorted(PEER_METRICS)}.")
        if 0 not in self.resplits:
            raise PerceptAlignError("`resplits` must include the canonical split 0.")
        if any(not 0 <= eta < 1 for eta in self.noise_levels):
            raise PerceptAlignError(f"`noise_levels` must lie in [0, 1), got {self.noise_levels}.")


def _ntps(stats_or_matrices: Any, config: TaskStudyConfig, M_xy: np.ndarray | None = None) -> float:
    s = stats_or_matrices
    result = ntps_for_layer(
        s.M_xx.numpy(),
        s.M_xy.numpy() if M_xy is None else M_xy,
        s.C0.numpy(),
        s.C1.numpy(),
        fractions=[config.fraction],
        ridge=config.ridge,
        reference=False,
    )
    return float(result.ntps[0])


def _m_xy(features: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """M_xy = Σ x̄ yᵀ / N from the pooled features (float64)."""
    onehot = np.eye(n_classes)[labels]
    return features.astype(np.float64).T @ onehot / len(labels)


def _chance_corrected(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """(balanced accuracy − 1/C) / (1 − 1/C): 0 at chance, 1 when perfect, whatever the class count."""
    return float(balanced_accuracy_score(y_true, y_pred, adjusted=True))


def _flip(labels: np.ndarray, n_classes: int, eta: float, rng: np.random.Generator) -> np.ndarray:
    """Symmetric label noise: each label replaced, with probability η, by one of the other classes."""
    flip = rng.random(len(labels)) < eta
    other = (labels + rng.integers(1, n_classes, len(labels))) % n_classes
    return np.where(flip, other, labels)


def _split_rows(universe_rows: Callable[[np.ndarray], np.ndarray], groups: Sequence[np.ndarray]) -> tuple:
    rows = [universe_rows(g) for g in groups]
    labels = [np.full(len(r), c, dtype=np.int64) for c, r in enumerate(rows)]
    return np.concatenate(rows), np.concatenate(labels), rows


def measure_task(task_pass: TaskPass, name: str, config: TaskStudyConfig) -> dict[str, Any]:
    """Every per-task number of the study (NTPS and controls, target, peers)."""
    spec = get_task(name)
    C = len(spec.classes)
    ts = task_split(name)
    table, _ = corpus_table(spec.corpus)
    texts = table["text"].tolist()
    X = task_pass.features

    def to_universe(rows: np.ndarray) -> np.ndarray:
        return task_pass.universe.rows(spec.corpus, rows)

    train, y_train, _ = _split_rows(to_universe, ts.train)
    stats = task_pass.statistics(name)
    rng = np.random.default_rng([config.seed, *name.encode()])
    record: dict[str, Any] = {
        "name": name,
        "parent": spec.parent,
        "corpus": spec.corpus,
        "classes": C,
        "class_names": spec.class_names,
        "n_train": len(train),
        "n_test": ts.n_test_per_class * C,
        "ntps_declared": _ntps(stats, config),
    }
    for h in (0, 1):
        record[f"ntps_half{h}"] = _ntps(task_pass.statistics(name, (h,)), config)
    ref = reference_ntps(
        stats.M_xx.numpy(), stats.M_xy.numpy(), stats.C0.numpy(), stats.C1.numpy(), [config.fraction]
    )
    record["ntps_reference"] = float(ref[0])
    permuted = [
        _ntps(stats, config, _m_xy(X[train], rng.permutation(y_train), C))
        for _ in range(config.label_permutations)
    ]
    record["ntps_permuted"] = float(np.mean(permuted))

    # Target: chance-corrected balanced accuracy, averaged over resplits; split-half on the test halves.
    scores, half_a, half_b = [], [], []
    for r in config.resplits:
        tr_groups, te_groups = ts.resplit(texts, r)
        tr, y_tr, _ = _split_rows(to_universe, tr_groups)
        te, y_te, te_rows = _split_rows(to_universe, te_groups)
        probe = LogisticProbe(n_classes=C).fit(X[tr], y_tr)
        pred = probe.predict(X[te])
        scores.append(_chance_corrected(y_te, pred))
        first = np.concatenate(
            [np.arange(len(g))[: len(g) // 2] + sum(map(len, te_rows[:c])) for c, g in enumerate(te_rows)]
        )
        second = np.setdiff1d(np.arange(len(te)), first)
        half_a.append(_chance_corrected(y_te[first], pred[first]))
        half_b.append(_chance_corrected(y_te[second], pred[second]))
        record[f"target_r{r}"] = scores[-1]
    record["target"] = float(np.mean(scores))
    record["target_half_a"] = float(np.mean(half_a))
    record["target_half_b"] = float(np.mean(half_b))

    # Symmetric label noise on the training labels: NTPS (M_xy from the noisy labels) and the probe.
    te, y_te, _ = _split_rows(to_universe, ts.test)
    for eta in config.noise_levels:
        noisy = _flip(y_train, C, eta, rng) if eta > 0 else y_train
        if len(np.unique(noisy)) < 2:
            noisy = y_train
        record[f"ntps_noise_{eta:g}"] = _ntps(stats, config, _m_xy(X[train], noisy, C))
        pred = LogisticProbe(n_classes=C).fit(X[train], noisy).predict(X[te])
        record[f"target_noise_{eta:g}"] = _chance_corrected(y_te, pred)

    for peer in config.peers:
        record[peer] = float(PEER_METRICS[peer].function(X[train].astype(np.float64), y_train, None))
    return record


def measure_tasks(
    task_pass: TaskPass, config: TaskStudyConfig, on_task: Callable[[str], None] | None = None
) -> pd.DataFrame:
    records = []
    for name in config.tasks:
        records.append(measure_task(task_pass, name, config))
        if on_task:
            on_task(name)
    return pd.DataFrame.from_records(records)


# ------------------------------------------------------------------------------------------- analysis


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(spearmanr(x, y).statistic)


def _declared_test(
    table: pd.DataFrame,
    column: str,
    config: TaskStudyConfig,
    test_id: str,
    target: str = "target",
    target_label: str = "chance-corrected balanced accuracy (mean over resplits)",
) -> dict[str, Any]:
    x, y = table[column].to_numpy(float), table[target].to_numpy(float)
    groups = table["parent"].to_numpy()
    perm = permutation_test(
        x, y, groups=groups, alternative="greater", n_permutations=config.n_permutations, seed=config.seed
    )
    ci = cluster_bootstrap_ci(x, y, groups, n_boot=config.n_boot, seed=config.seed)
    return {
        "id": test_id,
        "model": config.model,
        "predictor": column,
        "target": target_label,
        "rho": float(perm.statistic),
        "ci": [float(ci[0]), float(ci[1])],
        "p": float(perm.p),
        "exact": bool(perm.exact),
        "n_permutations": int(perm.n_permutations),
        "n": int(perm.n),
    }


def _paired_delta(table: pd.DataFrame, peer: str, sign: float, config: TaskStudyConfig) -> dict[str, Any]:
    """ρ(NTPS) − ρ(peer) with both correlations on the same resampled parents (paired cluster bootstrap)."""
    y = table["target"].to_numpy(float)
    ntps = table["ntps_declared"].to_numpy(float)
    other = sign * table[peer].to_numpy(float)
    groups = table["parent"].to_numpy()
    parents = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in parents]
    rng = np.random.default_rng(config.seed)
    deltas = []
    for _ in range(config.n_boot):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(parents), len(parents))])
        a, b = _spearman(ntps[rows], y[rows]), _spearman(other[rows], y[rows])
        if np.isfinite(a) and np.isfinite(b):
            deltas.append(a - b)
    deltas_ = np.asarray(deltas)
    rho_peer = _spearman(other, y)
    delta = _spearman(ntps, y) - rho_peer
    p = min(1.0, 2 * min(np.mean(deltas_ <= 0), np.mean(deltas_ >= 0)) + 1 / len(deltas_))
    return {
        "peer": peer,
        "rho_peer": rho_peer,
        "delta_rho": delta,
        "ci": [float(np.percentile(deltas_, 2.5)), float(np.percentile(deltas_, 97.5))],
        "p": float(p),
        "n_boot_used": len(deltas_),
    }


def _split_half(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    r = _spearman(a, b)
    return {"half_rho": r, "spearman_brown": 2 * r / (1 + r) if r > -1 else float("nan")}


def analyse(
    table: pd.DataFrame,
    config: TaskStudyConfig,
    lora: pd.DataFrame | None = None,
    zoo: Mapping[str, pd.DataFrame] | None = None,
    zoo_about: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The declared tests on the per-task table (one row per task); S3 when the LoRA arm's table is given,
    S2 when the zoo models' tables are (``zoo``: model → per-task table, the declared model's excluded)."""
    if len(table) < 4:
        raise PerceptAlignError(f"the analysis needs at least 4 tasks, got {len(table)}.")
    groups = table["parent"].to_numpy()
    primary = _declared_test(table, "ntps_declared", config, "P1")
    secondary = [_declared_test(table, "ntps_reference", config, "S1")]
    lora_arm: dict[str, Any] | None = None
    if lora is not None and len(lora):
        arm = lora.merge(table[["name", "ntps_declared"]], on="name", how="left")
        if arm["ntps_declared"].isna().any():
            raise PerceptAlignError("the LoRA arm holds tasks that the study did not measure.")
        label = "LoRA gain over the converged probe (chance-corrected accuracy, same 400 texts)"
        secondary.append(_declared_test(arm, "ntps_declared", config, "S3", "gain_over_probe", label))
        lora_arm = {
            "n_tasks": len(arm),
            "mean_gain_over_probe": float(arm["gain_over_probe"].mean()),
            "mean_gain_over_head": float(arm["gain_over_head"].mean()),
            "share_lora_above_probe": float((arm["gain_over_probe"] > 0).mean()),
            "share_lora_above_head": float((arm["gain_over_head"] > 0).mean()),
            "rho_ntps_gain_over_head": _spearman(
                arm["ntps_declared"].to_numpy(), arm["gain_over_head"].to_numpy()
            ),
            "tasks": arm.to_dict(orient="records"),
        }
    zoo_arm: dict[str, Any] | None = None
    if zoo:
        from perceptalign.ntps.jobs.task_study_zoo import zoo_test

        tables = {config.model: table, **zoo}
        s2 = zoo_test(
            tables, n_permutations=config.zoo_permutations, n_boot=config.zoo_boot, seed=config.seed
        )
        secondary.insert(1, s2)
        per_model = []
        for model, model_table in tables.items():
            entry = _declared_test(model_table, "ntps_declared", replace(config, model=model), "S2-" + model)
            about = next((dict(a) for a in zoo_about if a.get("model") == model), {"model": model})
            per_model.append({**about, "rho": entry["rho"], "ci": entry["ci"], "p": entry["p"]})
        zoo_arm = {
            "models": per_model,
            "mean_rho": float(np.mean([m["rho"] for m in per_model])),
            "n_tasks": s2["n"],
        }
    adjusted = holm([primary["p"], *(s["p"] for s in secondary)])
    primary["p_holm"] = float(adjusted[0])
    for s, p in zip(secondary, adjusted[1:], strict=True):
        s["p_holm"] = float(p)
    for icc in (0.0, 0.3):
        primary[f"power_at_rho_0.5_icc_{icc:g}"] = simulated_power(
            len(table),
            rho=0.5,
            groups=groups,
            n_sim=config.n_power_simulations,
            seed=config.seed,
            within_group_correlation=icc,
        )
    primary["power_at_rho_0.5"] = primary["power_at_rho_0.5_icc_0.3"]

    peers = []
    for peer in config.peers:
        sign = -1.0 if not PEER_METRICS[peer].higher_is_better else 1.0
        peers.append(_paired_delta(table, peer, sign, config))
    for entry, p in zip(peers, holm([e["p"] for e in peers]), strict=True):
        entry["p_holm"] = float(p)
        entry["verdict"] = (
            "NTPS better"
            if p < 0.05 and entry["delta_rho"] > 0
            else "NTPS worse"
            if p < 0.05
            else "no detectable difference"
        )

    noise = [
        {
            "eta": eta,
            "mean_ntps": float(table[f"ntps_noise_{eta:g}"].mean()),
            "mean_target": float(table[f"target_noise_{eta:g}"].mean()),
        }
        for eta in config.noise_levels
    ]
    controls = {
        "permuted_labels": {
            "mean_ntps_real": float(table["ntps_declared"].mean()),
            "mean_ntps_permuted": float(table["ntps_permuted"].mean()),
            "rho_permuted_target": _spearman(table["ntps_permuted"].to_numpy(), table["target"].to_numpy()),
            "share_real_above_permuted": float((table["ntps_declared"] > table["ntps_permuted"]).mean()),
        },
        "label_noise": noise,
    }
    reliability = {
        "ntps": _split_half(table["ntps_half0"].to_numpy(), table["ntps_half1"].to_numpy()),
        "target": _split_half(table["target_half_a"].to_numpy(), table["target_half_b"].to_numpy()),
    }
    by_parent = (
        table.groupby("parent")
        .apply(
            lambda g: pd.Series(
                {
                    "n": len(g),
                    "rho": _spearman(g["ntps_declared"], g["target"]) if len(g) > 2 else float("nan"),
                }
            ),
            include_groups=False,
        )
        .reset_index()
    )
    return {
        "n_tasks": len(table),
        "primary": primary,
        "secondary": secondary,
        "peers_head_to_head": peers,
        "reliability": reliability,
        "lora_arm": lora_arm,
        "zoo_arm": zoo_arm,
        "controls": controls,
        "within_parent": by_parent.to_dict(orient="records"),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
    }


def deviations(
    config: TaskStudyConfig, prereg: Mapping[str, Any], *, lora_run: bool = False, zoo_run: bool = False
) -> list[str]:
    """Where the run differs from the pre-registration (empty when it follows it)."""
    out = []
    declared = prereg.get("configuration", {})
    for key in ("model", "layer", "fraction", "ridge", "max_length"):
        if key in declared and declared[key] != getattr(config, key):
            out.append(f"{key}: declared {declared[key]!r}, run {getattr(config, key)!r}")
    if len(config.tasks) != len(TASKS):
        out.append(f"tasks: declared all {len(TASKS)}, run {len(config.tasks)}")
    if tuple(config.peers) != DECLARED_PEERS:
        out.append(f"peers: declared {list(DECLARED_PEERS)}, run {list(config.peers)}")
    for test in prereg.get("analysis", {}).get("secondary", []):
        ran = (test["id"] == "S3" and lora_run) or (test["id"] == "S2" and zoo_run)
        if test.get("planned") and not ran:
            out.append(f"{test['id']} not run in this round (planned): {test['hypothesis']}")
    return out


@dataclass
class TaskStudyReport:
    table: pd.DataFrame
    analysis: dict[str, Any]
    preregistration: dict[str, Any]
    deviations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        tasks = self.table.to_dict(orient="records")
        return {
            "n_tasks": self.analysis["n_tasks"],
            "preregistration": self.preregistration,
            "deviations": self.deviations,
            **{k: v for k, v in self.analysis.items() if k != "n_tasks"},
            "tasks": tasks,
        }


# ---------------------------------------------------------------------------------------------- the run


def measure_model(
    config: TaskStudyConfig,
    out: Path,
    loaded: Any,
    *,
    on_status: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    on_task: Callable[[str], None] | None = None,
    reuse_table: Callable[[dict[str, Any]], pd.DataFrame | None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One model's per-task table: the pass (reused from ``out/pass.safetensors`` when its identity matches)
    and the per-task measurements, unless ``reuse_table`` returns a stored table for the pass identity."""
    from perceptalign.io import ensure_output_dir
    from perceptalign.ntps.jobs.task_pass import (
        TaskUniverse,
        load_task_pass,
        pass_identity,
        run_task_pass,
        save_task_pass,
    )

    ensure_output_dir(out)
    universe = TaskUniverse.build(config.tasks)
    if not 0 <= config.layer < loaded.n_hidden_states:
        raise PerceptAlignError(
            f"`layer` {config.layer} does not exist: {config.model} has hidden states "
            f"0..{loaded.n_hidden_states - 1}."
        )
    identity = pass_identity(loaded, universe, config.layer, config.max_length)
    if reuse_table is not None:
        stored = reuse_table(identity)
        if stored is not None:
            if on_status:
                on_status(f"reusing the per-task table of {config.model} saved in {out}")
            return stored, identity
    path = out / "pass.safetensors"
    task_pass = load_task_pass(path, universe, identity, loaded.hidden_size)
    if task_pass is None:
        if on_status:
            on_status(
                f"one pass of {config.model} over {len(universe.texts)} texts of {len(config.tasks)} tasks"
            )
        if on_start:
            on_start(len(universe.texts), 0)
        task_pass = run_task_pass(
            loaded,
            universe,
            config.layer,
            max_length=config.max_length,
            token_budget=config.token_budget,
            on_batch=on_batch,
        )
        save_task_pass(path, task_pass)
    elif on_status:
        on_status(f"reusing the pass saved in {path}")
    return measure_tasks(task_pass, config, on_task=on_task), identity


def run_task_study(
    config: TaskStudyConfig,
    out: Path,
    preregistration: Mapping[str, Any],
    *,
    loaded: Any = None,
    on_status: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    on_task: Callable[[str], None] | None = None,
) -> TaskStudyReport:
    """The whole study: one pass (reused from ``out/pass.safetensors`` when its identity matches), the
    per-task measurements, the declared analysis, and the report files in ``out``."""
    from perceptalign.io import ensure_output_dir
    from perceptalign.ntps.jobs.task_study_report import write_task_study

    ensure_output_dir(out)
    if loaded is None:
        from perceptalign.ntps.models import load_causal_lm

        if on_status:
            on_status(f"loading {config.model}")
        loaded = load_causal_lm(config.model)
    table, _ = measure_model(
        config, out, loaded, on_status=on_status, on_start=on_start, on_batch=on_batch, on_task=on_task
    )
    report = TaskStudyReport(
        table=table,
        analysis=analyse(table, config),
        preregistration=dict(preregistration),
        deviations=deviations(config, preregistration),
    )
    write_task_study(out, report)
    return report


def reanalyse_task_study(
    config: TaskStudyConfig, out: Path, preregistration: Mapping[str, Any]
) -> TaskStudyReport:
    """Redo the declared analysis and the report files from the per-task table stored in ``out/report.json``
    (no model, no pass): for an analysis or report change after the measurements."""
    from perceptalign.ntps.jobs.task_study_report import write_task_study

    path = out / "report.json"
    if not path.is_file():
        raise PerceptAlignError(f"no {path}: run the whole study first (the measurements write it).")
    import json

    stored = json.loads(path.read_text())
    table = pd.DataFrame.from_records(stored["tasks"])
    missing = sorted(set(config.tasks) - set(table["name"]))
    if missing:
        raise PerceptAlignError(f"{path} lacks tasks {missing[:5]}: rerun the whole study on them first.")
    table = table[table["name"].isin(config.tasks)].reset_index(drop=True)
    arm_path = out / "lora_arm.json"
    lora = (
        pd.DataFrame.from_records(json.loads(arm_path.read_text())["tasks"]) if arm_path.is_file() else None
    )
    from perceptalign.ntps.jobs.task_study_zoo import load_zoo_tables

    zoo, zoo_about = load_zoo_tables(out, config.tasks)
    report = TaskStudyReport(
        table=table,
        analysis=analyse(table, config, lora, zoo or None, zoo_about),
        preregistration=dict(preregistration),
        deviations=deviations(config, preregistration, lora_run=lora is not None, zoo_run=bool(zoo)),
    )
    write_task_study(out, report)
    return report

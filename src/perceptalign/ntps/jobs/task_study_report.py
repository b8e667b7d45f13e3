"""The task study's files: ``report.json`` (everything), ``tasks.csv`` (one row per task), ``summary.md``
(the declared tests in words and tables) and ``report.html`` (the same with the scatter of NTPS against the
target). Everything is drawn from the stored per-task table; no model is loaded here."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from perceptalign.io import write_json_atomic, write_text_atomic


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if value < 0 or digits else f"{value:.{digits}f}"
    return str(value)


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def summary_markdown(report: dict[str, Any]) -> str:
    p1 = report["primary"]
    lines = [
        "# NTPS task study — declared tests",
        "",
        f"{report['n_tasks']} tasks, model {p1['model']}, layer {report['config']['layer']}, "
        f"f = {report['config']['fraction']}, ridge {report['config']['ridge']}; target: {p1['target']}.",
        "",
        "Deviations from the pre-registration: "
        + ("; ".join(report["deviations"]) if report["deviations"] else "none."),
        "",
        "| test | predictor | ρ | 95 % cluster-bootstrap CI | p (one-sided, permutations within parent) "
        "| p (Holm) |",
        "|---|---|---|---|---|---|",
    ]
    for t in [p1, *report["secondary"]]:
        how = "exact" if t["exact"] else f"{t['n_permutations']:,} draws"
        lines.append(
            f"| {t['id']} | {t['predictor']} | {t['rho']:+.3f} | [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}] | "
            f"{_p(t['p'])} ({how}) | {_p(t['p_holm'])} |"
        )
    lines += [
        "",
        f"Simulated power of P1 at ρ = .5 (n = {p1['n']}, parent grouping): "
        f"{p1['power_at_rho_0.5_icc_0']:.2f} with intra-parent correlation 0, "
        f"{p1['power_at_rho_0.5_icc_0.3']:.2f} with .3.",
        "",
        "## Peers head to head (Δρ = ρ_NTPS − ρ_peer, paired cluster bootstrap)",
        "",
        "| peer | ρ_peer | Δρ | 95 % CI | p (Holm) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for e in report["peers_head_to_head"]:
        lines.append(
            f"| {e['peer']} | {e['rho_peer']:+.3f} | {e['delta_rho']:+.3f} | "
            f"[{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}] | {_p(e['p_holm'])} | {e['verdict']} |"
        )
    zoo = report.get("zoo_arm")
    if zoo:
        s2 = next(t for t in report["secondary"] if t["id"] == "S2")
        comps = s2["variance_components"]
        lines += [
            "",
            f"## Scratch-LM arm (S2, pre-registration amendment 2; {len(zoo['models'])} models × "
            f"{zoo['n_tasks']} tasks)",
            "",
            "- S2's ρ column is the mixed-model slope β of z(rank target) on z(rank NTPS), ranks within "
            "each model, with random intercepts for task (shared by the models) and parent: "
            f"β = {s2['beta']:+.3f} "
            f"(model-based SE {s2['beta_se_model_based']:.3f}); variance components: task "
            f"{comps['task']:.3f}, parent {comps['parent']:.3f}, residual {comps['residual']:.3f}.",
            f"- Mean of the per-model ρ: {zoo['mean_rho']:+.3f}. Descriptive, not pre-registered: the slope "
            f"between tasks (task means over models) is {s2['descriptive_slopes']['between_tasks']:+.3f}, "
            f"within tasks (each model's deviation) {s2['descriptive_slopes']['within_tasks']:+.3f}; "
            "β blends the two.",
            "",
            "| model | layer | held-out perplexity | ρ(NTPS, target) | 95 % CI | p (within parent) |",
            "|---|---|---|---|---|---|",
            *(
                f"| {m['model']} | {m.get('layer', report['config']['layer'])} | "
                f"{format(m['val_perplexity'], '.1f') if m.get('val_perplexity') else 'pretrained'} | "
                f"{m['rho']:+.3f} | [{m['ci'][0]:+.3f}, {m['ci'][1]:+.3f}] | {_p(m['p'])} |"
                for m in zoo["models"]
            ),
        ]
    arm = report.get("lora_arm")
    if arm:
        lines += [
            "",
            f"## LoRA arm ({arm['n_tasks']} tasks, pre-registration amendment 1)",
            "",
            f"- Mean gain of LoRA over the converged probe: {arm['mean_gain_over_probe']:+.3f} "
            f"(chance-corrected accuracy; LoRA above the probe on {arm['share_lora_above_probe']:.0%} "
            "of tasks).",
            f"- Mean gain over the same-budget frozen head: {arm['mean_gain_over_head']:+.3f} "
            f"(LoRA above on {arm['share_lora_above_head']:.0%}); "
            f"ρ(NTPS, that gain) = {arm['rho_ntps_gain_over_head']:+.3f}.",
            "",
            "Probe, head and LoRA columns: balanced accuracy on the same n held-out texts; gains: "
            "differences of chance-corrected balanced accuracy.",
            "",
            "| task | n | NTPS | probe | head | LoRA | gain over probe | gain over head |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {t['name']} | {t['n_eval']} | {t['ntps_declared']:.3f} | {t['accuracy_probe']:.3f} | "
                f"{t['accuracy_head']:.3f} | {t['accuracy_lora']:.3f} | {t['gain_over_probe']:+.3f} | "
                f"{t['gain_over_head']:+.3f} |"
                for t in arm["tasks"]
            ),
        ]
    rel, ctl = report["reliability"], report["controls"]
    perm = ctl["permuted_labels"]
    lines += [
        "",
        "## Reliability and controls",
        "",
        f"- Split-half reliability (Spearman–Brown): NTPS {rel['ntps']['spearman_brown']:.2f}, "
        f"target {rel['target']['spearman_brown']:.2f}.",
        f"- Permuted labels: mean NTPS {perm['mean_ntps_permuted']:.3f} vs {perm['mean_ntps_real']:.3f} "
        f"with the real labels (real above permuted on {perm['share_real_above_permuted']:.0%} of tasks); "
        f"ρ(permuted NTPS, target) = {perm['rho_permuted_target']:+.3f}.",
        "- Symmetric label noise (mean over tasks):",
        "",
        "| η | mean NTPS | mean target |",
        "|---|---|---|",
        *(f"| {n['eta']:g} | {n['mean_ntps']:.3f} | {n['mean_target']:.3f} |" for n in ctl["label_noise"]),
        "",
        "## Within each parent",
        "",
        "| parent | tasks | ρ(NTPS, target) |",
        "|---|---|---|",
        *(f"| {w['parent']} | {int(w['n'])} | {_f(w['rho'])} |" for w in report["within_parent"]),
        "",
    ]
    return "\n".join(lines)


def _scatter_png(report: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report["tasks"]
    parents = sorted({t["parent"] for t in tasks})
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, parent in enumerate(parents):
        rows = [t for t in tasks if t["parent"] == parent]
        ax.scatter(
            [t["ntps_declared"] for t in rows],
            [t["target"] for t in rows],
            s=22,
            color=cmap(i % 10),
            label=parent,
        )
    ax.set_xlabel(f"NTPS (layer {report['config']['layer']}, f = {report['config']['fraction']})")
    ax.set_ylabel("chance-corrected balanced accuracy")
    ax.legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def report_html(report: dict[str, Any], summary: str) -> str:
    body = []
    in_table = False
    for line in summary.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    body.append(
        "<h2>NTPS against the target</h2>"
        f'<img alt="scatter" src="data:image/png;base64,{_scatter_png(report)}">'
    )
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>NTPS task study</title>"
        f"<style>{style}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_task_study(out: Path, report_obj: Any) -> None:
    report = report_obj.to_dict()
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "tasks.csv", report_obj.table.drop(columns=["class_names"]).to_csv(index=False))
    summary = summary_markdown(report)
    write_text_atomic(out / "summary.md", summary)
    write_text_atomic(out / "report.html", report_html(report, summary))

"""The report's HTML tables: per run (metrics, tasks, probes) and the comparison across runs.

Cells are HTML; every user-provided string (run, task and probe names) is escaped here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from forgetlab.report.data import RunData, rank_entries, source_loss
from forgetlab.report.format import e, num, pm, regularizer, strategy
from forgetlab.report.summary import (
    all_accuracy,
    frontier_flags,
    has_floorless,
    probe_changes,
    probe_sources,
    run_point,
    std_matrix,
)

METRIC_ROWS = (
    ("acc", "ACC: mean final accuracy R[T][j]"),
    ("initial_acc", "initial_acc: mean R[j][j], right after learning"),
    ("avg_forgetting", "avg_forgetting: mean R[j][j] − R[T][j], j < T"),
    ("max_forgetting", "max_forgetting"),
    ("bwt", "BWT: mean R[T][j] − R[j][j], j < T"),
    ("fwt", "FWT: mean R[j−1][j] − R[0][j], j ≥ 2"),
)
NEG_NLL = (
    "neg_nll = −(mean NLL per token) of held-out text or responses: higher is better, so a "
    "change of −0.1 is the NLL rising by 0.1 and a forgetting of +0.1 the same."
)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Cells are HTML already (callers escape user strings); headers are escaped here."""
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<div class=scroll><table><tr>{head}</tr>{body}</table></div>"


def _learned_cell(k: int, n: int) -> str:
    verdict = "yes" if k == n else "no" if k == 0 else "some"
    return f"<span class={verdict}>learned in {k}/{n} seeds</span>"


def metrics_table(summary: dict) -> str:
    agg = summary.get("aggregate") or {}
    point = run_point(summary)
    score = not all_accuracy(summary)
    rows = [
        [e(label.replace("accuracy", "score") if score else label), pm(agg, key)]
        for key, label in METRIC_ROWS
    ]
    above = num(point.learning, signed=True)
    if point.learning_ci is not None:
        above += f" ± {point.learning_ci:.3f}"
    label = "learning above majority: initial_acc − mean majority"
    if has_floorless(summary):
        label = "learning above the floor: initial_acc − mean floor (majority, or base score)"
    rows.insert(2, [e(label), above])
    note = ""
    if point.forgetting is None:
        note = "<p class=note>Forgetting, BWT and FWT are undefined for a single task.</p>"
    return table(["metric", "value"], rows) + note


def tasks_table(summary: dict) -> str:
    s = summary
    R = np.asarray(s["accuracy_matrix"], float)
    std = std_matrix(s, R.shape)
    T, n_seeds = len(s["tasks"]), len(s["seeds"])
    n_eval = s.get("n_eval")
    n_eval = n_eval if isinstance(n_eval, list) and len(n_eval) == T else ["n/a"] * T
    metrics = s.get("metrics") if isinstance(s.get("metrics"), list) else None
    rows = []
    for j, task in enumerate(s["tasks"]):
        learned = f"{R[j + 1, j]:.3f}" + (f" ± {std[j + 1, j]:.3f}" if std is not None else "")
        forgot = num(R[j + 1, j] - R[T, j], signed=True) if j < T - 1 else "— (last task)"
        name = e(task) + (f" <span class=note>({e(metrics[j])})</span>" if metrics else "")
        rows.append(
            [
                name,
                e(n_eval[j]),
                num(s["majority_baseline"][j]),
                f"{R[0, j]:.3f}",
                learned,
                _learned_cell(int(s["learned_seeds"][j]), n_seeds),
                f"{R[T, j]:.3f}",
                forgot,
            ]
        )
    header = ["task", "n_eval", "majority", "base R[0][j]", "R[j][j]", "learned?", "final R[T][j]"]
    note = (
        "<p class=note>R[j][j] ± its std over seeds; learned? = the one-sided binomial test of "
        "R[j][j] against the majority baseline per seed; forgetting = R[j][j] − R[T][j].</p>"
    )
    notes = note if std is not None else ""
    if has_floorless(s):
        notes += (
            "<p class=note>majority n/a: the score has no chance level; the task is compared "
            "with the base model R[0][j] instead, and learned? is a one-sided paired t-test of "
            f"the per-example loss against the base model. {e(NEG_NLL)}</p>"
        )
    return table([*header, "forgetting"], rows) + notes


AT_CHANCE = "(base at chance: its change is noise)"


def probes_table(summary: dict) -> str:
    """Each probe after every stage, its chance level and whether the base model beat it."""
    probes = summary["probes"]
    P = np.asarray(summary["probe_matrix"], float)
    if P.ndim != 2 or P.shape[1] != len(probes):
        raise ValueError(f"probe_matrix is {P.shape}, expected (stages, {len(probes)} probes)")
    n = len(probes)
    metrics = summary.get("probe_metrics") or [None] * n
    chance = summary.get("probe_baseline") or [None] * n
    above = summary.get("probe_base_above_chance") or [None] * n
    sources = probe_sources(summary)
    change = probe_changes(summary)
    rows = []
    for k, name in enumerate(probes):
        if above[k] is None:
            verdict = "— <span class=note>(no chance level)</span>"
        elif above[k]:
            verdict = "<span class=yes>yes</span>"
        else:
            verdict = f"<span class=no>no</span> <span class=note>{AT_CHANCE}</span>"
        used = "yes" if sources[k] else "no" + (" (base scores 0)" if above[k] is None else "")
        rows.append(
            [
                e(name),
                e(metrics[k]),
                num(chance[k]),
                f"{P[0, k]:.3f}",
                verdict,
                *(f"{v:.3f}" for v in P[1:, k]),
                num(float(change[k]), signed=True),
                used,
            ]
        )
    stages = [f"after {t}" for t in summary["tasks"][: P.shape[0] - 1]]
    header = ["probe", "metric", "chance", "base", "base > chance?", *stages, "change"]
    note = (
        "Probes are tasks never trained on, scored after every stage: what the "
        "model could do before (the source side). change = final − base score (mean over "
        "seeds); below 0 = lost. base > chance? = one-sided exact binomial test of the base "
        "model's accuracy against chance; a probe the base model does not pass cannot show "
        "forgetting. in source loss? = counted in the run's source loss (across runs)."
    )
    if "neg_nll" in metrics:
        note += " " + NEG_NLL
    return table([*header, "in source loss?"], rows) + f"<p class=note>{e(note)}</p>"


def similarity_extra(data: dict) -> str:
    forgetting = data.get("forgetting")
    if not isinstance(forgetting, list) or len(forgetting) != len(data.get("tasks", [])):
        return ""
    rows = [[e(t), num(f, signed=True)] for t, f in zip(data["tasks"], forgetting)]
    return table(["task", "forgetting R[j][j] − R[T][j]"], rows)


def comparison(runs: list[RunData]) -> str:
    ranks = {id(r): s for r, s in rank_entries(runs)}
    points = [run_point(r.summary) for r in runs]
    flags = frontier_flags(points)  # the same stars as in the scatter
    probes = any(r.summary.get("probes") for r in runs)
    rows = []
    for run, point, best in zip(runs, points, flags):
        s, agg = run.summary, run.summary.get("aggregate") or {}
        learned = sum(int(k) == len(s["seeds"]) for k in s["learned_seeds"])
        rank = ranks.get(id(run))
        rank_text = "n/a" if rank is None else f"{rank.median:g}"
        if rank is not None and rank.n_matrices == 0:
            rank_text += " (no weight changed)"
        if rank is not None and rank.random_median is not None:
            rank_text += f" (random {rank.random_median:g})"
        name = f'<a href="#run-{run.slug}">{e(run.label)}</a>'
        rows.append(
            [
                f"<span class=frontier>{name} ★</span>" if best else name,
                e(s["method"]),
                e(regularizer(s)),
                e(strategy(s)),
                e(f"{s['lr']:g}" if isinstance(s["lr"], (int, float)) else s["lr"]),
                str(len(s["seeds"])),
                f"{learned}/{len(s['tasks'])}",
                pm(agg, "initial_acc"),
                num(point.learning, signed=True),
                pm(agg, "acc"),
                pm(agg, "avg_forgetting"),
                pm(agg, "bwt"),
                pm(agg, "fwt"),
                e(rank_text),
                *([num(source_loss(s), signed=True)] if probes else []),
            ]
        )
    floorless = any(has_floorless(r.summary) for r in runs)
    above = "learning above majority" + (" (or base)" if floorless else "")
    header = ["run", "method", "regularizer", "strategy", "lr", "seeds", "tasks learned"]
    header += ["initial_acc"]
    header += [above, "acc", "avg_forgetting", "bwt", "fwt", "rank90"]
    header += ["source loss"] if probes else []
    note = (
        "<p class=note>★ = on the Pareto frontier of learning vs forgetting. tasks learned = "
        "tasks that beat the majority baseline in every seed.</p>"
    )
    if floorless:
        note += (
            "<p class=note>Tasks without a majority baseline (−NLL scores) count as learned "
            "when they beat the base model (paired t-test), and their learning is the gain "
            "over the base model's score.</p>"
        )
    if probes:
        note += (
            "<p class=note>source loss = −mean change (final − base) of the probes the base "
            "model could do: what training cost on tasks it never saw (lower is better; n/a: "
            "no probe). Plotted against the learning (target gain) below.</p>"
        )
    return table(header, rows) + note

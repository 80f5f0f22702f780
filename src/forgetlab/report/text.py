"""Plain-text views of results: one run, or many side by side.

A forgetting figure is never shown without the learning figure and the majority baseline
beside it: a method that learned nothing also forgets nothing.
"""

from __future__ import annotations

import numpy as np

LEARNED_TEST = "one-sided exact binomial test of R[j][j] against the majority baseline"


def _pm(agg: dict | None, key: str) -> str:
    item = (agg or {}).get(key) or {}
    mean = item.get("mean")
    if mean is None:
        return "n/a"
    text = (
        f"{mean:+.3f}"
        if key in ("avg_forgetting", "max_forgetting", "chaudhry_forgetting", "bwt", "fwt")
        else f"{mean:.3f}"
    )
    if item.get("n", 1) > 1:
        text += f" ± {item['std']:.3f} (95% CI ±{item['ci95']:.3f}, n={item['n']})"
    return text


def _extras(summary: dict, task_index: int, row: int) -> str:
    """Mean of the task's extra metrics (MCC, F1) at `row` of the matrix, over seeds."""
    values: dict[str, list[float]] = {}
    for m in summary.get("per_seed", {}).values():
        scores = m["scores"][row][task_index]
        for key, v in scores.items():
            if key not in ("accuracy", "n"):
                values.setdefault(key, []).append(v)
    return " ".join(f"{k}={np.mean(v):.3f}" for k, v in values.items())


def format_run(summary: dict) -> str:
    tasks = summary["tasks"]
    R = np.array(summary["accuracy_matrix"])
    T = len(tasks)
    seeds = summary["seeds"]
    width = max(8, *(len(t) + 2 for t in tasks))
    lines = [
        f"run {summary['name']!r}: method={summary['method']} model={summary['model']} "
        f"heads={summary['heads']} lr={summary['lr']} seeds={seeds}"
        + (f" regularizer={summary['regularizer']}" if summary.get("regularizer") else ""),
        "",
        f"Accuracy matrix R[stage, task] (mean over {len(seeds)} seed(s); row 0 = base model):",
        " " * 16 + "".join(f"{t:>{width}}" for t in tasks),
    ]
    labels = ["base"] + [f"after {t}" for t in tasks]
    for label, row in zip(labels, R):
        lines.append(f"{label:<16}" + "".join(f"{v:>{width}.3f}" for v in row))
    lines.append(
        f"{'majority':<16}" + "".join(f"{v:>{width}.3f}" for v in summary["majority_baseline"])
    )
    lines += [
        "",
        "Per task: what was learned, against the majority baseline, and what was kept",
        f"{'task':<10}{'n_eval':>7}{'majority':>10}{'base':>8}{'learned':>9}{'learned?':>10}"
        f"{'final':>8}{'forgot':>8}  extras (after own stage -> final)",
    ]
    for j, task in enumerate(tasks):
        learned_seeds = summary["learned_seeds"][j]
        forgot = R[j + 1, j] - R[T, j] if j < T - 1 else None
        extra_now, extra_end = _extras(summary, j, j + 1), _extras(summary, j, T)
        verdict = "yes" if learned_seeds == len(seeds) else "no" if learned_seeds == 0 else "some"
        flag = f"{verdict} {learned_seeds}/{len(seeds)}"
        forgot_text = "" if forgot is None else f"{forgot:+.3f}"
        lines.append(
            f"{task:<10}{summary['n_eval'][j]:>7}{summary['majority_baseline'][j]:>10.3f}"
            f"{R[0, j]:>8.3f}{R[j + 1, j]:>9.3f}{flag:>10}{R[T, j]:>8.3f}{forgot_text:>8}"
            + (f"  {extra_now} -> {extra_end}" if extra_now else "")
        )
    agg = summary.get("aggregate", {})
    lines += [
        f"  learned? = {LEARNED_TEST}, alpha 0.05, per seed",
        "",
        f"Learning:   initial_acc (mean R[j][j]) {_pm(agg, 'initial_acc')}",
        f"            acc (mean R[T][j])         {_pm(agg, 'acc')}",
        f"Forgetting: avg_forgetting             {_pm(agg, 'avg_forgetting')}",
        f"            max_forgetting             {_pm(agg, 'max_forgetting')}",
        f"            chaudhry_forgetting        {_pm(agg, 'chaudhry_forgetting')}",
        f"            bwt                        {_pm(agg, 'bwt')}",
        f"Transfer:   fwt                        {_pm(agg, 'fwt')}",
    ]
    return "\n".join(lines)


def _regularizer_text(summary: dict) -> str:
    reg = summary.get("regularizer") or {}
    if not reg or reg.get("name") in (None, "none"):
        return "-"
    name = "-".join([reg["name"], *([reg["curvature"]] if reg.get("curvature") else [])])
    lam = reg.get("lambda")
    return name if lam is None else f"{name} λ={lam:g}"


def format_comparison(summaries: list[dict]) -> str:
    if not summaries:
        return "no runs to compare"
    name_w = max(4, *(len(s["name"]) for s in summaries)) + 2
    reg_w = max(12, *(len(_regularizer_text(s)) for s in summaries)) + 2
    header = (
        f"{'run':<{name_w}}{'method':<10}{'regularizer':<{reg_w}}{'lr':>9}{'seeds':>6}"
        f"{'learned':>9}{'initial_acc':>13}{'acc':>8}{'avg_forget':>12}{'bwt':>9}{'fwt':>9}"
    )
    lines = [header, "-" * len(header)]
    for s in summaries:
        agg = s.get("aggregate", {})

        def mean(key: str, agg=agg) -> str:
            v = (agg.get(key) or {}).get("mean")
            return "n/a" if v is None else f"{v:.3f}"

        n_seeds = len(s["seeds"])
        learned = sum(1 for k in s["learned_seeds"] if k == n_seeds)
        learned_text = f"{learned}/{len(s['tasks'])}"
        lines.append(
            f"{s['name']:<{name_w}}{s['method']:<10}{_regularizer_text(s):<{reg_w}}"
            f"{s['lr']:>9.1e}{n_seeds:>6}{learned_text:>9}{mean('initial_acc'):>13}"
            f"{mean('acc'):>8}{mean('avg_forgetting'):>12}{mean('bwt'):>9}{mean('fwt'):>9}"
        )
    lines += [
        "",
        "learned = tasks whose R[j][j] beat the majority baseline in every seed "
        f"({LEARNED_TEST}); initial_acc = mean R[j][j]; acc = mean R[T][j];",
        "avg_forget = mean over j<T of R[j][j] - R[T][j]; bwt = -avg_forget; "
        "fwt = mean over j>=2 of R[j-1][j] - R[0][j]",
    ]
    return "\n".join(lines)

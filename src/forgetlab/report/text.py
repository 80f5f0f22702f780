"""Plain-text views of results: one run, or many side by side.

A forgetting figure is never shown without the learning figure and the majority baseline
beside it: a method that learned nothing also forgets nothing.
"""

from __future__ import annotations

import numpy as np

from forgetlab.report.format import num, regularizer, strategy, text_num, text_pm
from forgetlab.report.summary import target_gain

LEARNED_TEST = "one-sided exact binomial test of R[j][j] against the majority baseline"
PAIRED = "one-sided paired t-test of per-example held-out NLL, base vs after the task's stage"
NEG_NLL_NOTE = (
    "neg_nll = −(mean NLL per token, nats) of held-out text or responses: higher is better; "
    "a forgetting of +0.1 is the NLL rising by 0.1"
)


# Shown beside the score: classification's usual metrics, the LM kinds' readable ones.
EXTRA_SCORES = ("mcc", "f1", "nll", "perplexity", "acc_norm", "exact_match", "pass@1")


def _extras(summary: dict, task_index: int, row: int) -> str:
    """Mean of the task's extra metrics (MCC, F1) at `row` of the matrix, over seeds."""
    values: dict[str, list[float]] = {}
    for m in summary.get("per_seed", {}).values():
        scores = m["scores"][row][task_index]
        for key, v in scores.items():
            if key in EXTRA_SCORES and isinstance(v, int | float):
                values.setdefault(key, []).append(v)
    return " ".join(f"{k}={np.mean(v):.3f}" for k, v in values.items())


def format_run(summary: dict) -> str:
    tasks = summary["tasks"]
    R = np.array(summary["accuracy_matrix"])
    T = len(tasks)
    seeds = summary["seeds"]
    metrics = summary.get("metrics") or ["accuracy"] * T
    majority = summary["majority_baseline"]
    width = max(8, *(len(t) + 2 for t in tasks))
    all_accuracy = all(m == "accuracy" for m in metrics)
    title = "Accuracy matrix" if all_accuracy else "Score matrix"
    lines = [
        f"run {summary['name']!r}: method={summary['method']} model={summary['model']} "
        f"heads={summary['heads']} lr={summary['lr']} seeds={seeds}"
        + (f" regularizer={summary['regularizer']}" if summary.get("regularizer") else "")
        + (f" strategy={strategy(summary)}" if strategy(summary, none="") else ""),
        "",
        f"{title} R[stage, task] (mean over {len(seeds)} seed(s); row 0 = base model):",
        " " * 16 + "".join(f"{t:>{width}}" for t in tasks),
    ]
    labels = ["base"] + [f"after {t}" for t in tasks]
    for label, row in zip(labels, R):
        lines.append(f"{label:<16}" + "".join(f"{v:>{width}.3f}" for v in row))
    lines.append(f"{'majority':<16}" + "".join(f"{text_num(v):>{width}}" for v in majority))
    if not all_accuracy:
        lines.append(f"{'score':<16}" + "".join(f"{m:>{width}}" for m in metrics))
        lines.append(f"  {NEG_NLL_NOTE}")
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
            f"{task:<10}{summary['n_eval'][j]:>7}{text_num(majority[j]):>10}"
            f"{R[0, j]:>8.3f}{R[j + 1, j]:>9.3f}{flag:>10}{R[T, j]:>8.3f}{forgot_text:>8}"
            + (f"  {extra_now} -> {extra_end}" if extra_now else "")
        )
    agg = summary.get("aggregate", {})
    tests = [LEARNED_TEST] if all(m is not None for m in majority) else [LEARNED_TEST, PAIRED]
    lines += [
        f"  learned? = {'; or, without a majority baseline, '.join(tests)}; alpha 0.05, per seed",
        "",
        f"Learning:   initial_acc (mean R[j][j]) {text_pm(agg, 'initial_acc')}",
        f"            acc (mean R[T][j])         {text_pm(agg, 'acc')}",
        f"Forgetting: avg_forgetting             {text_pm(agg, 'avg_forgetting')}",
        f"            max_forgetting             {text_pm(agg, 'max_forgetting')}",
        f"            chaudhry_forgetting        {text_pm(agg, 'chaudhry_forgetting')}",
        f"            bwt                        {text_pm(agg, 'bwt')}",
        f"Transfer:   fwt                        {text_pm(agg, 'fwt')}",
    ]
    if (spent := format_time(summary)) is not None:
        lines.append(spent)
    if summary.get("probes"):
        lines += ["", *format_probes(summary)]
    if summary.get("guard"):
        lines += ["", *format_guard(summary)]
    return "\n".join(lines)


def format_time(summary: dict) -> str | None:
    """Training and evaluation seconds over every seed (each seed's metrics `timing`: the base
    row, the curve points and every stage's row count as evaluation), and evaluation's share
    of training time; None for runs recorded before timing was."""
    timings = [m["timing"] for m in summary.get("per_seed", {}).values() if "timing" in m]
    if not timings:
        return None
    train_s = sum(t["train_s"] for t in timings)
    eval_s = sum(t["eval_s"] for t in timings)
    share = 100 * eval_s / max(train_s, 1e-9)
    return (
        f"Time:       training {train_s:.1f} s, evaluation {eval_s:.1f} s "
        f"= {share:.0f}% of training time"
    )


def format_guard(summary: dict, name: str = "") -> list[str]:
    """The forgetting budget: one line per stage it ended (what was learned up to there is
    that stage's row of the matrix)."""
    g = summary["guard"]
    where = f"{name}: " if name else ""
    crossings = summary.get("guard_crossings") or []
    lines = [
        f"{where}guard {g['action']} at loss > {g['max_loss']:g} on {', '.join(g['watch'])} "
        f"(checked every {g['every']} steps, {g['reduce']}): "
        + (f"{len(crossings)} stage(s) ended early" if crossings else "never crossed")
    ]
    for c in crossings:
        kept = f", rolled back to step {c['kept_step']}" if c["kept_step"] != c["step"] else ""
        lines.append(
            f"  {where}seed {c['seed']} stage {c['stage']} ({c['task']}) stopped at step "
            f"{c['step']}/{c['total_steps']}: loss {c['loss']:.4f}{kept}"
        )
    return lines


def format_probes(summary: dict) -> list[str]:
    """The source side: what the model could do before, after every stage."""
    probes = summary["probes"]
    P = np.array(summary["probe_matrix"])
    width = max(12, *(len(p) + 2 for p in probes))
    lines = [
        "Probes (never trained; what the base model could do, after every stage):",
        f"{'probe':<{width}}{'metric':>12}{'chance':>8}{'base':>8}{'base>chance':>13}"
        f"{'final':>8}{'change':>9}",
    ]
    for k, name in enumerate(probes):
        above = summary["probe_base_above_chance"][k]
        above_text = "-" if above is None else "yes" if above else "NO"
        lines.append(
            f"{name:<{width}}{summary['probe_metrics'][k]:>12}"
            f"{text_num(summary['probe_baseline'][k]):>8}{P[0, k]:>8.3f}{above_text:>13}"
            f"{P[-1, k]:>8.3f}{P[-1, k] - P[0, k]:>+9.3f}"
        )
    lines.append(
        "  base>chance: one-sided exact binomial test of the base model's accuracy against "
        "chance; only a probe the base model passes can show forgetting (NO: read its change "
        "as noise)"
    )
    source = [p for p, keep in zip(probes, summary.get("probe_source") or []) if keep]
    lines.append(
        f"Source loss (−mean change over {', '.join(source) or 'no probe'}): "
        f"{text_pm(summary.get('aggregate'), 'source_loss')}"
    )
    if any(m == "neg_nll" for m in summary["probe_metrics"]):
        lines.append(f"  {NEG_NLL_NOTE}")
    return lines


def format_comparison(summaries: list[dict], run_dirs: list[str] | None = None) -> str:
    """One line per run; `run_dirs` (one per summary) are shown when two runs share a name,
    which is all that tells them apart (a config rerun into another --out, a store)."""
    if not summaries:
        return "no runs to compare"
    names = [s["name"] for s in summaries]
    where = run_dirs if run_dirs and len(set(names)) < len(names) else None
    name_w = max(4, *(len(s["name"]) for s in summaries)) + 2
    reg_w = max(12, *(len(regularizer(s, none="-")) for s in summaries)) + 2
    strat_w = max(9, *(len(strategy(s, none="-")) for s in summaries)) + 2
    probes = any(s.get("probes") for s in summaries)
    header = (
        f"{'run':<{name_w}}{'method':<10}{'regularizer':<{reg_w}}{'strategy':<{strat_w}}"
        f"{'lr':>9}{'seeds':>6}"
        f"{'learned':>9}{'initial_acc':>13}{'acc':>8}{'avg_forget':>12}{'bwt':>9}{'fwt':>9}"
        + (f"{'target_gain':>13}{'source_loss':>13}" if probes else "")
        + ("  run directory" if where else "")
    )
    lines = [header, "-" * len(header)]
    for i, s in enumerate(summaries):
        agg = s.get("aggregate", {})

        def mean(key: str, agg=agg) -> str:
            return num((agg.get(key) or {}).get("mean"))

        n_seeds = len(s["seeds"])
        learned = sum(1 for k in s["learned_seeds"] if k == n_seeds)
        learned_text = f"{learned}/{len(s['tasks'])}"
        reg, strat = regularizer(s, none="-"), strategy(s, none="-")
        lines.append(
            f"{s['name']:<{name_w}}{s['method']:<10}{reg:<{reg_w}}{strat:<{strat_w}}"
            f"{s['lr']:>9.1e}{n_seeds:>6}{learned_text:>9}{mean('initial_acc'):>13}"
            f"{mean('acc'):>8}{mean('avg_forgetting'):>12}{mean('bwt'):>9}{mean('fwt'):>9}"
            + (f"{target_gain(s):>+13.3f}{mean('source_loss'):>13}" if probes else "")
            + (f"  {where[i]}" if where else "")
        )
    lines += [
        "",
        "learned = tasks whose R[j][j] beat the majority baseline in every seed "
        f"({LEARNED_TEST}); initial_acc = mean R[j][j]; acc = mean R[T][j];",
        "avg_forget = mean over j<T of R[j][j] - R[T][j]; bwt = -avg_forget; "
        "fwt = mean over j>=2 of R[j-1][j] - R[0][j]",
    ]
    if probes:
        lines.append(
            "target_gain = mean over tasks of R[j][j] minus the majority baseline (or, for "
            "−NLL scores, minus the base model's score); source_loss = −mean change of the "
            "probes the base model passed (see each run's probe table)"
        )
    guarded = [line for s in summaries if s.get("guard") for line in format_guard(s, s["name"])]
    if guarded:
        lines += ["", *guarded]
    return "\n".join(lines)

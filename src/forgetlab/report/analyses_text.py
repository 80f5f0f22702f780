"""Plain-text summaries of analysis results (what `forgetlab analyze` / `hessian` print)."""

from __future__ import annotations


def _cka(r: dict) -> list[str]:
    width = max(10, *(len(s) + 2 for s in r["stages"]))
    lines = [
        f"CKA with the base model, per layer ({r['pooling']} pooling, {r['n_examples']} probe "
        f"rows from {', '.join(r['probe_tasks'])}; 1 = unchanged):",
        f"{'layer':<12}" + "".join(f"{s:>{width}}" for s in r["stages"]),
    ]
    for i, layer in enumerate(r["layers"]):
        lines.append(f"{layer:<12}" + "".join(f"{row[i]:>{width}.3f}" for row in r["cka"]))
    return lines


def _spectrum(r: dict) -> list[str]:
    pct = round(100 * r["energy"])
    lines = [f"Update rank: ΔW = W_stage − W_pretrained per linear layer ({pct}% of ‖ΔW‖²_F):"]
    for s in r["stages"]:
        shapes = {tuple(m["shape"]) for m in s["matrices"]}
        full = min(min(sh) for sh in shapes) if shapes else 0
        lines.append(
            f"  after {s['task']:<8} {len(s['matrices']):>3} updated matrices "
            f"({s['n_unchanged']} untouched): median rank{pct} {s['median_rank90']:.0f} "
            f"(random matrix of equal norm: {s['median_random_rank90']:.0f}; full rank ≥ {full})"
        )
    return lines


def _matrix(title: str, tasks: list[str], M: list[list[float]]) -> list[str]:
    width = max(8, *(len(t) + 2 for t in tasks))
    lines = [title, " " * 10 + "".join(f"{t:>{width}}" for t in tasks)]
    for t, row in zip(tasks, M):
        lines.append(f"{t:<10}" + "".join(f"{v:>{width}.3f}" for v in row))
    return lines


def _similarity(r: dict) -> list[str]:
    return [
        *_matrix(
            "Task similarity (pretrained model): feature-covariance alignment, last layer",
            r["tasks"],
            r["representation"],
        ),
        *_matrix(
            "Task similarity: cosine of loss gradients (linear-probe heads)",
            r["tasks"],
            r["gradient_cosine"],
        ),
    ]


def _hessian(r: dict) -> list[str]:
    lines = [
        f"Largest Hessian eigenvalue ({r['method']}, stage {r['stage']}, task {r['task']}, "
        f"{r['n_examples']} examples, group {r['group']}):"
    ]
    for x in r["results"]:
        low = "" if x.get("lambda_min") is None else f"  λ_min {x['lambda_min']:.4g}"
        state = "converged" if x["converged"] else "NOT converged"
        lines.append(
            f"  {x['name']:<48} λ_max {x['lambda_max']:.4g}{low}  "
            f"({x['n_params']} params, {x['iterations']} iters, {state})"
        )
    return lines


def _diversity(r: dict) -> list[str]:
    width = max(12, *(len(row["label"]) + 2 for row in r["rows"]))
    lines = [
        f"Generation diversity on {r['task']} ({r['n_prompts']} held-out prompts × {r['k']} "
        f"samples, temperature {r['temperature']:g}, ≤ {r['max_new_tokens']} new tokens):",
        f"{'':<{width}}{'distinct-1':>12}{'distinct-2':>12}{'self-BLEU':>11}{'answers':>9}",
    ]
    for row in r["rows"]:
        bleu = "—" if row["self_bleu"] is None else f"{row['self_bleu']:.1f}"
        lines.append(
            f"{row['label']:<{width}}{row['distinct_1']:>12.3f}{row['distinct_2']:>12.3f}"
            f"{bleu:>11}{row['distinct_answers']:>9.2f}"
        )
    lines.append("(self-BLEU 100: samples repeat each other; answers: distinct final numbers)")
    return lines


FORMATTERS = {
    "cka": _cka,
    "spectrum": _spectrum,
    "similarity": _similarity,
    "hessian": _hessian,
    "diversity": _diversity,
}


def format_analysis(result: dict) -> str:
    return "\n".join(FORMATTERS[result["analysis"]](result))

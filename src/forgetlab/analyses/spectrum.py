"""`forgetlab analyze --spectrum`, the rank of the weight update: ΔW = W_after_stage −
W_pretrained for every linear layer of the backbone (LoRA and its variants merged, so every
method is measured the same way), its singular values, and the rank that explains `energy`
(90%) of ‖ΔW‖²_F beside that of a random matrix of the same shape and norm. Full fine-tuning's
updates need 10-100× LoRA's rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forgetlab.analyses.maths.spectrum import matrix_spectrum
from forgetlab.analyses.runs import OpenRun
from forgetlab.analyses.spec import AnalysisFigure, CliOption, FigureContext
from forgetlab.analyses.weights import effective_linear_weights, weight_deltas
from forgetlab.errors import ForgetlabError
from forgetlab.plotting import NothingToDraw, literal, new_figure, png

NAME = "spectrum"
FLAG = "singular values / rank of ΔW"  # help of `forgetlab analyze --spectrum`
REPORT_ORDER = 3
DEFAULTS = {"energy": 0.9}
CLI = (CliOption("--energy", "energy", float, "share of ‖ΔW‖² (default 0.9)"),)


def check(run: OpenRun, seed: int, params: dict) -> None:
    if not 0 < params["energy"] <= 1:
        raise ForgetlabError(f"energy={params['energy']} must be in (0, 1]")
    # The final stage is required (it is what the report shows); earlier ones when kept.
    run.require_checkpoints(seed, [len(run.tasks)], "the update spectrum")


def compute(run: OpenRun, seed: int, params: dict) -> dict:
    base = effective_linear_weights(run.pretrained_backbone())
    stages = []
    for stage in range(1, len(run.tasks) + 1):
        if not run.checkpoint(seed, stage).is_dir():
            continue  # output.checkpoints=last keeps only the final stage
        tuned = effective_linear_weights(run.model_at(seed, stage).backbone)
        deltas = weight_deltas(base, tuned)
        matrices = [
            matrix_spectrum(name, d, energy=params["energy"], seed=seed)
            for name, d in deltas.items()
            if bool(d.abs().max() > 0)  # untouched layers (frozen, not targeted) have no rank
        ]
        ranks = [m["rank90"] for m in matrices]
        stages.append(
            {
                "stage": stage,
                "task": run.tasks[stage - 1].name,
                "n_unchanged": len(deltas) - len(matrices),
                "median_rank90": float(np.median(ranks)) if ranks else 0.0,
                "median_random_rank90": (
                    float(np.median([m["random_rank90"] for m in matrices])) if matrices else 0.0
                ),
                "matrices": matrices,
            }
        )
    return {"seed": seed, "energy": params["energy"], "stages": stages}


def format_text(r: dict) -> list[str]:
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


@dataclass(frozen=True)
class RankSummary:
    """rank90 of the weight updates ΔW at a run's final stage: median and quartiles over the
    changed matrices (all 0 when none changed)."""

    stage: int
    task: str
    n_matrices: int
    median: float
    q25: float
    q75: float
    random_median: float | None


def rank90_summary(spectrum: dict) -> RankSummary:
    if not spectrum["stages"]:
        raise NothingToDraw("no stage was analysed")
    final = spectrum["stages"][-1]
    ranks = np.asarray([m["rank90"] for m in final["matrices"]], float)
    if ranks.size == 0:  # nothing changed (frozen backbone): rank 0 is the true answer
        return RankSummary(final["stage"], str(final["task"]), 0, 0.0, 0.0, 0.0, None)
    random = [m["random_rank90"] for m in final["matrices"] if m.get("random_rank90") is not None]
    q25, median, q75 = (float(q) for q in np.percentile(ranks, [25, 50, 75]))
    rand = float(np.median(random)) if random else None
    return RankSummary(final["stage"], str(final["task"]), ranks.size, median, q25, q75, rand)


def figure(data: dict, about: FigureContext) -> AnalysisFigure:
    return AnalysisFigure(
        f"Singular-value spectra of the weight updates of run {about.run_name}",
        "Singular values of each weight update ΔW = W(after the final stage) − W(base model), "
        f"normalised by the largest (one faint line per matrix, log scale; seed "
        f"{data.get('seed')}). A fast drop = a low-rank update.",
        draw(data),
    )


def draw(spectrum: dict) -> bytes:
    """Normalised singular values s_i/s_0 of every update ΔW at the final stage (log y)."""
    summary = rank90_summary(spectrum)
    final = spectrum["stages"][-1]
    if summary.n_matrices == 0:
        raise NothingToDraw(f"no weight matrix changed by stage {final['stage']}")
    fig = new_figure(figsize=(7, 4.3), layout="constrained")
    ax = fig.subplots()
    for m in final["matrices"]:
        s = np.asarray(m["singular_values"], float)
        s = s[s > 0]  # zeros have no place on a log axis
        if s.size:
            ax.plot(np.arange(1, s.size + 1), s / s[0], color="C0", alpha=0.25, lw=0.8)
    energy = float(spectrum.get("energy", 0.9))
    label = f"median rank{energy:.0%} = {summary.median:g}"
    ax.axvline(summary.median, color="C1", lw=1.5, label=label)
    if summary.random_median is not None:
        label = f"random-matrix reference = {summary.random_median:g}"
        ax.axvline(summary.random_median, color="0.4", ls="--", lw=1.2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("singular value index i")
    ax.set_ylabel("s_i / s_0 of ΔW")
    unchanged = final.get("n_unchanged")
    title = (
        f"Spectra of ΔW after stage {final['stage']} ({final['task']}), "
        f"{summary.n_matrices} matrices" + (f", {unchanged} unchanged" if unchanged else "")
    )
    ax.set_title(literal(title), fontsize=10)
    ax.legend(fontsize=8)
    return png(fig)

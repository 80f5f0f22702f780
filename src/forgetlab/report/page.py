"""One self-contained HTML report over one or more run directories: the page and its writing.

The page opens from disk with no network: every figure is an inline `data:image/png;base64`
image, the CSS is inline, there is no script at all, and a Content-Security-Policy meta tag
forbids anything else. The same figures are written as PNG files to `<stem>_figures/` beside
the page. Every user-provided string (run, task and module names, the config) is escaped.

With two or more runs, an Answers section follows the overview (see
`forgetlab.report.answers_section`); where the runs can be answered together, its
learning–forgetting frontier figure replaces the overview's learning-vs-forgetting scatter.

All inputs are read and checked, and all figures drawn, before anything is written: a bad run
directory raises ForgetlabError and leaves the output untouched. Analyses (analyses/*.json)
are optional; a missing one is listed as absent and a malformed one becomes a note.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from forgetlab.atomic import atomic_dir, atomic_write_bytes, atomic_write_text, now
from forgetlab.errors import ForgetlabError
from forgetlab.report import tables
from forgetlab.report.answers_section import answers_view
from forgetlab.report.data import ANALYSIS_ERRORS, PAGE_ORDER, RunData, load_runs
from forgetlab.report.figures import (
    Plot,
    accuracy_plot,
    analysis_plots,
    figure_html,
    overview_plots,
    run_plot,
)
from forgetlab.report.format import e as _e
from forgetlab.report.format import regularizer, strategy
from forgetlab.report.summary import is_lm
from forgetlab.report.text import format_guard

# Shown under its analysis's figure: an HTML table of the result (analysis name -> builder).
ANALYSIS_TABLES: dict[str, Callable[[dict], str]] = {"similarity": tables.similarity_extra}


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0;color:#1d2330;background:#f5f6f8;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:1.2rem 1.5rem 3rem}
h1{margin:.4rem 0 .2rem;font-size:1.6rem}h2{margin:.2rem 0 .6rem;font-size:1.3rem}
h3{margin:1.2rem 0 .4rem;font-size:1.05rem}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:1rem 1.3rem;
margin:1.2rem 0}
figure{margin:.8rem 0}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:#4a5260;max-width:62rem}
table{border-collapse:collapse;font-size:.86rem;margin:.4rem 0}
th,td{padding:.22rem .55rem;border-bottom:1px solid #e3e6ea;text-align:right;
vertical-align:top}
td{white-space:nowrap}th:first-child,td:first-child{text-align:left;white-space:normal}
th{background:#f0f2f5}
.scroll{overflow-x:auto}.pair{display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-start}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;font-size:.9rem}
.meta dt{color:#5b6472}.meta dd{margin:0}
pre{background:#f3f4f6;padding:.75rem;overflow:auto;font-size:.8rem;max-height:30rem}
.yes{color:#17663a;font-weight:600}.no{color:#a12622;font-weight:600}
.some{color:#8a5a00;font-weight:600}.note{color:#5b6472;font-size:.85rem}
.warn{color:#8a5a00}.frontier{font-weight:600}nav a{margin-right:1rem}
dl.defs dt{font-weight:600;margin-top:.5rem}dl.defs dd{margin-left:1.2rem}
"""

# default-src 'none': no script, font, frame or fetch can run or load, even if some string
# were to slip through unescaped; images only as data: URIs, styles only inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

DEFINITIONS = (
    (
        "R[i][j]",
        "accuracy on task j after training stage i, mean over seeds; row 0 is the base "
        "model before any training, row i the model after training on task i (T tasks).",
    ),
    ("ACC", "mean of the last row: (1/T) Σ_j R[T][j]."),
    ("initial_acc", "mean of the diagonal: (1/T) Σ_j R[j][j], each task right after learning it."),
    (
        "learning above majority",
        "initial_acc minus the mean majority-class baseline of the "
        "tasks: how far above always predicting the most common label the run got.",
    ),
    (
        "forgetting_j",
        "R[j][j] − R[T][j]; avg_forgetting is its mean over the first T−1 tasks, "
        "max_forgetting its maximum. Undefined for a single task.",
    ),
    (
        "chaudhry_forgetting",
        "mean over j < T of max_{l=1..T−1} R[l][j] − R[T][j] (Chaudhry et al., 2018).",
    ),
    ("BWT", "backward transfer, mean over j < T of R[T][j] − R[j][j] (= −avg_forgetting)."),
    (
        "FWT",
        "forward transfer, mean over j ≥ 2 of R[j−1][j] − R[0][j]: accuracy on a task "
        "just before training on it, relative to the base model.",
    ),
    (
        "learned",
        "one-sided exact binomial test of R[j][j] (k correct of n) against the task's "
        "majority baseline, α = 0.05, per seed; 'learned in k/n seeds' counts the seeds where "
        "it passed. Forgetting of a task that was never learned means little.",
    ),
    (
        "± values",
        "mean ± the half-width of the 95% Student-t confidence interval over seeds "
        "(shown when there are several seeds).",
    ),
    (
        "rank90",
        "number of singular values that hold 90% of the energy Σ s_i² of a weight update "
        "ΔW = W(after the final stage) − W(base model), compared with a random matrix of the "
        "same shape and norm (a full-rank update).",
    ),
)


LM_DEFINITIONS = (
    (
        "scores",
        "language-model tasks are scored by accuracy (classification, multiple choice), "
        "neg_nll = −(mean NLL per token, nats) of held-out text or responses, exact_match or "
        "pass@1; every score is higher-is-better. R holds these scores; 'accuracy' above reads "
        "'score' for them. A forgetting of +0.1 on a neg_nll task is its NLL rising by 0.1.",
    ),
    (
        "floor",
        "what a task's learning is measured from: its majority baseline, or, for a score with "
        "no chance level (neg_nll), the base model's score R[0][j]; such a task counts as "
        "learned when a one-sided paired t-test of the per-example loss beats the base model.",
    ),
    (
        "probes",
        "tasks never trained on, scored after every stage: what the model could do before "
        "(the source side). Only a probe the base model passes above chance (one-sided exact "
        "binomial test) can show forgetting; neg_nll probes always can, exact-match and "
        "pass@1 probes when the base model scores above 0.",
    ),
    (
        "source loss / target gain",
        "source loss = −(mean final − base change of the probes the base model could do); "
        "target gain = mean over tasks of R[j][j] − floor_j. 'Learns less, forgets less': "
        "methods trade one for the other.",
    ),
)


def _meta(run: RunData) -> str:
    s = run.summary
    items = [
        ("method", s["method"]),
        ("regularizer", regularizer(s)),
        ("strategy", strategy(s)),
        ("model", s["model"]),
        ("heads", s.get("heads", "n/a")),
        ("learning rate", s["lr"]),
        ("seeds", ", ".join(str(x) for x in s["seeds"])),
        ("tasks (in order)", " → ".join(str(t) for t in s["tasks"])),
        ("run directory", run.path),
        ("forgetlab version", s["version"]),
    ]
    if s.get("guard"):  # the forgetting budget, and the stages it ended
        items.append(("forgetting guard", "; ".join(line.strip() for line in format_guard(s))))
    return (
        "<dl class=meta>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"
    )


def _analyses_html(run: RunData, plots: list[tuple[str, Plot]], notes: list[str]) -> str:
    parts = ["<h3>Analyses</h3>"]
    for stem, plot in plots:
        parts.append(figure_html(plot))
        extra = ANALYSIS_TABLES.get(run.analyses[stem]["analysis"])
        if extra is not None:
            parts.append(extra(run.analyses[stem]))
    present = {data.get("analysis") for data in run.analyses.values()}
    # e.g. diversity samples a language model's outputs: absent from an encoder run by design
    lm = is_lm(run.summary)
    wanted = [m.NAME for m in PAGE_ORDER if lm or not getattr(m, "LM_ONLY", False)]
    absent = [a for a in wanted if a not in present]
    if absent:
        parts.append(f"<p class=note>Not present in analyses/: {_e(', '.join(absent))}.</p>")
    parts += [f"<p class=note>{_e(n)}</p>" for n in run.notes + notes]
    return "".join(parts)


def _guarded(run: RunData, what: str, build: Callable[[], str]) -> str:
    """A block drawn from optional metrics.json keys: a malformed one becomes a note."""
    try:
        return build()
    except ANALYSIS_ERRORS as e:
        return f"<p class=note>{_e(what)} could not be shown ({_e(type(e).__name__)}: {_e(e)})</p>"


def _lm_blocks(run: RunData) -> tuple[str, list[Plot]]:
    """Curves during training and the probes (the source side), where the run has them."""
    parts, plots = [], []

    def curves() -> str:
        plot = run_plot(run, "curves")
        plots.extend([plot] if plot else [])
        return (
            "<h3>Learning and forgetting during training</h3>" + figure_html(plot) if plot else ""
        )

    def probes() -> str:
        if not run.summary.get("probes"):
            return ""
        table, plot = tables.probes_table(run.summary), run_plot(run, "probes")
        plots.extend([plot] if plot else [])
        return "<h3>Source side: probes</h3>" + table + (figure_html(plot) if plot else "")

    parts.append(_guarded(run, "The curves during training (curves)", curves))
    parts.append(_guarded(run, "The probes (probe_matrix)", probes))
    return "".join(parts), plots


def _run_section(run: RunData) -> tuple[str, list[Plot]]:
    s = run.summary
    accuracy, loss = accuracy_plot(run), run_plot(run, "loss")
    lm_html, lm_plots = _lm_blocks(run)
    analysis, notes = analysis_plots(run)
    config = (
        f"<pre>{_e(run.config_text)}</pre>"
        if run.config_text is not None
        else "<p class=note>config.yaml not found in the run directory.</p>"
    )
    body = [
        f'<section id="run-{run.slug}"><h2>Run: {_e(run.label)}</h2>',
        _meta(run),
        "<h3>Learning and forgetting</h3>",
        f"<div class=pair><div>{figure_html(accuracy)}</div>"
        f"<div>{tables.metrics_table(s)}</div></div>",
        tables.tasks_table(s),
        *([lm_html] if lm_html else []),
        "<h3>Training loss</h3>",
        figure_html(loss) if loss else "<p class=note>No loss curves in metrics.json.</p>",
        _analyses_html(run, analysis, notes),
        "<h3>Configuration (config.yaml)</h3>",
        config,
        "</section>",
    ]
    plots = [accuracy, *lm_plots, *([loss] if loss else []), *(p for _, p in analysis)]
    return "\n".join(body), plots


def render_page(
    runs: list[RunData], title: str | None = None, metrics: dict[str, str | None] | None = None
) -> tuple[str, list[Plot]]:
    """The page and every plot in it (in page order); pure, writes nothing."""
    title = title or "forgetlab report: " + ", ".join(str(r.summary["name"]) for r in runs)
    found = answers_view([r.path for r in runs], **(metrics or {}))
    # the answers' frontier figure replaces the overview's learning-vs-forgetting scatter
    frontier = found is not None and found.frontier_drawn
    overview = overview_plots(runs, scatter=not frontier)
    sections = [_run_section(r) for r in runs]
    links = [("overview", "Across runs")] + ([("answers", "Answers")] if found else [])
    links += [(f"run-{r.slug}", r.label) for r in runs]
    nav = "".join(f'<a href="#{a}">{_e(text)}</a>' for a, text in links)
    lm = any(is_lm(r.summary) for r in runs)
    defined = DEFINITIONS + (LM_DEFINITIONS if lm else ())
    defs = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in defined)
    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f"<p class=note>Generated {_e(now())} from {len(runs)} run(s).</p>",
        f'<nav>{nav}<a href="#definitions">Definitions</a></nav>',
        '<section id="overview"><h2>Across runs</h2>',
        tables.comparison(runs),
        *(
            ["<p class=note>The learning–forgetting frontier is drawn under Answers.</p>"]
            if frontier
            else []
        ),
        *(figure_html(p) for p in overview),
        "</section>",
        *([found.html] if found else []),
        *(html_text for html_text, _ in sections),
        '<section id="definitions"><h2>Metric definitions</h2>',
        f"<dl class=defs>{defs}</dl></section>",
        "</main></body></html>",
    ]
    answer_plots = found.plots if found else []
    plots = overview + answer_plots + [p for _, section_plots in sections for p in section_plots]
    return "\n".join(page) + "\n", plots


def report_figures(run_dirs: Sequence[str | Path]) -> dict[str, bytes]:
    """Every figure of the report as {figure id: PNG bytes}; nothing is written."""
    _, plots = render_page(load_runs(run_dirs))
    return {p.fig_id: p.png for p in plots}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def figures_dir(out: Path) -> Path:
    """Where the PNG copies of the figures go: `<out stem>_figures/` beside the page."""
    return out.parent / f"{out.stem}_figures"


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    title: str | None = None,
    metrics: dict[str, str | None] | None = None,
) -> Path:
    """Write the report for `run_dirs` to `out` (and its figures to figures_dir(out));
    `metrics` ({learning, forgetting}) picks the Answers section's metrics."""
    out = Path(out)
    if out.is_dir():
        raise ForgetlabError(f"report output {out} is a directory; give a file name (.html)")
    page, plots = render_page(load_runs(run_dirs), title, metrics)
    # The folder is replaced as a whole: no stale figures from an earlier report remain.
    with atomic_dir(figures_dir(out)) as tmp:
        for plot in plots:
            atomic_write_bytes(tmp / plot.file_name, plot.png)
    atomic_write_text(out, page)
    return out

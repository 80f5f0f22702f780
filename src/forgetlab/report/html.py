"""One self-contained HTML report over one or more run directories.

The page opens from disk with no network: every figure is an inline `data:image/png;base64`
image, the CSS is inline, there is no script at all, and a Content-Security-Policy meta tag
forbids anything else. The same figures are written as PNG files to `<stem>_figures/` beside
the page. Every user-provided string (run, task and module names, the config) is escaped.

All inputs are read and checked, and all figures drawn, before anything is written: a bad run
directory raises ForgetlabError and leaves the output untouched. Analyses (analyses/*.json)
are optional; a missing one is listed as absent and a malformed one becomes a note.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from forgetlab.atomic import atomic_dir, atomic_write_bytes, atomic_write_text, now, read_json
from forgetlab.errors import ForgetlabError
from forgetlab.report import figures, tables
from forgetlab.report.tables import e as _e

REQUIRED_KEYS = (
    "name",
    "method",
    "model",
    "lr",
    "tasks",
    "seeds",
    "majority_baseline",
    "accuracy_matrix",
    "learned_seeds",
    "aggregate",
)
ANALYSES = ("cka", "similarity", "spectrum", "hessian", "diversity")
# Errors a malformed analysis file raises while being drawn; they become a note on the page.
_ANALYSIS_ERRORS = tables.ANALYSIS_ERRORS


# --------------------------------------------------------------------------------------------
# Reading and checking run directories
# --------------------------------------------------------------------------------------------


@dataclass
class RunData:
    path: Path
    summary: dict
    config_text: str | None
    analyses: dict[str, dict]  # file stem (e.g. "hessian-stage3-encoder") -> contents
    notes: list[str] = field(default_factory=list)
    slug: str = "run"
    label: str = "run"  # the run's name, made unique among the report's runs


def _check_summary(metrics: Path, summary: object) -> dict:
    stale = f"{metrics} was written by another version of forgetlab or is incomplete"
    if not isinstance(summary, dict) or "version" not in summary:
        raise ForgetlabError(f"{stale}: it has no 'version' key")
    missing = [k for k in REQUIRED_KEYS if k not in summary]
    if missing:
        raise ForgetlabError(f"{stale}: missing {', '.join(missing)}")
    T = len(summary["tasks"]) if isinstance(summary["tasks"], list) else 0
    try:
        R = np.asarray(summary["accuracy_matrix"], float)
        sizes = (len(summary["majority_baseline"]), len(summary["learned_seeds"]))
    except (TypeError, ValueError) as e:
        raise ForgetlabError(f"{stale}: {e}") from e
    if T == 0 or R.shape != (T + 1, T) or sizes != (T, T):
        raise ForgetlabError(
            f"{stale}: accuracy_matrix is {R.shape}, majority_baseline/learned_seeds have "
            f"{sizes} entries, for {T} tasks (expected ({T + 1}, {T}) and {T} each)"
        )
    return summary


def _load_analyses(run_dir: Path) -> tuple[dict[str, dict], list[str]]:
    analyses: dict[str, dict] = {}
    notes: list[str] = []
    for path in sorted((run_dir / "analyses").glob("*.json")):
        try:
            data = read_json(path)
        except ForgetlabError as e:
            notes.append(f"analyses/{path.name} skipped: {e}")
            continue
        kind = data.get("analysis") if isinstance(data, dict) else None
        # One file per analysis (the figure ids depend on it), any number of hessian-*.json.
        expected = path.stem.startswith("hessian") if kind == "hessian" else path.stem == kind
        if kind not in ANALYSES or not expected:
            notes.append(
                f"analyses/{path.name} skipped: not one of {', '.join(ANALYSES)} "
                "(cka.json, similarity.json, spectrum.json, hessian-*.json, diversity.json)"
            )
            continue
        analyses[path.stem] = data
    # Page order: cka, similarity, spectrum, then the hessian files by name.
    order = sorted(analyses, key=lambda stem: (ANALYSES.index(analyses[stem]["analysis"]), stem))
    return {stem: analyses[stem] for stem in order}, notes


def load_run(run_dir: str | Path) -> RunData:
    """Read and check one run directory; ForgetlabError names the path and what is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        why = "it is a file" if run_dir.exists() else "no such directory"
        raise ForgetlabError(f"{run_dir} is not a run directory: {why}")
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise ForgetlabError(f"{run_dir} is not a run directory: metrics.json is missing")
    summary = _check_summary(metrics, read_json(metrics))
    config = run_dir / "config.yaml"
    try:  # the config is shown, not parsed: odd bytes are replaced, never fatal
        config_text = config.read_text(encoding="utf-8", errors="replace")
    except OSError:
        config_text = None
    analyses, notes = _load_analyses(run_dir)
    return RunData(run_dir, summary, config_text, analyses, notes)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


def _label(runs: list[RunData]) -> None:
    """A config run with method overrides keeps the config's name (two "quickstart" runs):
    add the method, then the run directory, until every label is unique."""
    for run in runs:
        run.label = str(run.summary["name"])
    for extra in (lambda r: r.summary.get("method"), lambda r: r.path.name):
        names = [r.label for r in runs]
        for run in runs:
            if names.count(run.label) > 1:
                run.label = f"{run.label} ({extra(run)})"


def load_runs(run_dirs: Sequence[str | Path]) -> list[RunData]:
    """Load every run (all checked before any work); give each a unique id-safe slug."""
    if not run_dirs:
        raise ForgetlabError("a report needs at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    _label(runs)
    seen: set[str] = set()
    for run in runs:
        base = slug = _slug(run.label)
        k = 2
        while slug in seen:  # two runs with one name still get distinct ids and files
            slug, k = f"{base}-{k}", k + 1
        seen.add(slug)
        run.slug = slug
    return runs


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plot:
    fig_id: str
    alt: str
    caption: str
    png: bytes

    @property
    def file_name(self) -> str:
        return self.fig_id.removeprefix("fig-") + ".png"


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR is always the first chunk)."""
    return struct.unpack(">II", png[16:24])


def is_lm(summary: dict) -> bool:
    """A language-model run: probes, or scores other than accuracy (−NLL, exact match)."""
    return bool(summary.get("probes")) or not figures.all_accuracy(summary)


def _accuracy_plot(run: RunData) -> Plot:
    name = run.summary["name"]
    if figures.all_accuracy(run.summary):
        return Plot(
            f"fig-{run.slug}-accuracy",
            f"Accuracy matrix of run {name}: rows base model and after each stage, columns "
            "tasks, with the majority baseline below",
            "Accuracy on each task (columns) after each stage (rows; row 0 = the base model), "
            "mean over seeds (± std when there are several). Colour = accuracy minus the "
            "task's majority baseline (blue: above chance). Outlined cells are R[j][j], what "
            "each task reached right after training on it.",
            figures.accuracy_figure(run.summary),
        )
    metrics = ", ".join(f"{t}: {m}" for t, m in zip(run.summary["tasks"], run.summary["metrics"]))
    return Plot(
        f"fig-{run.slug}-accuracy",
        f"Score matrix of run {name}: rows base model and after each stage, columns tasks, "
        "with the majority baseline (where there is one) below",
        f"Score on each task ({metrics}; higher is better) after each stage (rows; row 0 = the "
        "base model), mean over seeds (± std when there are several). Colour = score minus "
        "the task's majority baseline, or minus the base model's score for a task without one "
        "(blue: better). Outlined cells are R[j][j], each task right after training on it.",
        figures.accuracy_figure(run.summary),
    )


def _optional_plot(
    run: RunData, suffix: str, draw: Callable[[dict], bytes | None], alt: str, caption: str
) -> Plot | None:
    """A per-run figure that only some runs have (`draw` returns None without its data)."""
    png = draw(run.summary)
    return None if png is None else Plot(f"fig-{run.slug}-{suffix}", alt, caption, png)


def _loss_plot(run: RunData) -> Plot | None:
    return _optional_plot(
        run,
        "loss",
        figures.loss_figure,
        f"Training loss curves of run {run.summary['name']}, one panel per stage",
        "Training loss per stage, one line per seed; the regularizer penalty (dashed, right "
        "axis) where it is non-zero.",
    )


def _curves_plot(run: RunData) -> Plot | None:
    return _optional_plot(
        run,
        "curves",
        figures.curves_figure,
        f"Scores of run {run.summary['name']} during training, relative to the base model, "
        "over the cumulative training step",
        "Every task (solid) and probe (dashed) scored during training (eval.every) and at "
        "each stage's end, minus its base-model score: learning is a line rising while its "
        "task trains, forgetting one falling afterwards. Grey lines: stage ends. For −NLL "
        "scores the change is −ΔNLL (up = the NLL fell).",
    )


def _probes_plot(run: RunData) -> Plot | None:
    return _optional_plot(
        run,
        "probes",
        figures.probes_figure,
        f"Change of each probe's score from the base model after every stage of run "
        f"{run.summary['name']}",
        "Each probe (never trained) after every stage, minus its base-model score (mean over "
        "seeds): below 0 = lost. Filled markers: probes the base model could do (above chance, "
        "or −NLL); hollow and dotted: at chance or scoring 0, their change is noise. For −NLL "
        "probes the change is −ΔNLL: up = the NLL fell, down = it rose.",
    )


def _cka_plot(run: RunData, stem: str, data: dict) -> Plot:
    return Plot(
        f"fig-{run.slug}-cka",
        f"CKA between the base model and run {run.summary['name']} after each stage, per layer",
        f"Linear CKA of each layer's representations to the base model ({data.get('pooling')} "
        f"pooling, {data.get('n_examples')} examples, seed {data.get('seed')}). Left: 1 = "
        "unchanged, fixed 0–1 scale. Right: 1 − CKA per layer, one line per stage.",
        figures.cka_figure(data),
    )


def _similarity_plot(run: RunData, stem: str, data: dict) -> Plot:
    return Plot(
        f"fig-{run.slug}-similarity",
        f"Task similarity matrices of run {run.summary['name']}",
        f"Task × task similarity (seed {data.get('seed')}, {data.get('layer', 'last')} layer): "
        "of the representations (left) and cosine of the task gradients (middle; negative = "
        "conflicting updates)"
        + (
            "; right: how each stage changed each task's "
            + ("accuracy" if figures.all_accuracy(run.summary) else "score")
            + ", R[i][j] − R[i−1][j]."
            if data.get("interference") is not None
            else "."
        ),
        figures.similarity_figure(data, figures.all_accuracy(run.summary)),
    )


def _spectrum_plot(run: RunData, stem: str, data: dict) -> Plot:
    return Plot(
        f"fig-{run.slug}-spectrum",
        f"Singular-value spectra of the weight updates of run {run.summary['name']}",
        "Singular values of each weight update ΔW = W(after the final stage) − W(base model), "
        f"normalised by the largest (one faint line per matrix, log scale; seed "
        f"{data.get('seed')}). A fast drop = a low-rank update.",
        figures.spectrum_figure(data),
    )


def _hessian_plot(run: RunData, stem: str, data: dict) -> Plot:
    return Plot(
        f"fig-{run.slug}-{_slug(stem)}",
        f"Largest Hessian eigenvalue per module of run {run.summary['name']} ({stem})",
        f"Largest Hessian eigenvalue λ_max per module (hatched: not converged; tick: λ_min) from "
        f"{data.get('method')} iterations, and their convergence (analyses/{stem}.json).",
        figures.hessian_figure(data),
    )


def _diversity_plot(run: RunData, stem: str, data: dict) -> Plot:
    return Plot(
        f"fig-{run.slug}-diversity",
        f"Output diversity of run {run.summary['name']}: the base model and after training",
        f"Sampled outputs on {data.get('task')} (seed {data.get('seed')}): distinct-1 and "
        "distinct-2 (unique unigrams and bigrams / all), self-BLEU / 100 (higher = samples "
        "more alike) and the mean number of distinct final answers among the k samples of a "
        "prompt / k; for the base model and each analysed stage (legend: mean words per "
        "sample, share of empty samples). Fine-tuning often narrows what a model says: lower "
        "distinct, higher self-BLEU.",
        figures.diversity_figure(data),
    )


_ANALYSIS_PLOTS: dict[str, Callable[[RunData, str, dict], Plot]] = {
    "cka": _cka_plot,
    "similarity": _similarity_plot,
    "spectrum": _spectrum_plot,
    "hessian": _hessian_plot,
    "diversity": _diversity_plot,
}


def analysis_plots(run: RunData) -> tuple[list[tuple[str, Plot]], list[str]]:
    """(analysis file stem, plot) for every drawable analysis, and notes for the others."""
    plots, notes = [], []
    for stem, data in run.analyses.items():
        try:
            plots.append((stem, _ANALYSIS_PLOTS[data["analysis"]](run, stem, data)))
        except figures.NothingToDraw as e:
            notes.append(f"analyses/{stem}.json: nothing to draw, {e}.")
        except _ANALYSIS_ERRORS as e:
            notes.append(f"analyses/{stem}.json could not be drawn ({type(e).__name__}: {e})")
    return plots, notes


FLOORLESS = " For a task without a majority baseline (−NLL), the floor is the base model's score."


def _source_target_plot(runs: list[RunData]) -> Plot | None:
    """Across runs with probes: what the run learned (target) against what it lost (source)."""
    if not any(r.summary.get("probes") for r in runs):
        return None
    points = []
    for run in runs:
        s = run.summary
        gain = figures.source_target_point(s)[0]
        points.append((f"{s['name']} ({s['method']})", gain, tables.source_loss(s)))
    return Plot(
        "fig-source-target",
        "Scatter of target gain against source loss, one point per run, with the Pareto "
        "frontier: learns less, forgets less",
        "Each run: source loss (x) = −mean change, final − base, of the probes the base model "
        "could do (above chance, −NLL, or a generation probe it scores above 0); target gain "
        "(y) = mean over the trained tasks of R[j][j] − floor_j (majority baseline, or the "
        "base model's score). Stars and the dashed line: the Pareto frontier (no other run "
        "gains more while losing less). Changes of −NLL and of accuracy share the axis. Runs "
        "without such probes are named under the plot.",
        figures.source_target_figure(points),
    )


def overview_plots(runs: list[RunData]) -> list[Plot]:
    points = [figures.run_point(r.summary) for r in runs]
    floorless = any(tables.has_floorless(r.summary) for r in runs)
    plots = [
        Plot(
            "fig-learning-vs-forgetting",
            "Scatter of learning above the majority baseline against forgetting, one point per "
            "run, with the Pareto frontier",
            "Each run: forgetting (avg_forgetting) against learning (initial_acc minus the mean "
            "majority baseline). Stars and the dashed line: the Pareto frontier (no other run "
            "learns more while forgetting less). Error bars: 95% CI over seeds."
            + (FLOORLESS if floorless else ""),
            figures.scatter_figure(points, floorless=floorless),
        )
    ]
    source = _source_target_plot(runs)
    plots += [source] if source else []
    entries = tables.rank_entries(runs)
    if entries:
        labels = [(f"{r.summary['name']} ({r.summary['method']})", s) for r, s in entries]
        plots.append(
            Plot(
                "fig-rank90",
                "Bar chart of the median rank90 of the weight updates per run, with the "
                "random-matrix reference",
                "rank90 = number of singular values holding 90% of the energy (Σ s²) of a weight "
                "update ΔW = W(final) − W(base), median over the changed matrices (error bars: "
                "quartiles; 0 = nothing changed), beside the same for a random matrix of the "
                "same shape and norm.",
                figures.rank90_figure(labels),
            )
        )
    return plots


def report_figures(run_dirs: Sequence[str | Path]) -> dict[str, bytes]:
    """Every figure of the report as {figure id: PNG bytes}; nothing is written."""
    _, plots = render_page(load_runs(run_dirs))
    return {p.fig_id: p.png for p in plots}


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
.frontier{font-weight:600}nav a{margin-right:1rem}dl.defs dt{font-weight:600;margin-top:.5rem}
dl.defs dd{margin-left:1.2rem}
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


def _img(plot: Plot) -> str:
    width, height = png_size(plot.png)
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure><img id="{plot.fig_id}" alt="{_e(plot.alt)}" width="{width}" '
        f'height="{height}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(plot.caption)}</figcaption></figure>"
    )


def _meta(run: RunData) -> str:
    s = run.summary
    items = [
        ("method", s["method"]),
        ("regularizer", tables.regularizer(s)),
        ("model", s["model"]),
        ("heads", s.get("heads", "n/a")),
        ("learning rate", s["lr"]),
        ("seeds", ", ".join(str(x) for x in s["seeds"])),
        ("tasks (in order)", " → ".join(str(t) for t in s["tasks"])),
        ("run directory", run.path),
        ("forgetlab version", s["version"]),
    ]
    return (
        "<dl class=meta>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"
    )


def _analyses_html(run: RunData, plots: list[tuple[str, Plot]], notes: list[str]) -> str:
    parts = ["<h3>Analyses</h3>"]
    for stem, plot in plots:
        parts.append(_img(plot))
        if stem == "similarity":
            parts.append(tables.similarity_extra(run.analyses[stem]))
    present = {data.get("analysis") for data in run.analyses.values()}
    # diversity samples a language model's outputs: absent from an encoder run by design
    wanted = [a for a in ANALYSES if a != "diversity" or is_lm(run.summary)]
    absent = [a for a in wanted if a not in present]
    if absent:
        parts.append(f"<p class=note>Not present in analyses/: {_e(', '.join(absent))}.</p>")
    parts += [f"<p class=note>{_e(n)}</p>" for n in run.notes + notes]
    return "".join(parts)


def _guarded(run: RunData, what: str, build: Callable[[], str]) -> str:
    """A block drawn from optional metrics.json keys: a malformed one becomes a note."""
    try:
        return build()
    except _ANALYSIS_ERRORS as e:
        return f"<p class=note>{_e(what)} could not be shown ({_e(type(e).__name__)}: {_e(e)})</p>"


def _lm_blocks(run: RunData) -> tuple[str, list[Plot]]:
    """Curves during training and the probes (the source side), where the run has them."""
    parts, plots = [], []

    def curves() -> str:
        plot = _curves_plot(run)
        plots.extend([plot] if plot else [])
        return "<h3>Learning and forgetting during training</h3>" + _img(plot) if plot else ""

    def probes() -> str:
        if not run.summary.get("probes"):
            return ""
        table, plot = tables.probes_table(run.summary), _probes_plot(run)
        plots.extend([plot] if plot else [])
        return "<h3>Source side: probes</h3>" + table + (_img(plot) if plot else "")

    parts.append(_guarded(run, "The curves during training (curves)", curves))
    parts.append(_guarded(run, "The probes (probe_matrix)", probes))
    return "".join(parts), plots


def _run_section(run: RunData) -> tuple[str, list[Plot]]:
    s = run.summary
    accuracy, loss = _accuracy_plot(run), _loss_plot(run)
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
        f"<div class=pair><div>{_img(accuracy)}</div><div>{tables.metrics_table(s)}</div></div>",
        tables.tasks_table(s),
        *([lm_html] if lm_html else []),
        "<h3>Training loss</h3>",
        _img(loss) if loss else "<p class=note>No loss curves in metrics.json.</p>",
        _analyses_html(run, analysis, notes),
        "<h3>Configuration (config.yaml)</h3>",
        config,
        "</section>",
    ]
    plots = [accuracy, *lm_plots, *([loss] if loss else []), *(p for _, p in analysis)]
    return "\n".join(body), plots


def render_page(runs: list[RunData], title: str | None = None) -> tuple[str, list[Plot]]:
    """The page and every plot in it (in page order); pure, writes nothing."""
    title = title or "forgetlab report: " + ", ".join(str(r.summary["name"]) for r in runs)
    overview = overview_plots(runs)
    sections = [_run_section(r) for r in runs]
    links = [("overview", "Across runs")] + [(f"run-{r.slug}", r.label) for r in runs]
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
        *(_img(p) for p in overview),
        "</section>",
        *(html_text for html_text, _ in sections),
        '<section id="definitions"><h2>Metric definitions</h2>',
        f"<dl class=defs>{defs}</dl></section>",
        "</main></body></html>",
    ]
    plots = overview + [p for _, section_plots in sections for p in section_plots]
    return "\n".join(page) + "\n", plots


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def figures_dir(out: Path) -> Path:
    """Where the PNG copies of the figures go: `<out stem>_figures/` beside the page."""
    return out.parent / f"{out.stem}_figures"


def build_report(run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Write the report for `run_dirs` to `out` (and its figures to figures_dir(out))."""
    out = Path(out)
    if out.is_dir():
        raise ForgetlabError(f"report output {out} is a directory; give a file name (.html)")
    page, plots = render_page(load_runs(run_dirs), title)
    # The folder is replaced as a whole: no stale figures from an earlier report remain.
    with atomic_dir(figures_dir(out)) as tmp:
        for plot in plots:
            atomic_write_bytes(tmp / plot.file_name, plot.png)
    atomic_write_text(out, page)
    return out

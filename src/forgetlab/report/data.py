"""The report's data model: each run directory read and checked into a `RunData` (its summary,
config text and analysis results), with a label and an id-safe slug unique in the report, and
what the report reads from a run beyond its summary's own numbers (source loss, update ranks).

All inputs are read and checked before any figure is drawn: a bad run directory raises
ForgetlabError. Analyses (analyses/*.json) are optional; a file that is not one of the
registered analyses' results becomes a note.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from forgetlab.analyses import REGISTRY
from forgetlab.analyses.spectrum import RankSummary, rank90_summary
from forgetlab.atomic import read_json
from forgetlab.errors import ForgetlabError
from forgetlab.report.summary import source_target_point
from forgetlab.rundir import RunDir

# Every registered analysis, in the order the page shows them.
PAGE_ORDER = sorted(REGISTRY, key=lambda m: m.REPORT_ORDER)
# Errors a malformed analysis file (or optional metrics.json key) raises while being read or
# drawn; they become a note on the page.
ANALYSIS_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)


@dataclass
class RunData:
    path: Path
    summary: dict
    config_text: str | None
    analyses: dict[str, dict]  # file stem (e.g. "hessian-stage3-encoder") -> contents
    notes: list[str] = field(default_factory=list)
    slug: str = "run"
    label: str = "run"  # the run's name, made unique among the report's runs


def _owns(module: ModuleType, stem: str) -> bool:
    """Whether analyses/<stem>.json may hold `module`'s result (default: only <NAME>.json)."""
    owns = getattr(module, "owns_file", None)
    return owns(stem) if owns is not None else stem == module.NAME


def _load_analyses(run: RunDir) -> tuple[dict[str, dict], list[str]]:
    by_name = {m.NAME: m for m in PAGE_ORDER}
    analyses: dict[str, dict] = {}
    notes: list[str] = []
    for path in sorted(run.analyses_dir.glob("*.json")):
        try:
            data = read_json(path)
        except ForgetlabError as e:
            notes.append(f"analyses/{path.name} skipped: {e}")
            continue
        kind = data.get("analysis") if isinstance(data, dict) else None
        # One file per analysis (the figure ids depend on it), any number of hessian-*.json.
        if not isinstance(kind, str) or kind not in by_name or not _owns(by_name[kind], path.stem):
            files = ", ".join(getattr(m, "FILES", f"{m.NAME}.json") for m in PAGE_ORDER)
            notes.append(f"analyses/{path.name} skipped: not one of {', '.join(by_name)} ({files})")
            continue
        analyses[path.stem] = data
    # Page order: the analyses' REPORT_ORDER, then (the hessian files) by name.
    order = sorted(
        analyses, key=lambda stem: (by_name[analyses[stem]["analysis"]].REPORT_ORDER, stem)
    )
    return {stem: analyses[stem] for stem in order}, notes


def load_run(run_dir: str | Path) -> RunData:
    """Read and check one run directory; ForgetlabError names the path and what is wrong."""
    run = RunDir(run_dir)
    summary = run.summary()
    # the config is shown, not parsed: odd bytes are replaced, never fatal
    analyses, notes = _load_analyses(run)
    return RunData(run.path, summary, run.config_text(), analyses, notes)


def slug(text: str) -> str:
    """Lower-case letters, digits and dashes: safe in an HTML id and a file name."""
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
        base = name = slug(run.label)
        k = 2
        while name in seen:  # two runs with one name still get distinct ids and files
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        run.slug = name
    return runs


def source_loss(summary: dict) -> float | None:
    """The run's source loss, None where it has none (no probe, or a malformed probe block)."""
    try:
        return source_target_point(summary)[1]
    except ANALYSIS_ERRORS:
        return None


def rank_entries(runs: list[RunData]) -> list[tuple[RunData, RankSummary]]:
    """The runs whose spectrum analysis can be summarised, with that summary."""
    entries = []
    for run in runs:
        with contextlib.suppress(*ANALYSIS_ERRORS):  # a broken spectrum is noted per run
            entries.append((run, rank90_summary(run.analyses["spectrum"])))
    return entries

"""Analyses of finished runs: where the model changed, how much, and how sharp its loss is.

An analysis is one module, registered below with one line. It declares:

- NAME: its key (analyses/<NAME>.json, `forgetlab analyze` chooses it by this name);
- FLAG: the help of its `forgetlab analyze --<NAME>` switch, or None for an analysis with
  its own command (the Hessian: `forgetlab hessian`);
- DEFAULTS: its options, and CLI: the `CliOption`s that set some of them from the command
  line (options that analyses share, e.g. --examples, are one command-line option);
- `check(run, seed, params)` (raises before anything is computed) and
  `compute(run, seed, params) -> dict`;
- `format_text(result) -> list[str]`: what the command prints;
- `figure(result, about) -> AnalysisFigure`: its figure in the report, and REPORT_ORDER, its
  place among the report's analyses;
- optionally `applies(run)` (part of the default `analyze` set only where it applies),
  LM_ONLY (the report expects it only from a language model's run), and FILES and
  `owns_file(stem)` for an analysis with several result files (default: <NAME>.json).

`forgetlab analyze` and its flags, the text output and the report's analysis section are
generated from this registry. Every result is cached in <run>/analyses/<name>.json and in the
results store, and recomputed only when asked (`force`) or when the options differ.
"""

from __future__ import annotations

from functools import partial

from forgetlab.analyses import cka, diversity, hessian, run_analyses, similarity, spectrum

REGISTRY = (cka, spectrum, similarity, diversity, hessian)  # one line per analysis

# name -> module; `forgetlab analyze` runs these, in this order
ANALYSES = {m.NAME: m for m in REGISTRY if m.FLAG is not None}
HESSIAN = hessian
BY_NAME = {m.NAME: m for m in REGISTRY}


# The orchestration (options, checks, caching) with this registry passed down to it.
analyze = partial(run_analyses.analyze, ANALYSES)  # analyze(run_dir, which=None, *, seed, ...)
hessian_eigenvalue = partial(run_analyses.hessian, HESSIAN)  # (target, *, seed, ..., **options)


def format_analysis(result: dict) -> str:
    """The plain text `forgetlab analyze` / `forgetlab hessian` print for one result."""
    return "\n".join(BY_NAME[result["analysis"]].format_text(result))


__all__ = [
    "ANALYSES",
    "BY_NAME",
    "HESSIAN",
    "REGISTRY",
    "analyze",
    "format_analysis",
    "hessian_eigenvalue",
]

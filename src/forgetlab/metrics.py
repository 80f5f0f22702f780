"""Continual-learning metrics over an accuracy matrix, significance tests and seed aggregation.

Notation. A run fine-tunes one model on T tasks in order. Every task is evaluated after the
base model (row 0) and after each training stage i = 1..T (row i), giving the (T+1)×T
accuracy matrix R: rows are base, stage1, ..., stageT; columns are the tasks in training
order. Task j (1-indexed) is trained at stage j. In the formulas below R[i][j] is row i,
column j, both 1-indexed for tasks (row 0 is the base model), so R[j][j] is task j's
accuracy right after its own stage and R[T][j] is its accuracy at the end of the run.
Code indexes columns from 0, i.e. R[i][j] here is ``R[i, j - 1]`` in numpy.

All functions are pure (numpy/scipy; scikit-learn for MCC/F1) and return plain Python
floats/ints/lists so results can be written to JSON directly. Input a user could have got
wrong raises `ForgetlabError` with a one-line message.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from forgetlab.errors import ForgetlabError

__all__ = [
    "CONTINUAL_METRIC_KEYS",
    "aggregate_metrics",
    "aggregate_seeds",
    "classification_scores",
    "continual_metrics",
    "learned_test",
    "learning_flags",
    "majority_baseline",
    "matrix_csv_text",
    "metrics_from_csv",
    "read_matrix_csv",
]

#: The scalar keys of `continual_metrics` (each a float, or None where undefined).
CONTINUAL_METRIC_KEYS: tuple[str, ...] = (
    "acc",
    "initial_acc",
    "avg_forgetting",
    "max_forgetting",
    "chaudhry_forgetting",
    "bwt",
    "fwt",
)

#: First cells of the optional extra CSV rows after the matrix.
MAJORITY_ROW = "majority_baseline"
N_EVAL_ROW = "n_eval"
_EXTRA_ROWS = (MAJORITY_ROW, N_EVAL_ROW)

LEARNED_TEST_NAME = "one-sided exact binomial vs majority baseline"
PAIRED_TEST_NAME = "one-sided paired t-test of per-example loss, base vs after training"


# --------------------------------------------------------------------------------------------
# Accuracy-matrix metrics
# --------------------------------------------------------------------------------------------


def _as_matrix(R: Any, bounded: bool = True) -> np.ndarray:
    """Return R as a float (T+1)×T array, or raise ForgetlabError saying what is wrong."""
    try:
        M = np.asarray(R, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ForgetlabError(
            f"accuracy matrix must be a (T+1)×T table of numbers (ragged or non-numeric: {exc})"
        ) from None
    if M.ndim != 2 or M.shape[1] < 1 or M.shape[0] != M.shape[1] + 1:
        raise ForgetlabError(
            f"accuracy matrix must have shape (T+1)×T (rows: base, stage1..stageT; one column "
            f"per task), got shape {M.shape}"
        )
    bad = np.argwhere(~np.isfinite(M))
    if bad.size:
        i, c = (int(x) for x in bad[0])
        raise ForgetlabError(
            f"accuracy matrix has a non-finite value {M[i, c]} at row {i} ({_row_name(i)}), "
            f"task {c + 1}"
        )
    bad = np.argwhere((M < 0.0) | (M > 1.0))
    if bounded and bad.size:
        i, c = (int(x) for x in bad[0])
        raise ForgetlabError(
            f"accuracy matrix value {M[i, c]} at row {i} ({_row_name(i)}), task {c + 1} is "
            f"outside [0, 1] (accuracies are fractions, not percentages)"
        )
    return M


def _row_name(i: int) -> str:
    return "base" if i == 0 else f"stage{i}"


def continual_metrics(R: Any, bounded: bool = True) -> dict[str, Any]:
    """Continual-learning summary of a (T+1)×T accuracy matrix R.

    R[i][j] is the accuracy on task j after stage i (row 0 = base model, tasks 1-indexed;
    see the module docstring). Returned keys (floats; None where undefined):

    - ``acc`` = (1/T) · Σ_{j=1..T} R[T][j] — final average accuracy.
    - ``initial_acc`` = (1/T) · Σ_{j=1..T} R[j][j] — average accuracy on each task right
      after learning it.
    - ``avg_forgetting`` = (1/(T−1)) · Σ_{j=1..T−1} (R[j][j] − R[T][j]) — can be negative
      (later stages improved an earlier task). None when T = 1.
    - ``max_forgetting`` = max_{j=1..T−1} (R[j][j] − R[T][j]). None when T = 1.
    - ``chaudhry_forgetting`` = (1/(T−1)) · Σ_{j=1..T−1} (max_{l=1..T−1} R[l][j] − R[T][j])
      — forgetting as in Chaudhry et al. (2018), measured from the best accuracy task j
      reached at any trained stage before the last. The max runs over the trained stages
      l = 1..T−1 only (including stages before j was trained); the base row 0 is NOT
      included. None when T = 1.
    - ``bwt`` = (1/(T−1)) · Σ_{j=1..T−1} (R[T][j] − R[j][j]) — backward transfer
      (Lopez-Paz & Ranzato, 2017); equals −avg_forgetting. None when T = 1.
    - ``fwt`` = (1/(T−1)) · Σ_{j=2..T} (R[j−1][j] − R[0][j]) — forward transfer: accuracy on
      task j just before training on it, relative to the base model. None when T = 1.
    - ``per_task``: one dict per task j = 1..T with ``task`` (j), ``learned_acc`` = R[j][j],
      ``final_acc`` = R[T][j], ``base_acc`` = R[0][j], ``gain`` = R[j][j] − R[0][j] and
      ``forgetting`` = R[j][j] − R[T][j] (None for the last task, j = T).

    The same formulas hold for any higher-is-better score (e.g. −NLL per token of a language
    model's held-out responses): ``bounded=False`` lifts the [0, 1] check.

    Raises ForgetlabError unless R has shape (T+1)×T with T ≥ 1 and finite values (in [0, 1]
    when ``bounded``).
    """
    M = _as_matrix(R, bounded)
    T = M.shape[1]
    diag = np.array([M[j, j - 1] for j in range(1, T + 1)])  # R[j][j]
    final = M[T, :]  # R[T][j]
    base = M[0, :]  # R[0][j]

    out: dict[str, Any] = {
        "acc": float(np.mean(final)),
        "initial_acc": float(np.mean(diag)),
        "avg_forgetting": None,
        "max_forgetting": None,
        "chaudhry_forgetting": None,
        "bwt": None,
        "fwt": None,
    }
    if T >= 2:
        forgetting = diag[: T - 1] - final[: T - 1]  # j = 1..T-1
        best = M[1:T, : T - 1].max(axis=0)  # max_{l=1..T-1} R[l][j]
        before = np.array([M[j - 1, j - 1] for j in range(2, T + 1)])  # R[j-1][j]
        out["avg_forgetting"] = float(np.mean(forgetting))
        out["max_forgetting"] = float(np.max(forgetting))
        out["chaudhry_forgetting"] = float(np.mean(best - final[: T - 1]))
        out["bwt"] = float(np.mean(final[: T - 1] - diag[: T - 1]))
        out["fwt"] = float(np.mean(before - base[1:]))
    out["per_task"] = [
        {
            "task": j,
            "learned_acc": float(diag[j - 1]),
            "final_acc": float(final[j - 1]),
            "base_acc": float(base[j - 1]),
            "gain": float(diag[j - 1] - base[j - 1]),
            "forgetting": float(diag[j - 1] - final[j - 1]) if j < T else None,
        }
        for j in range(1, T + 1)
    ]
    return out


# --------------------------------------------------------------------------------------------
# "Did it learn?" — significance against the majority-class baseline
# --------------------------------------------------------------------------------------------


def majority_baseline(labels: Sequence[int]) -> float:
    """Share of the most common label: max_c #{i : labels[i] = c} / len(labels).

    This is the accuracy of always predicting the majority class. Raises ForgetlabError for
    an empty label list.
    """
    labels = list(labels)
    if not labels:
        raise ForgetlabError("majority_baseline needs at least one label, got none")
    return Counter(labels).most_common(1)[0][1] / len(labels)


def learned_test(acc: float, n: int, baseline: float, alpha: float = 0.05) -> dict[str, Any]:
    """One-sided exact binomial test of whether accuracy ``acc`` on ``n`` examples beats
    ``baseline``.

    k = round(acc · n) correct out of n; H0: success probability p = p0 = baseline;
    H1: p > p0. p_value = P(X ≥ k) for X ~ Binomial(n, p0) (scipy.stats.binomtest with
    alternative="greater"); ``learned`` = p_value < alpha.

    Returns {"learned": bool, "p_value": float, "test": "one-sided exact binomial vs majority
    baseline", "alpha": alpha, "k": k, "n": n}.
    """
    from scipy.stats import binomtest

    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ForgetlabError(f"learned_test needs a positive integer n (examples), got {n!r}")
    n = int(n)
    for name, value in (("acc", acc), ("baseline", baseline)):
        if not (isinstance(value, numbers.Real) and 0.0 <= float(value) <= 1.0):
            raise ForgetlabError(f"learned_test: {name} must be a number in [0, 1], got {value!r}")
    if not (isinstance(alpha, numbers.Real) and 0.0 < float(alpha) < 1.0):
        raise ForgetlabError(f"learned_test: alpha must be in (0, 1), got {alpha!r}")
    k = min(max(round(float(acc) * n), 0), n)
    p_value = float(binomtest(k, n, float(baseline), alternative="greater").pvalue)
    return {
        "learned": bool(p_value < alpha),
        "p_value": p_value,
        "test": LEARNED_TEST_NAME,
        "alpha": float(alpha),
        "k": k,
        "n": n,
    }


def paired_learned_test(
    base: Sequence[float], after: Sequence[float], alpha: float = 0.05
) -> dict[str, Any]:
    """For scores with no chance level (held-out NLL): did the per-example loss fall after
    training? One-sided paired t-test of ``base`` − ``after`` > 0 over the same examples
    (scipy.stats.ttest_rel, alternative="greater"); ``learned`` = p_value < alpha."""
    from scipy.stats import ttest_rel

    if len(base) != len(after) or len(base) < 2:
        raise ForgetlabError("the paired learned test needs the same >= 2 examples in both rows")
    diff = np.asarray(base, float) - np.asarray(after, float)
    if np.allclose(diff, diff[0]):  # no spread: t is undefined; decide by the sign alone
        p_value = 0.0 if diff[0] > 0 else 1.0
    else:
        p_value = float(ttest_rel(base, after, alternative="greater").pvalue)
    return {
        "learned": bool(p_value < alpha),
        "p_value": p_value,
        "test": PAIRED_TEST_NAME,
        "alpha": float(alpha),
        "n": len(diff),
        "mean_improvement": float(diff.mean()),
    }


def learning_flags(
    R: Any,
    majority: Sequence[float | None],
    n_eval: Sequence[int],
    alpha: float = 0.05,
    per_example: Sequence[tuple[Sequence[float], Sequence[float]] | None] | None = None,
) -> list[dict[str, Any]]:
    """For each task j = 1..T, test whether it was learned at its own stage.

    With a baseline (majority class, chance): entry j is ``learned_test(R[j][j], n_eval[j],
    majority[j], alpha)`` plus ``task`` (j), ``majority_baseline`` and ``above_majority``
    = R[j][j] − majority[j]. Without one (``majority[j]`` None: a loss-based score), the
    paired test of the per-example losses before training (row 0) and after stage j,
    ``per_example[j] = (base, after)``.
    """
    M = _as_matrix(R, bounded=all(m is not None for m in majority))
    T = M.shape[1]
    majority = list(majority)
    n_eval = list(n_eval)
    if len(majority) != T or len(n_eval) != T:
        raise ForgetlabError(
            f"learning_flags needs one majority baseline and one n_eval per task ({T} tasks), "
            f"got {len(majority)} and {len(n_eval)}"
        )
    flags = []
    for j in range(1, T + 1):
        learned = float(M[j, j - 1])
        entry: dict[str, Any] = {"task": j}
        if majority[j - 1] is None:
            pair = (per_example or [None] * T)[j - 1]
            if pair is None:
                raise ForgetlabError(f"task {j} has no baseline and no per-example scores")
            entry.update(paired_learned_test(pair[0], pair[1], alpha=alpha))
            entry["majority_baseline"] = None
            entry["above_majority"] = None
        else:
            entry.update(learned_test(learned, n_eval[j - 1], majority[j - 1], alpha=alpha))
            entry["majority_baseline"] = float(majority[j - 1])
            entry["above_majority"] = learned - float(majority[j - 1])
        flags.append(entry)
    return flags


# --------------------------------------------------------------------------------------------
# Per-task scores
# --------------------------------------------------------------------------------------------

_EXTRA_SCORES = ("mcc", "f1")


def classification_scores(
    preds: Sequence[int], labels: Sequence[int], extras: Iterable[str] = ()
) -> dict[str, float]:
    """Scores of predicted vs true class ids.

    - ``accuracy`` = #{i : preds[i] = labels[i]} / n (always).
    - ``mcc`` (if "mcc" in extras): Matthews correlation coefficient
      (sklearn.metrics.matthews_corrcoef; for binary labels
      (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN))), 0.0 when undefined (e.g. a
      constant prediction).
    - ``f1`` (if "f1" in extras): F1 of the positive class 1 = 2·TP / (2·TP + FP + FN)
      (sklearn f1_score, zero_division=0, so 0.0 when there are no positives at all).
    """
    extras = tuple(extras)
    unknown = [e for e in extras if e not in _EXTRA_SCORES]
    if unknown:
        raise ForgetlabError(
            f"unknown extra metric(s) {unknown}; available: {', '.join(_EXTRA_SCORES)}"
        )
    y_pred = np.asarray(list(preds))
    y_true = np.asarray(list(labels))
    if y_pred.shape != y_true.shape or y_true.ndim != 1:
        raise ForgetlabError(
            f"predictions and labels must be flat and of equal length, got {y_pred.shape} "
            f"and {y_true.shape}"
        )
    if y_true.size == 0:
        raise ForgetlabError("cannot score an empty evaluation set (no labels)")
    out = {"accuracy": float(np.mean(y_pred == y_true))}
    if "mcc" in extras or "f1" in extras:
        import warnings

        from sklearn.metrics import f1_score, matthews_corrcoef

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "mcc" in extras:
                mcc = float(matthews_corrcoef(y_true, y_pred))
                out["mcc"] = mcc if math.isfinite(mcc) else 0.0
            if "f1" in extras:
                # labels=[1], average=None: F1 of class 1 only, also fine for >2 classes.
                f1 = f1_score(y_true, y_pred, labels=[1], average=None, zero_division=0)
                out["f1"] = float(f1[0])
    return out


def target_gain(R: Any, majority_baseline: Sequence[float | None]) -> float:
    """What was learned: the mean over tasks of R[j][j] minus its floor — the majority
    baseline (chance), or, for a score without one (−NLL), the base model's own score R[0][j]."""
    R = np.asarray(R, float)
    floors = [R[0, j] if b is None else float(b) for j, b in enumerate(majority_baseline)]
    return float(np.mean(np.diag(R[1:]) - np.asarray(floors, float)))


def probe_is_source(cell: dict) -> bool:
    """Whether a probe's base-model score counts as "what the model could do before", so that
    a drop is forgetting: a multiple-choice probe the base model passes above chance (its
    `p_value` < 0.05), every −NLL probe, and a generation probe it scores above 0."""
    if "p_value" in cell:
        return bool(cell["p_value"] < 0.05)
    return cell.get("metric") == "neg_nll" or cell["score"] > 0


# --------------------------------------------------------------------------------------------
# Aggregation over seeds
# --------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def aggregate_seeds(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, spread and 95% confidence interval of one metric over seeds.

    None entries (metric undefined for that seed) are dropped; with the n remaining values
    x_1..x_n:

    - ``mean`` = (1/n) · Σ x_i (None when n = 0);
    - ``std`` = √(Σ (x_i − mean)² / (n − 1)) (sample std, ddof=1); 0.0 when n = 1, None
      when n = 0;
    - ``ci95`` = t_{0.975, n−1} · std / √n, the half-width of the two-sided 95% Student-t
      confidence interval of the mean (mean ± ci95); None when n < 2;
    - ``n`` = number of non-None values;
    - ``values``: the input values as floats, None kept in place (aligned with the seeds).

    Raises ForgetlabError for a non-numeric or non-finite value.
    """
    kept: list[float] = []
    listed: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            listed.append(None)
            continue
        if not _is_number(v) or not math.isfinite(float(v)):
            raise ForgetlabError(f"aggregate_seeds: value {i} is {v!r}, not a finite number")
        kept.append(float(v))
        listed.append(float(v))
    n = len(kept)
    out: dict[str, Any] = {"mean": None, "std": None, "ci95": None, "n": n, "values": listed}
    if n == 0:
        return out
    x = np.asarray(kept)
    out["mean"] = float(np.mean(x))
    if n == 1:
        out["std"] = 0.0
        return out
    from scipy.stats import t

    std = float(np.std(x, ddof=1))
    out["std"] = std
    out["ci95"] = float(t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return out


def aggregate_metrics(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Aggregate `continual_metrics`-style dicts (one per seed) key by key.

    A top-level key is aggregated (``aggregate_seeds`` over the seeds, in the given seed
    order) when every seed's value is a number or None (a seed lacking the key counts as
    None) and at least one is a number — or the key is one of CONTINUAL_METRIC_KEYS, which
    are always reported (e.g. ``fwt`` for T = 1 gives mean None). Nested (``per_task``,
    ``learning``), string and boolean values are ignored. Keys keep first-seen order.
    """
    keys: list[str] = []
    for seed in per_seed:
        if not isinstance(seed, dict):
            raise ForgetlabError(f"aggregate_metrics expects a list of dicts, got {type(seed)}")
        for key in seed:
            if key not in keys:
                keys.append(key)
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        vals = [seed.get(key) for seed in per_seed]
        if not all(v is None or _is_number(v) for v in vals):
            continue
        if key in CONTINUAL_METRIC_KEYS or any(v is not None for v in vals):
            out[key] = aggregate_seeds(vals)
    return out


# --------------------------------------------------------------------------------------------
# CSV format: `forgetlab metrics FILE.csv` and accuracy_matrix.csv
# --------------------------------------------------------------------------------------------


def _parse_float(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def read_matrix_csv(path: str | Path) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read an accuracy-matrix CSV.

    Format: a header row ``stage,<task1>,...,<taskT>`` (the first header cell is free text),
    then T+1 rows ``<label>,R[i][1],...,R[i][T]`` for i = 0 (base) .. T (any labels). The
    label column may be omitted: then the header is just the T task names and the T+1 rows
    are all numeric. Optional extra rows may follow, each with a first cell that is exactly
    ``majority_baseline`` (T values in [0, 1]) or ``n_eval`` (T positive integers). Blank
    lines and trailing empty cells are ignored.

    Returns (tasks, R, extras) with R a float (T+1)×T array and extras =
    {"row_labels": list[str] | None, "majority_baseline": list[float] | None,
    "n_eval": list[int] | None}. Raises ForgetlabError naming the file, line and column of
    the first problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ForgetlabError(f"accuracy matrix file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ForgetlabError(f"cannot read accuracy matrix file {path}: {exc}") from None

    rows: list[tuple[int, list[str]]] = []  # (line number, cells)
    reader = csv.reader(io.StringIO(text))
    try:
        for cells in reader:
            cells = [c.strip() for c in cells]
            while cells and cells[-1] == "":
                cells.pop()
            if cells:
                rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise ForgetlabError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    if not rows:
        raise ForgetlabError(f"{path}: empty file (expected a header row and T+1 matrix rows)")

    (_, header), body = rows[0], rows[1:]
    matrix_rows = [(ln, cells) for ln, cells in body if cells[0] not in _EXTRA_ROWS]
    extra_rows = [(ln, cells) for ln, cells in body if cells[0] in _EXTRA_ROWS]
    if not matrix_rows:
        raise ForgetlabError(f"{path}: no matrix rows after the header")
    C = len(header)
    # Label column present if the row count fits it (T = C-1 tasks, T+1 = C rows; labels may
    # be numeric) or if most first cells are not numbers (so a single typo in an unlabelled
    # file is reported as a bad cell, not as a row-count mismatch).
    non_numeric = sum(_parse_float(cells[0]) is None for _, cells in matrix_rows)
    labelled = len(matrix_rows) == C or 2 * non_numeric > len(matrix_rows)
    tasks = header[1:] if labelled else header
    T = len(tasks)
    layout = "first column read as row labels" if labelled else "no row-label column"
    if T < 1:
        raise ForgetlabError(f"{path}: header names no tasks (expected 'stage,<task1>,...')")
    for c, name in enumerate(tasks):
        if not name:
            raise ForgetlabError(f"{path}: header column {c + 1 + int(labelled)} has no task name")
    dup = [name for name, count in Counter(tasks).items() if count > 1]
    if dup:
        raise ForgetlabError(f"{path}: duplicate task name(s) in header: {', '.join(dup)}")
    if len(matrix_rows) != T + 1:
        raise ForgetlabError(
            f"{path}: expected T+1 = {T + 1} matrix rows (base + one per stage) for {T} tasks "
            f"({layout}), found {len(matrix_rows)}"
        )

    def values(line: int, cells: list[str], has_label: bool, what: str) -> list[float]:
        vals = cells[1:] if has_label else cells
        if len(vals) != T:
            raise ForgetlabError(
                f"{path}: line {line} ({what}) has {len(vals)} values, expected {T} (one per "
                f"task; {layout})"
            )
        out = []
        for task, cell in zip(tasks, vals):
            x = _parse_float(cell)
            if x is None or not math.isfinite(x):
                raise ForgetlabError(
                    f"{path}: line {line} ({what}), column '{task}': {cell!r} is not a "
                    f"finite number"
                )
            out.append(x)
        return out

    R = np.empty((T + 1, T))
    row_labels: list[str] | None = [] if labelled else None
    for i, (line, cells) in enumerate(matrix_rows):
        what = f"row {cells[0]!r}" if labelled else f"matrix row {i}"
        R[i] = values(line, cells, labelled, what)
        for task, x in zip(tasks, R[i]):
            if not 0.0 <= x <= 1.0:
                raise ForgetlabError(
                    f"{path}: line {line} ({what}), column '{task}': {x} is outside [0, 1] "
                    f"(accuracies are fractions, not percentages)"
                )
        if row_labels is not None:
            row_labels.append(cells[0])

    extras: dict[str, Any] = {"row_labels": row_labels, MAJORITY_ROW: None, N_EVAL_ROW: None}
    for line, cells in extra_rows:
        name = cells[0]
        if extras[name] is not None:
            raise ForgetlabError(f"{path}: line {line}: second '{name}' row")
        vals = values(line, cells, True, f"row {name!r}")
        if name == MAJORITY_ROW:
            for task, x in zip(tasks, vals):
                if not 0.0 <= x <= 1.0:
                    raise ForgetlabError(
                        f"{path}: line {line} ({name}), column '{task}': {x} is outside [0, 1]"
                    )
            extras[name] = vals
        else:
            for task, x in zip(tasks, vals):
                if x < 1 or x != int(x):
                    raise ForgetlabError(
                        f"{path}: line {line} ({name}), column '{task}': {x:g} is not a "
                        f"positive whole number of examples"
                    )
            extras[name] = [int(x) for x in vals]
    return list(tasks), R, extras


def metrics_from_csv(path: str | Path, alpha: float = 0.05) -> dict[str, Any]:
    """Everything `forgetlab metrics FILE.csv` reports for an accuracy-matrix CSV.

    Returns {"tasks", "accuracy_matrix" (list of lists), **continual_metrics(R), "learning"}.
    ``learning`` is learning_flags(R, majority_baseline, n_eval, alpha) when the CSV has both
    a ``majority_baseline`` and an ``n_eval`` row; otherwise it is None and ``note`` explains
    that the learned flags need those two rows. See `read_matrix_csv` for the format.
    """
    tasks, R, extras = read_matrix_csv(path)
    result: dict[str, Any] = {"tasks": tasks, "accuracy_matrix": R.tolist()}
    result.update(continual_metrics(R))
    majority, n_eval = extras[MAJORITY_ROW], extras[N_EVAL_ROW]
    if majority is not None and n_eval is not None:
        result["learning"] = learning_flags(R, majority, n_eval, alpha=alpha)
    else:
        missing = " and ".join(
            f"'{name}'" for name, v in ((MAJORITY_ROW, majority), (N_EVAL_ROW, n_eval)) if v is None
        )
        result["learning"] = None
        result["note"] = (
            f"no learned flags: they need a '{MAJORITY_ROW}' row and an '{N_EVAL_ROW}' row "
            f"after the matrix ({missing} missing)"
        )
    return result


def matrix_csv_text(
    tasks: Sequence[str],
    R: Any,
    row_labels: Sequence[str] | None = None,
    *,
    majority_baseline: Sequence[float] | None = None,
    n_eval: Sequence[int] | None = None,
    bounded: bool = True,
) -> str:
    """The CSV text of an accuracy matrix, in the format `read_matrix_csv` reads.

    Header ``stage,<task1>,...,<taskT>``, then one row per matrix row labelled with
    ``row_labels`` (default: base, stage1, ..., stageT), then — if given — a
    ``majority_baseline`` row and an ``n_eval`` row. Floats are written with full precision
    (repr), so reading the text back gives the same numbers. Writing the file (atomically)
    is left to the caller. ``bounded=False``: scores that are not fractions (−NLL).
    """
    M = _as_matrix(R, bounded)
    T = M.shape[1]
    tasks = [str(t) for t in tasks]
    if len(tasks) != T:
        raise ForgetlabError(f"{len(tasks)} task names for a matrix with {T} task columns")
    labels = (
        [_row_name(i) for i in range(T + 1)] if row_labels is None else [str(x) for x in row_labels]
    )
    if len(labels) != T + 1:
        raise ForgetlabError(f"{len(labels)} row labels for a matrix with {T + 1} rows")
    clash = [x for x in labels if x.strip() in _EXTRA_ROWS]
    if clash:
        raise ForgetlabError(f"row label {clash[0]!r} is reserved for the extra rows")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["stage", *tasks])
    for label, row in zip(labels, M):
        writer.writerow([label, *(repr(float(x)) for x in row)])
    if majority_baseline is not None:
        if len(majority_baseline) != T:
            raise ForgetlabError(f"{len(majority_baseline)} majority baselines for {T} tasks")
        writer.writerow([MAJORITY_ROW, *(repr(float(x)) for x in majority_baseline)])
    if n_eval is not None:
        if len(n_eval) != T:
            raise ForgetlabError(f"{len(n_eval)} n_eval values for {T} tasks")
        writer.writerow([N_EVAL_ROW, *(str(int(x)) for x in n_eval)])
    return buf.getvalue()

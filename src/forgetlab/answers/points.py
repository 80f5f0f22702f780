"""Finished run directories as points: one per run, with its method, the settings swept
between the runs, and each seed's learning and forgetting.

    learning   = initial_acc (mean of R[j][j]), target_gain (initial_acc minus the floor:
                 the majority baseline, or the base model's score where a task has none)
                 or acc (final mean accuracy)
    forgetting = avg_forgetting, max_forgetting, chaudhry_forgetting or source_loss

Learning is maximised, forgetting minimised. A point's method label is the method's name,
with its regulariser (`lora+laplace`) and, when every run of that method and regulariser
shares one λ, that λ (`lora+laplace(λ=100)`): a swept λ is a setting of one method, not
many methods. Its strategies follow by name (`lora+laplace+replay`, `full+replay+lwf`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgetlab.config import strategy_sections
from forgetlab.errors import ForgetlabError
from forgetlab.metrics import aggregate_seeds, target_gain
from forgetlab.rundir import RunDir

LEARNING = ("initial_acc", "target_gain", "acc")
FORGETTING = ("avg_forgetting", "max_forgetting", "chaudhry_forgetting", "source_loss")
LAMBDA_KEY = "regularizer.lambda"

# Config sections that are not settings of a point: where it was written, what it ran on
# (the tasks are checked equal instead), its seeds, and the knobs that do not change results.
NOT_SETTINGS_SECTIONS = ("name", "output", "seeds", "variants", "sweep", "tasks")
NOT_SETTINGS_KEYS = (
    "method.name",
    "regularizer.name",
    "strategy.name",
    "training.progress_bar",
    "training.log_every",
    "training.trackers",
    "training.device",
    "eval.batch_size",
)


class NotComparable(ForgetlabError):
    """These runs cannot be answered together (different tasks, no run with both metrics)."""


@dataclass
class Point:
    """One finished run: per-seed learning and forgetting (None where undefined, e.g. the
    forgetting of a single task, or source_loss without probes)."""

    run: str
    name: str
    method: str
    config: dict[str, Any]
    seeds: list[int]
    learning: list[float | None]
    forgetting: list[float | None]
    settings: dict[str, Any] = field(default_factory=dict)

    def values(self, which: str) -> list[float | None]:
        if which not in ("learning", "forgetting"):
            raise ForgetlabError(f"metric must be learning or forgetting, not {which!r}")
        return self.learning if which == "learning" else self.forgetting

    def per_seed(self, which: str) -> dict[int, float | None]:
        return dict(zip(self.seeds, self.values(which)))

    def summary(self, which: str) -> dict[str, Any]:
        """mean, std, ci95 (Student-t half-width), n and values over seeds."""
        return aggregate_seeds(self.values(which))

    def mean(self, which: str) -> float | None:
        return self.summary(which)["mean"]

    def complete(self) -> bool:
        """Every seed has both values: the point can be placed on a frontier."""
        return all(v is not None for v in (*self.learning, *self.forgetting)) and bool(self.seeds)

    @property
    def label(self) -> str:
        text = setting_text(self.settings)
        return f"{self.method} {text}" if text else self.method


def short_key(key: str) -> str:
    """`training.lr` -> `lr`, `regularizer.lambda` -> `λ`: how a setting is written in a label."""
    last = key.rsplit(".", 1)[-1]
    return "λ" if last == "lambda" else last


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def setting_text(settings: dict[str, Any]) -> str:
    shorts = [short_key(k) for k in settings]
    names = [s if shorts.count(s) == 1 else k for s, k in zip(shorts, settings)]
    return " ".join(f"{n}={format_value(v)}" for n, v in zip(names, settings.values()))


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list):
        # lists of plain values are one setting (regularizer.source: [mrpc]); lists of task
        # dicts (probes, source_tasks) are what was measured, not a setting
        if all(not isinstance(v, dict | list) for v in value):
            out[prefix] = list(value)
    else:
        out[prefix] = value


def flat_config(run: RunDir, summary: dict) -> dict[str, Any]:
    """The run's config as {dotted key: value}; from metrics.json where config.yaml is gone."""
    if run.config_path.is_file():
        raw = run.saved_config()
    else:
        raw = {
            "training": {"lr": summary.get("lr")},
            "method": summary.get("method_config") or {"name": summary.get("method")},
            "regularizer": summary.get("regularizer"),
            "strategy": summary.get("strategy"),
        }
    out: dict[str, Any] = {}
    for section, value in raw.items():
        # `regularizer: null` sets nothing (its keys are absent, not a setting "None")
        if section not in NOT_SETTINGS_SECTIONS and value is not None:
            _flatten(value, section, out)
    return {k: v for k, v in out.items() if k not in NOT_SETTINGS_KEYS}


def _seed_target_gain(seed_metrics: dict, summary: dict) -> float:
    """initial_acc minus the mean floor, from one seed's matrix (see the module docstring)."""
    baseline = seed_metrics.get("majority_baseline", summary["majority_baseline"])
    return target_gain(seed_metrics["accuracy_matrix"], baseline)


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ForgetlabError(f"{where} is {value!r}, not a finite number")
    return float(value)


def _seed_values(path: Path, summary: dict, learning: str, forgetting: str) -> tuple:
    """(seeds, learning per seed, forgetting per seed): from per_seed, or from the aggregate's
    values (aligned with the seeds) for a summary without per-seed metrics."""
    per_seed = summary.get("per_seed")
    if isinstance(per_seed, dict) and per_seed:
        seeds, learn, forget = [], [], []
        for s in summary["seeds"]:
            m = per_seed.get(str(s), per_seed.get(s))
            if not isinstance(m, dict) or not m.get("complete", True):
                continue
            where = f"{path}/metrics.json: seed {s}"
            seeds.append(int(s))
            if learning == "target_gain":
                learn.append(_seed_target_gain(m, summary))
            else:
                learn.append(_number(m.get(learning), f"{where}: {learning}"))
            forget.append(_number(m.get(forgetting), f"{where}: {forgetting}"))
        return seeds, learn, forget
    if learning == "target_gain":
        raise ForgetlabError(f"{path}/metrics.json has no per_seed metrics to compute target_gain")
    agg = summary["aggregate"]

    def values(key: str) -> list[float | None]:
        got = (agg.get(key) or {}).get("values") or [None] * len(summary["seeds"])
        return [_number(v, f"{path}/metrics.json: {key}") for v in got]

    return [int(s) for s in summary["seeds"]], values(learning), values(forgetting)


def _strategies(summary: dict) -> tuple[str, ...]:
    return tuple(str(s.get("name")) for s in strategy_sections(summary.get("strategy")))


def _label(method: str, regularizer: dict | None, lam: Any, strategies: tuple[str, ...]) -> str:
    label = method
    if regularizer:
        label = f"{method}+{regularizer.get('name')}"
        label = label if lam is None else f"{label}(λ={format_value(lam)})"
    return "+".join([label, *strategies])


def swept_keys(points: Sequence[Point]) -> list[str]:
    """The config keys whose value differs between the points (a key a point lacks counts as
    a different value), in first-seen order."""
    keys: list[str] = []
    for p in points:
        keys += [k for k in p.config if k not in keys]
    marker = object()
    return [
        k
        for k in keys
        if len({json.dumps(p.config.get(k, marker), default=str) for p in points}) > 1
    ]


def load_points(
    run_dirs: Sequence[str | Path],
    learning: str = "initial_acc",
    forgetting: str = "avg_forgetting",
) -> list[Point]:
    """One Point per finished run directory, settings = the keys swept between them.

    Raises ForgetlabError for an unknown metric name, a directory that is not a run, or runs
    whose tasks differ (their numbers measure different things).
    """
    if learning not in LEARNING:
        raise ForgetlabError(f"learning must be one of {', '.join(LEARNING)}, not {learning!r}")
    if forgetting not in FORGETTING:
        raise ForgetlabError(
            f"forgetting must be one of {', '.join(FORGETTING)}, not {forgetting!r}"
        )
    if not run_dirs:
        raise ForgetlabError("answers need at least one run directory")
    loaded = []
    for path in run_dirs:
        run = RunDir(path)
        summary = run.summary()
        loaded.append((run, summary, flat_config(run, summary)))
    tasks = {json.dumps(s["tasks"]) for _, s, _ in loaded}
    if len(tasks) > 1:
        listing = "; ".join(f"{r.path}: {', '.join(s['tasks'])}" for r, s, _ in loaded)
        raise NotComparable(
            f"these runs cannot be compared: their tasks differ ({listing}); "
            "answers need runs of one task sequence"
        )
    # λ is part of the label only where it is the same for every run of that method+regulariser
    lambdas: dict[tuple, set[str]] = {}
    for _, s, flat in loaded:
        group = (s["method"], (s.get("regularizer") or {}).get("name"), _strategies(s))
        lambdas.setdefault(group, set()).add(json.dumps(flat.get(LAMBDA_KEY)))
    points = []
    for run, s, flat in loaded:
        reg = s.get("regularizer") or None
        group = (s["method"], (reg or {}).get("name"), _strategies(s))
        lam = flat.get(LAMBDA_KEY) if len(lambdas[group]) == 1 else None
        seeds, learn, forget = _seed_values(run.path, s, learning, forgetting)
        points.append(
            Point(
                run=str(run.path),
                name=str(s["name"]),
                method=_label(s["method"], reg, lam, _strategies(s)),
                config=flat,
                seeds=seeds,
                learning=learn,
                forgetting=forget,
            )
        )
    for p in points:
        p.settings = point_settings(p, points)
    return points


def point_settings(point: Point, points: Sequence[Point]) -> dict[str, Any]:
    """What tells `point` apart: the keys swept within its method, and the keys every run has
    that differ between the runs (the learning rate of full FT vs LoRA) — not the keys only
    some methods have (a regulariser's curvature), and not a λ its label already names."""
    group = [p for p in points if p.method == point.method]
    shared = [k for k in swept_keys(points) if all(k in p.config for p in points)]
    keys = swept_keys(group) + [k for k in shared if k not in swept_keys(group)]
    skip = LAMBDA_KEY if "(λ=" in point.method else None
    return {k: point.config[k] for k in keys if k in point.config and k != skip}

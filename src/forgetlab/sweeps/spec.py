"""The `sweep:` section of a sweep config: its schema (dataclasses checked in __post_init__)
and the grid it expands to.

    sweep:
      methods: [full, lora]          # or variants: [{name, overrides}]: the arms
      space:                         # every arm; a list is a grid axis
        training.lr: {log: [1.0e-5, 1.0e-2], per_decade: 4}
        method.r: [8, 64]
      per_method: {full: {training.lr: {log: [1.0e-6, 1.0e-3], per_decade: 4}, method.r: null}}
      seeds: [1, 2]                  # every point runs every seed
      objectives: [learning, forgetting]
      sampler: grid                  # grid | random | tpe | nsga2 | predicted; trials: N for
                                     # random, tpe, nsga2
      predict_lr: true               # or {reference: {lora: 1.0e-3}, definition, around, ...}
      pruner: none                   # median | hyperband on the eval.every curve (learning)
      resources: {cpu: 1, gpu: 0.25} # --backend ray: what one trial asks of Ray

A grid point is one arm plus one value per axis; `per_method` replaces, adds or (null)
removes axes of that arm only, so the grid is the union over arms of each arm's own product.

`sampler: predicted` is a grid too: each arm's learning rates are cut down to the `around`
values on each side of the value nearest that arm's predicted rate (`predict_lr`, from the
Hessian at init, computed when the sweep starts and recorded as `predict_lr.rates`).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from forgetlab.config import VariantConfig, from_dict
from forgetlab.errors import ConfigError
from forgetlab.metrics import CONTINUAL_METRIC_KEYS
from forgetlab.sweeps.prune import WATCHED

SAMPLERS = ("grid", "random", "tpe", "nsga2", "predicted")
GRID_SAMPLERS = ("grid", "predicted")  # samplers that run a list of points
RATE_KEY = "training.lr"  # the axis `predicted` cuts down
PRUNERS = ("none", "median", "hyperband")
# Higher is better for these; lower for every other objective.
MAXIMIZE = ("acc", "initial_acc", "bwt", "fwt", "target_gain")
OBJECTIVES = (*CONTINUAL_METRIC_KEYS, "target_gain", "source_loss")
ALIASES = {"learning": "initial_acc", "forgetting": "avg_forgetting"}
# Keys a point may not set: they are the sweep's own (where trials go, which seeds run).
RESERVED = ("output.dir", "output.store", "seeds", "variants", "name")
# The most points a grid (or values a log axis) may have: every point is resolved and checked
# before anything runs, so a grid of millions would hang the check itself.
MAX_POINTS = 10_000


@dataclass
class Axis:
    """One swept key: a list of values, or a log range (grid: `per_decade` points per decade,
    from `low` up to at most `high`; other samplers: log-uniform on [low, high])."""

    key: str
    values: list[Any] = field(default_factory=list)
    low: float | None = None
    high: float | None = None
    per_decade: int | None = None

    def __post_init__(self) -> None:
        if self.low is None:
            if not self.values:
                raise ConfigError(f"sweep.space.{self.key} is an empty list: the grid is empty")
            bad = [v for v in self.values if not isinstance(v, str | int | float | bool)]
            if bad:
                raise ConfigError(f"sweep.space.{self.key}: {bad[0]!r} is not a plain value")
            return
        finite = self.high is not None and math.isfinite(self.low) and math.isfinite(self.high)
        if not (finite and self.low > 0 and self.high > 0):  # NaN fails every comparison
            raise ConfigError(
                f"sweep.space.{self.key}: a log range needs finite low > 0 and high > 0"
            )
        if self.low >= self.high:
            raise ConfigError(
                f"sweep.space.{self.key}: log range low={self.low:g} must be below "
                f"high={self.high:g}"
            )
        if self.per_decade is None or self.per_decade < 1:
            raise ConfigError(f"sweep.space.{self.key}: per_decade must be a whole number >= 1")
        if not math.isfinite(self.high / self.low):  # 1e-300 to 1e300 overflows
            raise ConfigError(f"sweep.space.{self.key}: the log range spans too many decades")
        steps = math.floor(math.log10(self.high / self.low) * self.per_decade + 1e-9)
        if steps >= MAX_POINTS:  # a typo (per_decade: 40000) must not build a huge list
            raise ConfigError(
                f"sweep.space.{self.key}: {steps + 1} values (at most {MAX_POINTS}); lower "
                "per_decade or narrow the range"
            )
        # Three significant digits: 1.78e-05, not 1.7782794100389227e-05, in configs and names.
        self.values = [
            float(f"{self.low * 10 ** (k / self.per_decade):.3g}") for k in range(steps + 1)
        ]

    @property
    def is_log(self) -> bool:
        return self.low is not None

    def describe(self) -> str:
        """As a sampler (not the grid) sees it."""
        if self.is_log:
            return f"{self.key} log-uniform in [{self.low:g}, {self.high:g}]"
        return f"{self.key} one of {self.values}"


# YAML 1.1 reads `1e-3` (no dot) as a string; such a value in a list is the number it shows.
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_axis(key: str, raw: Any) -> Axis:
    if isinstance(raw, list):
        values = [float(v) if isinstance(v, str) and _EXPONENT.fullmatch(v) else v for v in raw]
        return Axis(key, values=values)
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"log", "per_decade"})
        if unknown or "log" not in raw:
            raise ConfigError(
                f"sweep.space.{key}: unknown key {(unknown or ['(no log)'])[0]!r} "
                "(a value list, or {log: [low, high], per_decade: N})"
            )
        bounds = raw["log"]
        if not (isinstance(bounds, list) and len(bounds) == 2):
            raise ConfigError(f"sweep.space.{key}.log must be [low, high], got {bounds!r}")
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"sweep.space.{key}.log must be two numbers, got {bounds}") from e
        per_decade = raw.get("per_decade", 4)
        if not isinstance(per_decade, int) or isinstance(per_decade, bool):
            raise ConfigError(f"sweep.space.{key}.per_decade must be a whole number")
        return Axis(key, low=low, high=high, per_decade=per_decade)
    raise ConfigError(
        f"sweep.space.{key}={raw!r}: give a list of values or {{log: [low, high], per_decade: N}}"
    )


def parse_space(raw: Any, where: str, allow_drop: bool = False) -> dict[str, Axis | None]:
    """Dotted key -> Axis; with `allow_drop` (an arm's own space) `key: null` removes a common
    axis from that arm (e.g. method.r for full fine-tuning)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of dotted keys to values, got {raw!r}")
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"{where}: {key!r} is not a dotted config key")
        if key in RESERVED or key.split(".")[0] == "sweep":
            raise ConfigError(f"{where}.{key}: the sweep sets this key itself")
        out[key] = None if value is None and allow_drop else parse_axis(key, value)
    return out


@dataclass
class Point:
    """One grid point (or one sampled trial): an arm plus one value per axis."""

    index: int
    arm: str
    params: dict[str, Any]  # dotted key -> value
    arm_overrides: list[str]

    @property
    def overrides(self) -> list[str]:
        return [*self.arm_overrides, *(f"{k}={_yaml_value(v)}" for k, v in self.params.items())]

    @property
    def name(self) -> str:
        """The trial's folder: number, arm, then each axis by its last key part."""
        shorts = [k.split(".")[-1] for k in self.params]
        parts = [
            f"{k if shorts.count(k.split('.')[-1]) > 1 else k.split('.')[-1]}={_short(v)}"
            for k, v in self.params.items()
        ]
        return "-".join([f"{self.index:03d}", self.arm, *parts]).replace("/", "_")

    @property
    def key(self) -> str:
        """What identifies the point across trials, studies and runs."""
        return "|".join([self.arm, *(f"{k}={v!r}" for k, v in self.params.items())])


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _yaml_value(v: Any) -> str:
    # repr of a float is exact and YAML reads it back as the same float (1e-05 included,
    # which parse_override reads as YAML: a float there too).
    return repr(v) if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


@dataclass
class PredictSpec:
    """`sweep.predict_lr`: a rate per arm from the loss Hessian at init
    (forgetlab.analyses.predict_lr), lr_arm = lr_ref · λ_ref / λ_arm."""

    reference: dict[str, float] = field(default_factory=dict)  # {arm: rate}; {}: first arm at
    # the config's training.lr
    definition: str = "trainable"  # module | trainable | warmup
    around: int = 2  # `predicted`: grid values each side of the one nearest the prediction
    examples: int = 32
    iters: int = 10
    warmup_steps: int = 5
    rates: dict[str, float] | None = None  # the predictions; written when the sweep starts

    def __post_init__(self) -> None:
        if self.definition not in ("module", "trainable", "warmup"):
            raise ConfigError(
                f"sweep.predict_lr.definition={self.definition!r} is not one of module, "
                "trainable, warmup"
            )
        if len(self.reference) > 1:
            raise ConfigError("sweep.predict_lr.reference names one arm: {lora: 1.0e-3}")
        numbers = [*self.reference.values(), *(self.rates or {}).values()]
        if any(isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 for v in numbers):
            raise ConfigError("sweep.predict_lr: rates must be positive numbers")
        for key in ("around", "examples", "iters", "warmup_steps"):
            low = 0 if key == "around" else 1
            if getattr(self, key) < low:
                raise ConfigError(f"sweep.predict_lr.{key} must be >= {low}")


@dataclass
class Resources:
    """`sweep.resources`: what one trial asks of Ray (`--backend ray`; the default backend
    ignores it). cpu > 0 (fractions allowed; torch gets max(1, floor(cpu)) threads); gpu >= 0:
    a fraction of one device (0.25: four trials share a GPU), or a whole number of devices."""

    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        for key in ("cpu", "gpu"):
            value = getattr(self, key)
            if not math.isfinite(value):  # NaN passes `value <= 0`
                raise ConfigError(f"sweep.resources.{key} must be a finite number, got {value}")
        if self.cpu <= 0:
            raise ConfigError(f"sweep.resources.cpu must be > 0, got {self.cpu:g}")
        if self.gpu < 0:
            raise ConfigError(f"sweep.resources.gpu must be >= 0, got {self.gpu:g}")
        if self.gpu > 1 and self.gpu != math.floor(self.gpu):
            raise ConfigError(
                f"sweep.resources.gpu={self.gpu:g}: a fraction of one GPU (<= 1) or a whole "
                "number of GPUs (Ray cannot split a trial over part of a second device)"
            )

    @property
    def threads(self) -> int:
        """Torch threads of a trial: the whole CPUs Ray reserves for it."""
        return max(1, math.floor(self.cpu))


def search_values(values: list[Any], rate: float, around: int) -> list[float]:
    """The grid values a `predicted` arm runs: the one nearest `rate` (in log space) and up
    to `around` on each side of it (fewer at the grid's edge), nearest to `rate` first."""
    grid = sorted({float(v) for v in values})
    if not grid or grid[0] <= 0 or rate <= 0:
        raise ConfigError("sampler predicted needs positive learning rates")
    near = min(range(len(grid)), key=lambda k: abs(math.log(grid[k] / rate)))
    window = grid[max(0, near - around) : near + around + 1]
    return sorted(window, key=lambda v: (abs(math.log(v / rate)), v))


@dataclass
class SweepSpec:
    methods: list[str] = field(default_factory=list)
    variants: list[VariantConfig] = field(default_factory=list)
    space: dict[str, Any] = field(default_factory=dict)
    per_method: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None  # default: the config's own seeds
    objectives: list[str] = field(default_factory=lambda: ["learning", "forgetting"])
    sampler: str = "grid"
    trials: int | None = None
    predict_lr: Any = None  # true, or a mapping (PredictSpec); `sampler: predicted` sets it
    pruner: str = "none"
    prune_on: str | None = None  # the objective a pruner watches when there are two
    prune_startup: int = 2  # median pruner: trials that complete before any is pruned
    study: str | None = None  # Optuna study name; default: the config's name
    sampler_seed: int = 0
    heartbeat_s: int = 10  # a killed worker's trial is failed and retried after 2× this
    max_retry: int = 3
    resources: Resources = field(default_factory=Resources)  # --backend ray: per trial
    # Up to this many grid points that differ only in values (rate, warm-up, weight decay)
    # train in one worker as one stacked model (forgetlab.recipe.stacked); 1: one at a time.
    stack: int = 1

    def __post_init__(self) -> None:
        if self.methods and self.variants:
            raise ConfigError("sweep: give methods or variants, not both")
        arms = self.arm_names
        if len(set(arms)) != len(arms):
            raise ConfigError(f"sweep: arm names must be unique, got {arms}")
        self.space = parse_space(self.space, "sweep.space")
        unknown = sorted(set(self.per_method) - set(arms))
        if unknown:
            raise ConfigError(
                f"sweep.per_method.{unknown[0]} is not an arm of this sweep "
                f"(arms: {', '.join(arms)})"
            )
        self.per_method = {
            arm: parse_space(s, f"sweep.per_method.{arm}", allow_drop=True)
            for arm, s in self.per_method.items()
        }
        if self.methods and any(
            "method.name" in s for s in (self.space, *self.per_method.values())
        ):
            raise ConfigError("sweep.space may not set method.name: list them in sweep.methods")
        if self.seeds is not None and not self.seeds:
            raise ConfigError("sweep.seeds is empty: give at least one seed")
        self._check_objectives()
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sweep.sampler={self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.is_grid and self.trials is not None:
            raise ConfigError(
                f"sweep.trials is for random, tpe and nsga2: {self.sampler} runs every point"
            )
        if not self.is_grid and (self.trials is None or self.trials < 1):
            raise ConfigError(f"sweep.sampler={self.sampler} needs sweep.trials: N (N >= 1)")
        if self.sampler != "grid" and not self.space and not any(self.per_method.values()):
            raise ConfigError(f"sweep.sampler={self.sampler} needs a sweep.space to sample")
        self._check_predict()
        self._check_pruner()
        self._check_stack()
        size = sum(
            math.prod(len(a.values) for a in self.arm_space(arm).values())
            for arm in self.arm_names or [None]
        )
        if self.is_grid and size > MAX_POINTS:
            raise ConfigError(f"sweep: the grid has {size:,} points (at most {MAX_POINTS:,})")
        if self.heartbeat_s < 1 or self.max_retry < 0:
            raise ConfigError("sweep.heartbeat_s must be >= 1 and sweep.max_retry >= 0")

    def _check_predict(self) -> None:
        raw = self.predict_lr
        if self.sampler == "predicted" and raw in (None, False):
            raw = True
        if raw in (None, False):
            self.predict_lr = None
            return
        if raw is not True and not isinstance(raw, dict | PredictSpec):
            raise ConfigError(f"sweep.predict_lr must be true or a mapping, got {raw!r}")
        if not isinstance(raw, PredictSpec):
            raw = from_dict(PredictSpec, {} if raw is True else raw, "sweep.predict_lr")
        self.predict_lr = raw
        if not self.methods:
            raise ConfigError("sweep.predict_lr predicts a rate per method: list sweep.methods")
        stray = sorted(set(raw.reference) - set(self.methods))
        if stray:
            raise ConfigError(
                f"sweep.predict_lr.reference: {stray[0]!r} is not one of sweep.methods "
                f"({', '.join(self.methods)})"
            )
        if self.sampler != "predicted":
            return
        for arm in self.methods:
            axis = self.arm_space(arm).get(RATE_KEY)
            if axis is None or len(axis.values) < 2:
                raise ConfigError(
                    f"sampler predicted searches {RATE_KEY} around the prediction: arm {arm} "
                    f"needs a {RATE_KEY} axis of two or more values in sweep.space"
                )
        missing = [a for a in self.methods if a not in (raw.rates or {})]
        if raw.rates is not None and missing:
            raise ConfigError(f"sweep.predict_lr.rates has no rate for {', '.join(missing)}")

    @property
    def is_grid(self) -> bool:
        """Runs a list of points (grid, predicted) rather than sampled trials."""
        return self.sampler in GRID_SAMPLERS

    def _check_objectives(self) -> None:
        if not self.objectives or len(self.objectives) > 2:
            raise ConfigError("sweep.objectives: one or two of learning, forgetting, or metrics")
        for name in self.objectives:
            if ALIASES.get(name, name) not in OBJECTIVES:
                raise ConfigError(
                    f"sweep.objectives: {name!r} is not a metric (one of learning, forgetting, "
                    f"{', '.join(OBJECTIVES)})"
                )
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError(f"sweep.objectives name one metric twice: {self.objectives}")

    @property
    def prune_metric(self) -> str | None:
        """The metric a pruner watches: the only objective, or sweep.prune_on."""
        if self.pruner == "none":
            return None
        name = self.prune_on or self.objectives[0]
        return ALIASES.get(name, name)

    def _check_stack(self) -> None:
        if not isinstance(self.stack, int) or isinstance(self.stack, bool) or self.stack < 1:
            raise ConfigError(f"sweep.stack={self.stack!r} must be a whole number >= 1")
        if self.stack > 1 and not self.is_grid:
            raise ConfigError(
                f"sweep.stack stacks grid points: sampler {self.sampler} picks each trial "
                "from the ones before it (use sampler: grid or predicted)"
            )
        if self.stack > 1 and self.pruner != "none":
            raise ConfigError("sweep.stack: stacked trials cannot be pruned (pruner: none)")

    def _check_pruner(self) -> None:
        if self.pruner not in PRUNERS:
            raise ConfigError(f"sweep.pruner={self.pruner!r} is not one of {', '.join(PRUNERS)}")
        if self.pruner == "none":
            if self.prune_on is not None:
                raise ConfigError("sweep.prune_on is set but sweep.pruner is none")
            return
        if len(self.objectives) > 1 and self.prune_on is None:
            raise ConfigError(
                f"sweep.pruner={self.pruner} with two objectives: Optuna cannot prune a "
                "multi-objective study; set sweep.prune_on to the one objective to prune on "
                f"(one of {', '.join(self.objectives)}), or pruner: none"
            )
        if self.prune_on is not None and self.prune_on not in self.objectives:
            raise ConfigError(
                f"sweep.prune_on={self.prune_on!r} is not one of sweep.objectives "
                f"({', '.join(self.objectives)})"
            )
        if self.prune_metric not in WATCHED:
            raise ConfigError(
                f"sweep.pruner={self.pruner} watches learning on the eval.every curve "
                f"({' or '.join(WATCHED)}); {self.prune_metric} is not measured there"
            )
        if self.prune_startup < 0:
            raise ConfigError("sweep.prune_startup must be >= 0")

    @property
    def metrics(self) -> list[str]:
        """The objectives as metric names (learning -> initial_acc, ...)."""
        return [ALIASES.get(name, name) for name in self.objectives]

    @property
    def directions(self) -> list[str]:
        return ["maximize" if m in MAXIMIZE else "minimize" for m in self.metrics]

    @property
    def arm_names(self) -> list[str]:
        return list(self.methods) or [v.name for v in self.variants]

    def arm_overrides(self, arm: str | None) -> list[str]:
        if arm is None:
            return []
        if self.methods:
            return [f"method.name={arm}"]
        return next(v.overrides for v in self.variants if v.name == arm)

    def arm_space(self, arm: str | None) -> dict[str, Axis]:
        """The common space with this arm's own axes replacing, adding or (null) removing."""
        merged = {**self.space, **(self.per_method.get(arm, {}) if arm else {})}
        return {k: a for k, a in merged.items() if a is not None}

    def grid(self) -> list[Point]:
        """Every point: for each arm (or the config as it is), the product of its axes;
        `predicted` (once its rates are known): each arm's rates cut down by search_values."""
        points: list[Point] = []
        for arm in self.arm_names or [None]:
            axes = self.arm_space(arm)
            rates = self.predict_lr.rates if self.sampler == "predicted" else None
            if rates:  # before the predictions (checking every point): the whole grid
                old = axes[RATE_KEY]
                axes[RATE_KEY] = Axis(
                    RATE_KEY, values=search_values(old.values, rates[arm], self.predict_lr.around)
                )
            for values in itertools.product(*(a.values for a in axes.values())):
                points.append(
                    Point(len(points), arm or "base", dict(zip(axes, values)),
                          self.arm_overrides(arm))
                )  # fmt: skip
        return points


def parse_sweep(raw: Any) -> SweepSpec:
    """The `sweep:` mapping -> SweepSpec; unknown keys and bad values raise one line."""
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep must be a mapping (methods, space, seeds, ...), got {raw!r}")
    return from_dict(SweepSpec, raw, "sweep")

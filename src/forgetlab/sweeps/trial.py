"""One trial of a sweep: its config resolved from the sweep config, run as an ordinary run.

This is the only module of `forgetlab.sweeps` that resolves or runs a config through
forgetlab's internals (resolve, the recipe, the results store): when those move, only these
imports change.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetlab.config import Config, apply_overrides, load_raw, parse_override
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.metrics import target_gain
from forgetlab.resolve import load_config
from forgetlab.rundir import RunDir
from forgetlab.store import record_result
from forgetlab.sweeps.spec import Point, SweepSpec, parse_sweep


def resolve(raw: dict[str, Any], overrides: list[str]) -> Config:
    """A run config from a raw mapping and overrides, checked as `forgetlab.load_config`
    checks one (the method's and the regulariser's own keys too)."""
    config = load_config(raw=raw, overrides=overrides)
    if config.variants:
        raise ConfigError("a sweep config names its arms in sweep.variants, not in variants:")
    return config


@dataclass
class SweepConfig:
    """A sweep config: the run config (without `sweep:`) and its sweep section."""

    raw: dict[str, Any]  # the run config as a mapping, overrides applied
    base: Config
    spec: SweepSpec
    sweep_raw: dict[str, Any]  # the sweep: section as given

    def to_raw(self) -> dict[str, Any]:
        """The whole sweep config (what a worker reads back), output.dir made absolute so
        that a worker finds it from any working directory."""
        raw = copy.deepcopy(self.raw)
        raw.setdefault("output", {})["dir"] = str(self.out.resolve())
        return {**raw, "sweep": copy.deepcopy(self.sweep_raw)}

    @property
    def out(self) -> Path:
        return Path(self.base.output.dir)

    def point_config(self, point: Point, run_dir: Path, store: str) -> Config:
        """The trial's own run config: the base, the point's overrides, the sweep's seeds,
        written into `run_dir` and recorded in `store`."""
        raw = copy.deepcopy(self.raw)
        raw["name"] = f"{self.base.name}/{point.name}"
        raw.setdefault("output", {}).update(dir=str(run_dir), store=str(store))
        if self.spec.seeds is not None:
            raw["seeds"] = list(self.spec.seeds)
        try:
            return resolve(raw, point.overrides)
        except ConfigError as e:
            raise ConfigError(f"sweep point {point.name}: {e}") from e

    def check(self) -> None:
        """Every point resolves (unknown keys, bad values), and the objectives exist for
        this config, before anything runs."""
        for point in self.spec.grid():
            config = self.point_config(point, self.out / "trials" / point.name, "-")
            if "source_loss" in self.spec.metrics and not config.probes:
                raise ConfigError("sweep.objectives: source_loss needs probes: in the config")
            if self.spec.pruner != "none" and config.eval.every is None:
                raise ConfigError(
                    f"sweep.pruner={self.spec.pruner} prunes on the eval.every curve: set "
                    "eval.every (e.g. eval.every=0.25 for four points per stage)"
                )
            forgets = {"avg_forgetting", "max_forgetting", "chaudhry_forgetting", "bwt"}
            if forgets & set(self.spec.metrics) and len(config.tasks) < 2:
                raise ConfigError("sweep.objectives: forgetting needs at least two tasks")


def load_sweep_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    raw: dict[str, Any] | None = None,
) -> SweepConfig:
    """A sweep config file (or mapping) with `a.b=value` overrides (`sweep.*` ones too)."""
    data = load_raw(path) if path is not None else copy.deepcopy(raw or {})
    spaced = [o for o in overrides or [] if o.startswith(("sweep.space.", "sweep.per_method."))]
    data = apply_overrides(data, [o for o in overrides or [] if o not in spaced])
    if "sweep" not in data:
        raise ConfigError("this config has no sweep: section (forgetlab run runs a plain config)")
    for text in spaced:
        _override_space(data["sweep"], text)
    sweep_raw = data.pop("sweep")
    spec = parse_sweep(copy.deepcopy(sweep_raw))
    base = resolve(data, [])
    sweep = SweepConfig(raw=data, base=base, spec=spec, sweep_raw=sweep_raw)
    sweep.check()
    return sweep


def _override_space(sweep: dict[str, Any], text: str) -> None:
    """`sweep.space.training.lr=[1e-4]` sets the axis `training.lr` (its name has dots, which
    the plain overrides would read as nesting); `sweep.per_method.<arm>.<key>=...` likewise,
    and `sweep.per_method.<arm>=null` drops an arm's own space."""
    (_, section, *rest), value = parse_override(text)
    if section == "per_method":
        if not rest:
            raise ConfigError(f"override {text!r} must look like sweep.per_method.ARM.key=value")
        if len(rest) == 1:  # a whole arm's space; null removes it
            arms = sweep.setdefault("per_method", {})
            arms.pop(rest[0], None) if value is None else arms.__setitem__(rest[0], value)
            return
        arm, rest = rest[0], rest[1:]
        target = sweep.setdefault("per_method", {}).setdefault(arm, {})
    else:
        target = sweep.setdefault("space", {})
    if not isinstance(target, dict):
        raise ConfigError(f"override {text!r}: sweep.{section} is not a mapping")
    target[".".join(rest)] = value


def run_trial(config: Config, on_curve=None) -> dict:
    """Run (or, when its directory already holds the start of it, resume) one trial, and
    index it in the results store as `forgetlab.run` does; its metrics.json content.
    `on_curve` sees every eval.every point (the pruner)."""
    from forgetlab.recipe.run import run  # torch and transformers load here, not at import

    resume = RunDir(config.output.dir).config_path.is_file()
    result = run(config, resume=resume, on_curve=on_curve)
    record_result(result)
    return result.metrics


def run_stacked_trials(configs: list[Config]) -> list[dict | ForgetlabError]:
    """Run trials that differ only in values as one stack (`forgetlab.recipe.stacked`) and
    index each finished one in the results store; per trial its metrics.json content, or
    the error that stopped it (a diverged trial stops alone). A trial whose directory holds
    the start of an earlier attempt resumes on its own (a stack starts afresh)."""
    from forgetlab.recipe.stacked.run import check_stackable, run_stacked, stack_difference

    groups: list[list[Config]] = []
    for config in configs:
        if RunDir(config.output.dir).config_path.is_file():
            continue  # an earlier attempt's start: resumed alone below
        home = next((g for g in groups if stack_difference(g[0], config) is None), None)
        home.append(config) if home else groups.append([config])
    out: dict[str, dict | ForgetlabError] = {}
    for group in groups:
        try:
            check_stackable(group)
        except ConfigError:
            continue  # e.g. a method that cannot stack: one at a time
        if len(group) < 2:
            continue
        for outcome in run_stacked(group):
            if outcome.result is not None:
                record_result(outcome.result)
                out[outcome.config.output.dir] = outcome.result.metrics
            else:
                out[outcome.config.output.dir] = outcome.error
    for config in configs:
        if config.output.dir not in out:
            try:
                out[config.output.dir] = run_trial(config)
            except ForgetlabError as e:
                out[config.output.dir] = e
    return [out[c.output.dir] for c in configs]


def objective_values(summary: dict, metrics: list[str]) -> list[float | None]:
    """The objectives' values of a finished run: the seeds' mean of each metric."""
    out: list[float | None] = []
    for name in metrics:
        if name == "target_gain":
            out.append(target_gain(summary["accuracy_matrix"], summary["majority_baseline"]))
            continue
        value = ((summary.get("aggregate") or {}).get(name) or {}).get("mean")
        out.append(None if value is None or math.isnan(value) else float(value))
    return out


def set_torch_threads(threads: int) -> None:
    """A worker's share of the cores. The environment (OMP_NUM_THREADS, OMP_WAIT_POLICY)
    is set by whoever started the process, before torch loaded; this sets torch's pool."""
    import torch

    torch.set_num_threads(threads)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def quiet_libraries() -> None:
    """Weight-loading bars and deprecation chatter of transformers hide the workers' lines."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)

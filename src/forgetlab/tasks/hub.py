"""The registry tasks loaded from the Hugging Face hub with `datasets.load_dataset`.

For users who are online. Label names and their order are the same as the shipped loaders'
(`shipped.py`), so a run on hub data and a run on the shipped files share class indices;
hub label ids are translated through the dataset's ClassLabel names where they differ
(TREC's coarse labels are ordered ABBR, ENTY, DESC, ... on the hub, sorted here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from forgetlab.errors import DataError
from forgetlab.tasks import shipped
from forgetlab.tasks.base import ClassificationExample, TaskData


@dataclass(frozen=True)
class HubSpec:
    hub_id: str
    config: str | None
    text_column: str
    label_column: str
    label_names: tuple[str, ...]
    text_pair_column: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    extra_metrics: tuple[str, ...] = ()


HUB_TASKS: dict[str, HubSpec] = {
    "rte": HubSpec("nyu-mll/glue", "rte", "sentence1", "label", tuple(shipped.RTE_LABELS),
                   text_pair_column="sentence2"),
    "mrpc": HubSpec("nyu-mll/glue", "mrpc", "sentence1", "label", tuple(shipped.MRPC_LABELS),
                    text_pair_column="sentence2", extra_metrics=("f1",)),
    "cola": HubSpec("nyu-mll/glue", "cola", "sentence", "label", tuple(shipped.COLA_LABELS),
                    extra_metrics=("mcc",)),
    "sst2": HubSpec("nyu-mll/glue", "sst2", "sentence", "label", tuple(shipped.SST2_LABELS)),
    "agnews": HubSpec("fancyzhx/ag_news", None, "text", "label", tuple(shipped.AGNEWS_LABELS),
                      eval_split="test"),
    "trec": HubSpec("CogComp/trec", None, "text", "coarse_label", tuple(shipped.TREC_LABELS),
                    eval_split="test"),
}  # fmt: skip


# Language-model tasks on the hub: registry name -> (hub id, config, loader of the splits).
LM_HUB_TASKS = {"gsm8k": ("openai/gsm8k", "main"), "gsm8k_gen": ("openai/gsm8k", "main")}


def _load_dataset(name: str, hub_id: str, config: str | None, cache_dir, revision):
    where = hub_id + (f" ({config})" if config else "")
    try:
        import datasets  # lazy: optional dependency, and slow to import
    except ImportError as exc:
        raise DataError(
            f"task {name}: data.source is 'hub' but the datasets package is not installed; "
            "pip install datasets (or use data.source: local)"
        ) from exc
    try:
        cache = str(cache_dir) if cache_dir else None
        return datasets.load_dataset(hub_id, config, cache_dir=cache, revision=revision)
    except Exception as exc:  # network, auth, missing config ...: all user-fixable
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise DataError(
            f"task {name}: could not load {where} from the hub ({type(exc).__name__}: "
            f"{first_line}); check the connection or use data.source: local"
        ) from exc


def _load_hub_gsm8k(name: str, cache_dir, revision) -> TaskData:
    """GSM8K from the hub (openai/gsm8k, main), parsed as the shipped files are."""
    from forgetlab.tasks.base import InstructionExample
    from forgetlab.tasks.lm_shipped import _GSM8K_META, parse_gsm8k_answer

    hub_id, config = LM_HUB_TASKS[name]
    dsets = _load_dataset(name, hub_id, config, cache_dir, revision)

    def examples(split: str) -> list[InstructionExample]:
        out = []
        for i, row in enumerate(dsets[split]):
            response, final = parse_gsm8k_answer(row["answer"], f"{hub_id} {split} row {i}")
            out.append(InstructionExample(row["question"], response, final))
        return out

    eval_ = examples("test")
    generation = name == "gsm8k_gen"  # eval-only exact match of the final number
    return TaskData(
        name=name,
        kind="generation" if generation else "instruction",
        label_names=[],
        train=[] if generation else examples("train"),
        eval=eval_,
        eval_split=f"{hub_id} test ({len(eval_):,} rows)",
        source=f"hub:{hub_id}/{config}",
        meta={"hub_id": hub_id, "config": config, "revision": revision, **_GSM8K_META},
    )


def load_hub_task(
    name: str, cache_dir: str | Path | None = None, revision: str | None = None
) -> TaskData:
    """Download (or read from the datasets cache) one registry task's train and eval splits."""
    if name in LM_HUB_TASKS:
        return _load_hub_gsm8k(name, cache_dir, revision)
    spec = HUB_TASKS.get(name)
    if spec is None:
        known = ", ".join([*HUB_TASKS, *LM_HUB_TASKS])
        raise DataError(f"no hub source for task {name!r}; hub tasks: {known}")
    where = f"{spec.hub_id}" + (f" ({spec.config})" if spec.config else "")
    dsets = _load_dataset(name, spec.hub_id, spec.config, cache_dir, revision)
    train = _examples(name, spec, dsets, spec.train_split)
    eval_ = _examples(name, spec, dsets, spec.eval_split)
    return TaskData(
        name=name,
        kind="classification",
        label_names=list(spec.label_names),
        train=train,
        eval=eval_,
        eval_split=f"{where} {spec.eval_split} ({len(eval_):,} rows)",
        extra_metrics=spec.extra_metrics,
        source=f"hub:{spec.hub_id}" + (f"/{spec.config}" if spec.config else ""),
        meta={"hub_id": spec.hub_id, "config": spec.config, "revision": revision},
    )


def _examples(name: str, spec: HubSpec, dsets, split: str) -> list[ClassificationExample]:
    if split not in dsets:
        raise DataError(
            f"task {name}: {spec.hub_id} has no split {split!r}; splits are {', '.join(dsets)}"
        )
    ds = dsets[split]
    columns = list(ds.column_names)
    for col in (spec.text_column, spec.text_pair_column, spec.label_column):
        if col is not None and col not in columns:
            raise DataError(
                f"task {name}: {spec.hub_id} {split} has no column {col!r}; "
                f"columns are {', '.join(columns)}"
            )
    to_ours = _label_map(name, spec, ds)
    texts = ds[spec.text_column]
    pairs = ds[spec.text_pair_column] if spec.text_pair_column else [None] * len(texts)
    labels = ds[spec.label_column]
    examples = []
    for text, pair, label in zip(texts, pairs, labels):
        if label not in to_ours:
            # GLUE's hub test splits use -1 for "no label"; an eval split never should.
            raise DataError(f"task {name}: {spec.hub_id} {split} has unlabelled row ({label})")
        examples.append(ClassificationExample(text.strip(), to_ours[label], pair and pair.strip()))
    return examples


def _label_map(name: str, spec: HubSpec, ds) -> dict[int, int]:
    """Hub label id -> index into spec.label_names, through the ClassLabel names if any."""
    feature = getattr(ds, "features", {}).get(spec.label_column)
    hub_names = getattr(feature, "names", None)
    if not hub_names:
        return {i: i for i in range(len(spec.label_names))}
    ours = {n.lower(): i for i, n in enumerate(spec.label_names)}
    mapping = {}
    for hub_id, hub_name in enumerate(hub_names):
        if hub_name.lower() not in ours:
            raise DataError(
                f"task {name}: hub label {hub_name!r} of {spec.hub_id} is not one of "
                f"{list(spec.label_names)}"
            )
        mapping[hub_id] = ours[hub_name.lower()]
    return mapping

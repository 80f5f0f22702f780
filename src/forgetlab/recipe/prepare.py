"""Prepare: the run's tasks, ready to train and score — loaded, subsampled with a fixed seed
(the same for every training seed) and encoded by their kind. The sequence's tasks, the
source tasks and the probes of one run are prepared together by `prepare_run`, which both the
run and the analyses of a finished run call, so both see the same examples."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from forgetlab.config import Config, TaskConfig
from forgetlab.errors import ConfigError, ForgetlabError
from forgetlab.kinds import KINDS
from forgetlab.tasks.base import TaskData
from forgetlab.tasks.files import load_file_task
from forgetlab.tasks.lm_files import load_lm_file_task
from forgetlab.tasks.registry import load_task, subsample

log = logging.getLogger("forgetlab")


@dataclass
class PreparedTask:
    name: str
    kind: str
    data: TaskData
    train: object  # the kind's encoded split (EncodedSplit, LMSplit, MCSplit, ...)
    eval: object
    majority: float | None  # the floor of the learned test: majority class, chance, or None


@dataclass
class RunTasks:
    """Every task a run touches: the sequence it trains on, the source tasks (never trained:
    a linear-probe head on the pretrained features, for the regularisers) and the probes
    (never trained: scored after every stage)."""

    tasks: list[PreparedTask]
    sources: list[PreparedTask]
    probes: list[PreparedTask]

    @property
    def scored(self) -> list[PreparedTask]:
        """What every row of the score matrix scores: the sequence's tasks, then the probes."""
        return [*self.tasks, *self.probes]

    @property
    def probe_heads(self) -> list[PreparedTask]:
        """The tasks that get a fixed linear-probe head (saved in every checkpoint): the
        source tasks and the classification probes."""
        return [*self.sources, *[p for p in self.probes if p.kind == "classification"]]


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def prepare_run(config: Config, tokenizer) -> RunTasks:
    """The sequence's tasks, the source tasks and the probes of `config`. Each group
    subsamples with its own seeds (offsets past the sequence's indices), so adding a probe
    never changes the sequence's examples."""
    return RunTasks(
        tasks=prepare_tasks(config, tokenizer),
        sources=prepare_tasks(config, tokenizer, config.source_tasks, offset=100),
        probes=prepare_tasks(config, tokenizer, config.probes, offset=200, trained=False),
    )


def load_task_data(tc: TaskConfig, config: Config) -> TaskData:
    """A task's full splits (a registry task, or the user's own files), before subsampling."""
    if tc.type == "file" and tc.kind != "classification":
        return load_lm_file_task(
            tc.name,
            tc.kind,
            Path(tc.train) if tc.train else None,
            Path(tc.eval),
            **tc.columns,
        )
    if tc.type == "file":
        return load_file_task(
            tc.name,
            Path(tc.train),
            Path(tc.eval),
            text_column=tc.text_column,
            label_column=tc.label_column,
            text_pair_column=tc.text_pair_column,
            label_names=tc.label_names,
        )
    data_dir = Path(config.data.dir) if config.data.dir else None
    return load_task(tc.name, data_dir=data_dir, source=config.data.source)


def subsample_split(split, n: int | None, seed: int):
    """A fixed random subset of an encoded LM split's rows (packed blocks)."""
    if n is None or n >= len(split):
        return split
    keep = subsample(list(range(len(split))), n, seed)
    return dataclasses.replace(
        split,
        input_ids=[split.input_ids[i] for i in keep],
        labels=[split.labels[i] for i in keep],
    )


def prepare_tasks(
    config: Config,
    tokenizer,
    task_configs: list[TaskConfig] | None = None,
    offset: int = 0,
    trained: bool = True,
) -> list[PreparedTask]:
    """Load, subsample (fixed seed, the same for every training seed) and tokenize
    `task_configs` (default: the sequence's tasks). Tasks that are `trained` need a training
    split and a trainable kind; probes need only an eval split."""
    prepared = []
    task_configs = config.tasks if task_configs is None else task_configs
    for index, tc in enumerate(task_configs, start=offset):
        data = load_task_data(tc, config)
        ops = KINDS[data.kind]
        if trained and not ops.trainable:
            raise ConfigError(
                f"task {tc.name!r} is of kind {data.kind}, which is scored, not trained: "
                "list it under probes"
            )
        n_train = tc.max_train_examples or config.data.max_train_examples
        n_eval = tc.max_eval_examples or config.data.max_eval_examples
        sub_seed = config.data.subsample_seed * 1000 + index
        options = {"long_prompts": config.data.long_prompts}
        enc = (tokenizer, config.model.max_length, config.data.pair_encoding)
        if getattr(ops, "packs", False):
            # text is packed into blocks first: max_*_examples count blocks, not documents
            # (a stdlib file holds from a few to hundreds of blocks)
            train_split = ops.encode(data.train, *enc, **options) if data.train else None
            eval_split = subsample_split(ops.encode(data.eval, *enc), n_eval, sub_seed + 500)
            train_split = subsample_split(train_split, n_train, sub_seed) if train_split else None
            n_train_seen = len(train_split) if train_split else 0
            n_eval_seen = len(eval_split)
        else:
            train = subsample(data.train, n_train, sub_seed)
            evals = subsample(data.eval, n_eval, sub_seed + 500)
            if not evals or (trained and not train):
                raise ForgetlabError(f"task {tc.name!r} has an empty train or eval split")
            eval_split = ops.encode(evals, *enc, **options)
            train_split = ops.encode(train, *enc, **options) if train else None
            n_train_seen, n_eval_seen = len(train), len(evals)
        if trained and not train_split:
            raise ForgetlabError(f"task {tc.name!r} has an empty train split")
        prepared.append(
            PreparedTask(
                name=tc.name,
                kind=data.kind,
                data=data,
                train=train_split,
                eval=eval_split,
                majority=ops.baseline(eval_split),
            )
        )
        floor = prepared[-1].majority
        log.info(
            "task %s (%s): %d train / %d eval examples (eval: %s; %s)",
            tc.name,
            data.kind,
            n_train_seen,
            n_eval_seen,
            data.eval_split,
            "no chance floor: learned = paired test vs base"
            if floor is None
            else f"baseline {floor:.3f}",
        )
    return prepared

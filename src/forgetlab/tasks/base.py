"""What a task is, independent of where its data comes from.

A task has a `kind` (a key of `forgetlab.kinds.KINDS`); the kind decides how examples are
batched, what loss is trained and how the task is scored. The encoder kind (classification)
and the causal-LM kinds (instruction, text, perplexity, multiple_choice, generation) share
one pipeline, so nothing here assumes labels are class ids except `ClassificationExample`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClassificationExample:
    text: str
    label: int  # index into TaskData.label_names
    text_pair: str | None = None  # second sentence for pair tasks (RTE, MRPC)


@dataclass(frozen=True)
class InstructionExample:
    """Prompt → response (trained on the response tokens only)."""

    prompt: str
    response: str
    answer: str | None = None  # the reference final answer for exact match (GSM8K's number)


@dataclass(frozen=True)
class TextDocument:
    """One document of a continued-pretraining corpus (packed into blocks for training and
    perplexity)."""

    text: str
    name: str = ""  # file name or chunk id, for messages


@dataclass(frozen=True)
class MCExample:
    """A multiple-choice question scored by the log-likelihood of each choice."""

    context: str
    choices: list[str]
    label: int  # index of the correct choice


@dataclass(frozen=True)
class CodeProblem:
    """A HumanEval-style problem: complete `prompt`, then `test` calls check(entry_point)."""

    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""


@dataclass
class TaskData:
    """A loaded task: full train and eval splits, before any subsampling."""

    name: str
    # classification | instruction | text | multiple_choice | generation | perplexity
    kind: str
    label_names: list[str]  # classification only ([] for the language-model kinds)
    train: list  # examples of the kind's type ([] for eval-only tasks: probes, generation)
    eval: list
    eval_split: str  # human-readable: which file/split the eval numbers come from
    extra_metrics: tuple[str, ...] = ()  # e.g. ("mcc",) for CoLA, ("f1",) for MRPC
    source: str = ""  # where it was read from (path or hub id), for the run log
    meta: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return any(ex.text_pair is not None for ex in self.train[:50] + self.eval[:50])

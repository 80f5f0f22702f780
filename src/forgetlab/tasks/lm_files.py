"""A language-model task from the user's own files.

- instruction: JSONL, one object per line with a prompt, a response and optionally an
  answer (the reference for exact match);
- multiple_choice: JSONL with a question (the context), a list of choices and the index of
  the correct one;
- text: a .txt file, or a folder searched recursively for .txt and .py files, one document
  per file (or per ~`chunk_chars` characters, cut at line ends, when that is given).

Column names are configurable (`prompt_column="instruction"`, ...). `train` may be None for
an eval-only probe. Texts are kept exactly as written (leading indentation of a code
response matters); only emptiness is checked.
"""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path

from forgetlab.errors import DataError, ForgetlabError
from forgetlab.tasks.base import InstructionExample, MCExample, TaskData, TextDocument
from forgetlab.tasks.files import _jsonl_records
from forgetlab.tasks.lm_shipped import line_chunks
from forgetlab.tasks.text_files import read_text_files

KINDS = ("instruction", "multiple_choice", "text")
# kind -> the column options it accepts, with their defaults
COLUMNS: dict[str, dict[str, str]] = {
    "instruction": {
        "prompt_column": "prompt",
        "response_column": "response",
        "answer_column": "answer",
    },
    "multiple_choice": {
        "question_column": "question",
        "choices_column": "choices",
        "label_column": "label",
    },
    "text": {},
}


def load_lm_file_task(
    name: str,
    kind: str,
    train: Path | None,
    eval: Path,  # the config key users write; shadows the builtin only here
    *,
    errors: str = "raise",
    chunk_chars: int | None = None,
    **columns: str,
) -> TaskData:
    """Load a user task of `kind`; see the module docstring. `errors` ("raise" or "skip")
    and `chunk_chars` apply to text tasks only."""
    if kind not in KINDS:
        raise DataError(f"task {name}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    unknown = sorted(set(columns) - set(COLUMNS[kind]))
    if unknown:
        accepted = ", ".join(COLUMNS[kind]) or "none"
        raise DataError(
            f"task {name}: {kind} tasks take no option {', '.join(unknown)} (accepted: {accepted})"
        )
    read = partial(
        _read, name, kind, cols={**COLUMNS[kind], **columns}, errors=errors, chunk_chars=chunk_chars
    )
    train_ex, train_skipped = read(Path(train)) if train is not None else ([], [])
    eval_ex, eval_skipped = read(Path(eval))
    if "answer_column" in columns and not any(ex.answer for ex in train_ex + eval_ex):
        # Asked for by name yet found nowhere: a misspelt column, not "no reference answers".
        raise DataError(f"task {name}: no row has a value in column {columns['answer_column']!r}")
    meta: dict = {"eval_file": str(eval), "train_file": str(train) if train else None}
    if kind == "multiple_choice":
        meta["chance"] = sum(1 / len(ex.choices) for ex in eval_ex) / len(eval_ex)
    if kind == "text":
        meta["skipped_non_utf8"] = train_skipped + eval_skipped
    unit = "documents" if kind == "text" else "rows"
    return TaskData(
        name=name,
        kind=kind,
        label_names=[],
        train=train_ex,
        eval=eval_ex,
        eval_split=f"{Path(eval).name} ({len(eval_ex):,} {unit})",
        source=str(train if train is not None else eval),
        meta=meta,
    )


# --------------------------------------------------------------------------- JSONL kinds


def _read(
    task: str, kind: str, path: Path, cols: dict[str, str], errors: str, chunk_chars: int | None
) -> tuple[list, list[str]]:
    """(examples, files skipped as not UTF-8) of one split."""
    if kind == "text":
        return _text_documents(task, path, errors, chunk_chars)
    return _jsonl_examples(task, kind, path, cols), []


def _jsonl_examples(task: str, kind: str, path: Path, cols: dict[str, str]) -> list:
    if not path.is_file():
        raise DataError(f"task {task}: data file not found: {path}")
    make = _instruction if kind == "instruction" else _multiple_choice
    examples = [
        make(record, cols, f"task {task}: {path}:{lineno}")
        for lineno, record in _jsonl_records(task, path)
    ]
    if not examples:
        raise DataError(f"task {task}: {path} has no data rows")
    return examples


def _get(record: dict, column: str, where: str) -> object:
    if column not in record:
        found = ", ".join(map(str, record)) or "none"
        raise DataError(f"{where}: no column {column!r} (columns: {found})")
    return record[column]


def _text(value: object, column: str, where: str, why: str = "") -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} must be text, got {value!r}")
    if not value.strip():
        raise DataError(f"{where}: empty {column!r}{why}")
    return value


def _instruction(record: dict, cols: dict[str, str], where: str) -> InstructionExample:
    prompt_col, response_col = cols["prompt_column"], cols["response_column"]
    prompt = _text(_get(record, prompt_col, where), prompt_col, where)
    why = " (an empty response would train on nothing)"
    response = _text(_get(record, response_col, where), response_col, where, why)
    return InstructionExample(prompt, response, _answer(record.get(cols["answer_column"])))


def _answer(value: object) -> str | None:
    # Optional: absent, null or blank means "no reference answer". Numbers (GSM8K-style
    # files often store 72, not "72") become their text.
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _multiple_choice(record: dict, cols: dict[str, str], where: str) -> MCExample:
    question_col, choices_col = cols["question_column"], cols["choices_column"]
    question = _get(record, question_col, where)
    if not isinstance(question, str):
        # An empty question is allowed: the choices are then scored from bos alone.
        raise DataError(f"{where}: column {question_col!r} must be text, got {question!r}")
    choices = _choices(_get(record, choices_col, where), choices_col, where)
    label = _label(_get(record, cols["label_column"], where), len(choices), where)
    return MCExample(question, choices, label)


def _choices(value: object, column: str, where: str) -> list[str]:
    if not isinstance(value, list):
        raise DataError(f"{where}: column {column!r} must be a list of choices, got {value!r}")
    if len(value) < 2:
        raise DataError(
            f"{where}: {len(value)} choice(s) in {column!r}; a question needs 2 or more"
        )
    choices = [
        str(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else c for c in value
    ]
    for choice in choices:
        _text(choice, column, where, " (every choice needs text to score)")
    if len(set(choices)) != len(choices):
        # Identical choices score identically, so the later copy could never be predicted.
        raise DataError(f"{where}: duplicate choices in {column!r}: {choices}")
    return choices


def _label(value: object, n_choices: int, where: str) -> int:
    index = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, str):
        # int() itself decides: str.isdigit() also passes "²", which int() refuses
        with contextlib.suppress(ValueError):
            index = int(value)
    if index is None:
        raise DataError(f"{where}: label {value!r} is not an integer index of a choice")
    if not 0 <= index < n_choices:
        raise DataError(
            f"{where}: label {index} is out of range for {n_choices} choices (0..{n_choices - 1})"
        )
    return index


# --------------------------------------------------------------------------- text


def _text_documents(
    task: str, path: Path, errors: str, chunk_chars: int | None
) -> tuple[list[TextDocument], list[str]]:
    if chunk_chars is not None and chunk_chars < 1:
        raise DataError(f"task {task}: chunk_chars must be a positive number, got {chunk_chars}")
    try:
        files = read_text_files(path, suffixes=(".txt", ".py"), errors=errors)
    except ForgetlabError as exc:  # not UTF-8 (names the file), missing path, bad `errors`
        raise DataError(f"task {task}: {exc}") from exc
    docs = [
        doc
        for file, text in files
        for doc in _documents(_display_name(Path(file), path), text, chunk_chars)
    ]
    if not docs:
        skipped = f" ({len(files.skipped)} skipped as not UTF-8)" if files.skipped else ""
        raise DataError(f"task {task}: no non-empty .txt or .py files in {path}{skipped}")
    return docs, list(files.skipped)


def _display_name(file: Path, root: Path) -> str:
    return file.relative_to(root).as_posix() if root.is_dir() else file.name


def _documents(name: str, text: str, chunk_chars: int | None) -> list[TextDocument]:
    text = text.removeprefix("\ufeff")  # a byte-order mark is not part of the text
    if not text.strip():
        return []  # an empty file would add nothing but an eos
    if chunk_chars is None:
        return [TextDocument(text, name=name)]
    return [
        TextDocument(chunk, f"{name}@{offset}") for offset, chunk in line_chunks(text, chunk_chars)
    ]
